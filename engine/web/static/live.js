import { connectEvents } from "/static/events.js";
import { CALL_PANELS, createCallView } from "/static/callview.js";
import { REVIEW_PANELS, showReview } from "/static/callreview.js";

const $ = (id) => document.getElementById(id);
const callId = location.pathname.split("/").pop();
$("panels").innerHTML = CALL_PANELS;
const view = createCallView($("view"));

function setState(s, reason) {
  $("state").textContent = reason ? `${s} (${reason})` : s;
  $("state").className = `state ${s}`;
}

const res = await fetch(`/api/v1/calls/${callId}`);
if (!res.ok) {
  $("meta").textContent = (await res.json()).detail;
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
    const ended = await fetch(`/api/v1/calls/${callId}`);
    await showReview($("review"), ended.ok ? await ended.json() : call);
  };
  if (call.state === "ended") review();
  connectEvents(`/api/v1/calls/${callId}/events`, (ev) => {
    if (ev.type === "call.state_changed") setState(ev.state, ev.reason);
    else if (ev.type === "call.ended") {
      setState("ended", ev.reason);
      review();
    }
    else view.handle(ev);
  }, { onStatus: (s) => ($("stream").textContent = `stream: ${s}`) });
}
