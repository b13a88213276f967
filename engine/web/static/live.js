import { connectEvents } from "/static/events.js";
import { CALL_PANELS, createCallView } from "/static/callview.js";
import { REVIEW_PANELS, showReview } from "/static/callreview.js";
import { monitor } from "/static/monitor.js";

const $ = (id) => document.getElementById(id);
const callId = location.pathname.split("/").pop();
$("panels").innerHTML = CALL_PANELS;
const view = createCallView($("view"));

function setState(s, reason) {
  $("state").textContent = reason ? `${s} (${reason})` : s;
  $("state").className = `state ${s}`;
  monitorControls(s);
}

// -- Listen / Whisper / Barge, for supervisors and admins (static/monitor.js) ---------

const WITH_AGENT = ["bridged", "held"];
const SAID = { listen: "Listening: nobody hears you", whisper: "Whispering: only the agent hears you", barge: "Barged in: the caller and the agent hear you" };
let supervising = false; // this person may monitor calls
let callState = null;
let watch = null; // the monitor handle while on the call
let told = null; // the stream of everything, open only while on the call (below)
let seen = 0; // the newest event id this page has had
let busy = false;
const modeButtons = [...document.querySelectorAll("#monitor [data-mode]")];

function monitorControls(state = callState) {
  callState = state;
  $("monitor").hidden = !supervising;
  const live = WITH_AGENT.includes(state);
  modeButtons.forEach((b) => {
    b.disabled = busy || (!live && !watch);
    b.setAttribute("aria-pressed", String(watch !== null && watch.mode === b.dataset.mode));
  });
  $("monitor-stop").disabled = busy || !watch;
  if (state === "ended" && watch) leave("The call ended");
}

function monitorStatus(text) { $("monitor-status").textContent = text; }

async function choose(mode) {
  busy = true;
  monitorControls();
  try {
    if (watch) await watch.setMode(mode);
    else {
      watch = await monitor(callId, mode, { audio: $("monitor-audio"), onEnded: (state) => endedByEngine(state) });
      hearStops();
    }
    monitorStatus(SAID[watch.mode]);
  } catch (err) {
    monitorStatus(err.message);
  } finally {
    busy = false;
    monitorControls();
  }
}

// A supervisor's leg is told on the stream of everything (a call's own stream is its
// caller's, and never says who listens): the stop of my leg resets the controls. It is
// open only while this page is on the call: a browser allows 6 streams per site, and
// supervisors keep several pages open.
function hearStops() {
  if (told) told.close();
  told = connectEvents("/api/v1/events", (ev) => {
    if (ev.type === "supervisor.monitor_stopped" && watch && ev.leg_id === watch.legId) endedByEngine(ev.reason);
  }, { after: seen }); // the leg began after what the page had: its stop is later
}

function stopHearing() {
  if (told) told.close();
  told = null;
}

async function leave(why = "You left the call") {
  const w = watch;
  watch = null;
  stopHearing();
  if (w) await w.stop();
  monitorStatus(why);
  monitorControls();
}

// The engine ended the leg (the agent transferred the call, you were signed out, the
// call ended): the controls go back to joining, with why.
const ENDED_BY = {
  transferred: "The agent transferred the call: you are off it",
  signed_out: "You were signed out: you are off the call",
  call_ended: "The call ended",
  left: "You left the call",
};
function endedByEngine(reason) {
  const w = watch;
  watch = null;
  stopHearing();
  if (w) w.close();
  monitorStatus(ENDED_BY[reason] || `Disconnected (${reason})`);
  monitorControls();
}

modeButtons.forEach((b) => { b.onclick = () => choose(b.dataset.mode); });
$("monitor-stop").onclick = () => leave();
// keepalive: a plain fetch is cancelled with the page, and the leg would stay on the call
addEventListener("pagehide", () => { if (watch) watch.stop({ keepalive: true }); });

async function whoAmI() {
  const r = await fetch("/api/v1/auth/me").catch(() => null);
  const me = r && r.ok ? await r.json() : null;
  supervising = !!me && ["supervisor", "admin"].includes(me.role);
  monitorControls();
}

await whoAmI();
const res = await fetch(`/api/v1/calls/${callId}`);
if (!res.ok) {
  $("meta").textContent = await res.json().then((b) => b.detail, () => `error ${res.status}`);
} else {
  const call = await res.json();
  setState(call.state, call.end_reason);
  $("meta").textContent = `${call.channel} call · ${call.language} · ${call.recognizer_note} · started ${new Date(call.created_at).toLocaleString()}`;
  view.load(call);
  // an ended call is looked back on: disposition, notes, analytics, recording, downloads
  let reviewed = false;
  const review = async () => {
    if (reviewed) return;
    reviewed = true;
    $("review").innerHTML = REVIEW_PANELS;
    // the call as it ended (disposition, notes); what the page has if that fails
    const ended = await fetch(`/api/v1/calls/${callId}`).then((r) => (r.ok ? r.json() : call)).catch(() => call);
    await showReview($("review"), ended);
  };
  if (call.state === "ended") review();
  connectEvents(`/api/v1/calls/${callId}/events`, (ev) => {
    seen = Math.max(seen, ev.id);
    if (ev.type === "call.state_changed") setState(ev.state, ev.reason);
    else if (ev.type === "call.ended") {
      setState("ended", ev.reason);
      review();
    }
    else view.handle(ev);
  }, { onStatus: (s) => ($("stream").textContent = `stream: ${s}`) });
}
