// The agent desk: sign in, go available, answer with a preview, talk with the AI's
// insights beside the call, transfer or hang up, wrap up. Supervisors see alerts.
// The engine keeps the agent's state (presence, why away, the wrap-up they owe and its
// deadline): the desk shows what GET /api/v1/agents and the events say, never its own.
import { connectEvents, esc } from "/static/events.js";
import { CALL_PANELS, createCallView } from "/static/callview.js";
import { mediaBytes, openPeer } from "/static/rtc.js";
import { onSoundChange, ring as startRinging, silence, soundBlocked, unlock } from "/static/ringer.js";
import { initConsult } from "/static/consult.js";
import { initDialpad } from "/static/dialpad.js";

const $ = (id) => document.getElementById(id);
let me = null;
let offer = null; // the call.offered event ringing on this desk
let callId = null; // the call on this agent's line
let wrapCallId = null; // the call waiting for its wrap-up
let wrapShownAt = 0; // when its form was shown (ms)
let pc = null, mic = null, callEvents = null, view = null;
let muted = false, mine = false, ringTimer = null, answering = false;
let agentNow = null; // this agent as GET /api/v1/agents last said: presence, since, wrap-up
let callStarted = null; // when this desk answered the call on its line (ms)
window.ccAgent = { get pc() { return pc; }, get callId() { return callId; }, mediaBytes: (kind) => pc && mediaBytes(pc, kind) };

// X-Requested-With: the engine takes changes made with the sign-in cookie only with it
// (a page on another site cannot send it), so every call here sends it.
async function api(path, { method = "GET", body } = {}) {
  const headers = { "x-requested-with": "ccengine" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw Object.assign(new Error(data?.detail || `HTTP ${res.status}`), { status: res.status, problem: data });
  return data;
}

function fail(where) {
  return (err) => { $(where).textContent = err.message; };
}

// -- signing in and presence -------------------------------------------------------

$("login-form").onsubmit = async (e) => {
  e.preventDefault();
  unlock(); // a click: the ringtone may play and notifications may be asked for now
  const f = new FormData(e.target);
  try {
    const r = await api("/api/v1/auth/login", { method: "POST", body: { username: f.get("username"), password: f.get("password") } });
    me = r.user;
    $("login").hidden = true;
    await signedIn();
  } catch (err) { $("login-error").textContent = err.message; }
};

async function signedIn() {
  $("who").textContent = `${me.display_name || me.username} (${me.role})`;
  $("sign-out").hidden = false;
  if (me.role === "agent") {
    try {
      await refreshSelf();
      if (agentNow.presence === "offline") showSelf(await presenceEvent("login"));
      // shown only now: a click on "Available" before the login reached the ACD was
      // refused (offline agents cannot go available) and left the agent away
      $("go-available").hidden = $("away-controls").hidden = $("presence").hidden = false;
      showSoundButton();
    } catch (err) {
      // the rest of the desk still loads; the buttons wait for a presence to act on
      $("desk-error").textContent = `Your presence is unknown (${err.message}): reload the page to try again.`;
    }
  } else {
    $("alerts-card").hidden = false;
  }
  $("queue-card").hidden = false;
  $("dialpad").hidden = false; // dialpad.js: call a number
  $("wrapup").querySelector("select").innerHTML = '<option value="">Choose…</option>' +
    (await api("/api/v1/dispositions"))
      .map((d) => `<option value="${esc(d)}">${esc(d.replaceAll("_", " "))}</option>`).join("");
  // a wrap-up owed from before (a reload, or a desk that was closed): it is asked for now
  if (agentNow?.wrap_up_call && !wrapCallId) showWrapUp(agentNow.wrap_up_call);
  await refreshQueues();
  connectEvents("/api/v1/events", onEvent, { desk: true }); // its WebSocket is its presence
}

function presenceEvent(event, reason) {
  return api("/api/v1/agents/me/presence", { method: "POST", body: reason ? { event, reason } : { event } });
}

// the engine's reasons, as the agent reads them
const AWAY_WHY = { missed_call: "after a missed call", disconnected: "disconnected" };

// this agent as the engine has them (presence, why away, since when, the wrap-up owed)
async function refreshSelf() {
  const asked = Date.now();
  const found = (await api("/api/v1/agents")).find((a) => a.id === me.id);
  showSelf(found || { presence: "offline" });
  // the engine says this call is owed nothing now (a supervisor saved it, or it timed
  // out): the form goes, so that it cannot overwrite the disposition saved since. Only
  // an answer asked for after the form was shown: an older one predates the debt.
  if (found && wrapCallId && !callId && asked > wrapShownAt && found.wrap_up_call !== wrapCallId) closeWrapUp();
}

function showSelf(agent) {
  agentNow = agent;
  const p = agent.presence;
  $("presence").textContent = p.replace("_", " ");
  $("presence").className = `state ${p}`;
  $("away-reason").hidden = p !== "away" || !agent.away_reason;
  $("away-reason").textContent = agent.away_reason ? `(${AWAY_WHY[agent.away_reason] || agent.away_reason})` : "";
  // "Available" stays pressable in wrap-up: the engine says why not yet
  $("go-available").disabled = !["away", "wrap_up"].includes(p);
  $("go-away").disabled = !["available", "wrap_up", "away"].includes(p);
  tickTimers();
}

// after a reload the browser keeps the page quiet until it is clicked: a ring would be
// silent, so the agent is asked for that click
function showSoundButton() {
  $("enable-sound").hidden = !(me?.role === "agent" && soundBlocked());
}
onSoundChange(showSoundButton);
$("enable-sound").onclick = () => { unlock(); showSoundButton(); };

let selfRefresh = null;
function refreshSelfSoon() {
  clearTimeout(selfRefresh);
  selfRefresh = setTimeout(() => refreshSelf().catch(fail("desk-error")), 100);
}

const WRAP_UP_FIRST = "Save the wrap-up first: choose a disposition for your last call, then you are available.";
$("go-available").onclick = async () => {
  unlock();
  try {
    showSelf(await presenceEvent("available"));
    $("desk-error").textContent = "";
  } catch (err) {
    // only the engine's "wrap-up owed" refusal (its problem names the call): another 409
    // (signed out meanwhile, on a call) says its own reason
    const owed = err.status === 409 ? err.problem?.wrap_up_call : null;
    if (owed) {
      $("desk-error").textContent = WRAP_UP_FIRST;
      showWrapUp(owed);
    } else $("desk-error").textContent = err.message;
  }
};
$("go-away").onclick = () => presenceEvent("away", $("away-choice").value).then((a) => {
  showSelf(a);
  $("desk-error").textContent = "";
}, fail("desk-error"));
$("sign-out").onclick = async () => {
  try {
    if (me.role === "agent") await presenceEvent("logout");
    await api("/api/v1/auth/logout", { method: "POST" });
    location.reload();
  } catch (err) { $("desk-error").textContent = err.message; }
};

// -- the desk's event stream: presence, offers, queues, callbacks, alerts ------------

let queueRefresh = null;
const SET_AWAY_DISCONNECTED = "Your desk was disconnected, so you were set to away. Press Available when you are ready.";
function onEvent(ev) {
  if (ev.type === "agent.presence_changed" && me && ev.agent_id === me.id) {
    showSelf({ ...agentNow, presence: ev.presence, away_reason: ev.presence === "away" ? ev.reason : null, presence_since: ev.time });
    // this agent's call stopped ringing here (answered on the desk phone or another tab,
    // or the withdrawal was lost): the ring stops with it
    if (offer && !answering && ev.presence !== "ringing") unring(ev.presence === "on_call" ? "The call was answered elsewhere." : "");
    refreshSelfSoon(); // the wrap-up owed and its deadline, as the engine has them
    // every desk of ours was gone for a while: back now, the agent chooses when to take
    // calls (the note goes with their next change of presence)
    if (ev.reason === "disconnected") $("desk-error").textContent = SET_AWAY_DISCONNECTED;
    else if ($("desk-error").textContent === SET_AWAY_DISCONNECTED) $("desk-error").textContent = "";
  } else if (ev.type === "call.offered" && me && ev.agent_id === me.id) {
    // the stream replays recent history: only ring for an offer that is still ringing
    const expires = Date.parse(ev.time) + ev.expires_in * 1000;
    if (expires > Date.now() && !callId) ring(ev, expires);
  } else if (ev.type === "call.wrapped_up" && me && ev.call_id === wrapCallId && ev.agent_id === me.id && ev.disposition === "timed-out") {
    // the engine ended it at the wrap-up limit (and made the agent available, unless away)
    closeWrapUp();
    $("desk-error").textContent = "The wrap-up time ran out: the call was saved as timed-out.";
  } else if (ev.type === "call.wrapped_up" && me && ev.call_id === wrapCallId) {
    // saved elsewhere (our other tab, a supervisor: the form closes once the engine
    // says nothing is owed, so it cannot overwrite that save); another agent's save,
    // after a transfer, leaves ours owed and the form open
    refreshSelfSoon();
  } else if (ev.type === "call.offer_withdrawn" && offer && ev.call_id === offer.call_id && ev.agent_id === me.id) {
    unring({ no_answer: "You missed a call, so you were set to away.", disconnected: "Your desk was disconnected, so the call went to someone else." }[ev.reason] || "");
  } else if (ev.type === "supervisor.alert" && me.role !== "agent") {
    const li = document.createElement("li");
    li.innerHTML = `${new Date(ev.time).toLocaleTimeString()} · <a href="/calls/${esc(ev.call_id)}">${esc(ev.reason)}</a> (priority ${ev.priority}, ${esc(ev.state)})`;
    $("alerts").prepend(li);
  }
  if (["queue.updated", "call.state_changed", "callback.requested", "callback.done", "call.wrapped_up"].includes(ev.type)) {
    clearTimeout(queueRefresh);
    queueRefresh = setTimeout(refreshQueues, 300);
  }
}

async function refreshQueues() {
  const [queues, callbacks] = await Promise.all([api("/api/v1/queues"), api("/api/v1/callbacks")]);
  $("queues").innerHTML = queues.map((q) => `<span class="fact"><b>${esc(q.name)}</b>${q.waiting} waiting</span>`).join(" ");
  $("callbacks").innerHTML = callbacks.length ? callbacks.map((c) => `
    <div class="callback" data-testid="callback-item">
      <strong>${esc(c.caller || "unknown caller")}</strong> · ${esc(c.contact || "")} · ${esc(c.queue)} · asked ${new Date(c.requested_at).toLocaleTimeString()}
      <div>${esc(c.summary)}</div>
      <button class="quiet" data-callback="${esc(c.id)}">Done</button>
    </div>`).join("") : "None waiting.";
  for (const b of $("callbacks").querySelectorAll("button[data-callback]")) {
    b.onclick = () => api(`/api/v1/callbacks/${b.dataset.callback}/done`, { method: "POST" }).then(refreshQueues, fail("desk-error"));
  }
}

// -- ringing ---------------------------------------------------------------------------

// how the caller proved who they are, as the agent reads it
const METHODS = { pin: "PIN", dob: "date of birth", last4: "last four digits", app_token: "signed in to the app" };
function identity(c) {
  // the carrier's STIR/SHAKEN level vouches for the number only, not for who is calling
  const attested = c.attestation ? ` · number attested ${c.attestation}` : "";
  if (!c.customer_id) return `no customer record${attested}`;
  return `customer ${c.customer_id} · ${c.verified_by ? `verified: ${METHODS[c.verified_by] || c.verified_by}` : "not verified"}${attested}`;
}

function ring(ev, expires) {
  offer = ev;
  const rows = [
    ["Caller", `${ev.caller || "unknown"} · ${ev.channel}${ev.previous_calls ? ` · ${ev.previous_calls} earlier call${ev.previous_calls > 1 ? "s" : ""}` : ""}`],
    ["Queue", `${ev.queue} · waited ${Math.round(ev.waited)} s`],
    ["Why", ev.escalation_reason || "asked for a person"],
    ...(ev.intent ? [["Asked for", ev.intent.replaceAll("_", " ")]] : []),
    ["Identity", identity(ev)],
    ["Mood", ev.emotion ? `<span class="badge ${esc(ev.emotion)}">${esc(ev.emotion)}</span>` : "–"],
    ["So far", ev.summary || "–"],
  ];
  const consulted = consult.ring(ev); // consult.js: "consult from Ann"
  if (consulted) rows.push(consulted);
  if (ev.transferred_by) rows.push(["From", `${ev.transferred_by}${ev.transfer_note ? `: “${ev.transfer_note}”` : ""}`]);
  $("preview").innerHTML = rows.map(([k, v]) => `<dt>${k}</dt><dd>${k === "Mood" ? v : esc(v)}</dd>`).join("");
  $("ring").hidden = false;
  $("ring").classList.add("ringing");
  $("accept").disabled = $("decline").disabled = false;
  const who = ev.caller || "unknown caller";
  $("ring-announce").textContent = `Incoming ${ev.channel === "chat" ? "chat" : "call"} from ${who}, queue ${ev.queue}. Press Accept to answer.`;
  startRinging(who, `${ev.queue} · ${ev.escalation_reason || "asked for a person"}`, expires);
  clearInterval(ringTimer);
  const tick = () => {
    const left = expires - Date.now();
    $("ring-countdown").textContent = `${Math.max(0, Math.ceil(left / 1000))} s`;
    // expired: the engine's withdrawal normally comes now and says why; lost, the ring
    // still stops (the tone already did, at the expiry)
    if (left < -2000 && !answering) unring();
  };
  tick();
  ringTimer = setInterval(tick, 250);
}

function unring(message = "") {
  offer = null;
  answering = false;
  clearInterval(ringTimer);
  silence();
  $("ring-announce").textContent = message ? "The call stopped ringing." : "";
  $("ring").classList.remove("ringing");
  $("ring").hidden = true;
  $("desk-error").textContent = message;
}

$("decline").onclick = () => {
  const id = offer?.call_id;
  unring();
  if (id) api(`/api/v1/calls/${id}/decline`, { method: "POST" }).catch(fail("desk-error"));
};

$("accept").onclick = async () => {
  if (!offer) return;
  const id = offer.call_id;
  $("accept").disabled = $("decline").disabled = true;
  answering = true; // our own answer's presence change must not read as "answered elsewhere"
  silence(); // answering: the ringtone stops at once, not when the media is up
  if (offer.channel === "chat") {  // typed: no media to set up
    try {
      await api(`/api/v1/calls/${id}/accept-chat`, { method: "POST" });
      unring();
      await openCall(id);
    } catch (err) {
      unring(`Could not take the chat: ${err.message}`);
    }
    return;
  }
  try {
    ({ pc, mic } = await openPeer({ audio: $("remote"), video: $("remote-video"), camera: $("with-camera").checked }));
    const answer = await api(`/api/v1/calls/${id}/accept`, { method: "POST", body: { type: "offer", sdp: pc.localDescription.sdp } });
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    unring();
    await openCall(id);
  } catch (err) {
    closeMedia();
    unring(`Could not answer: ${err.message}`);
  }
};

// -- on a call -----------------------------------------------------------------------

const CALL_CONTROLS = ["mute", "hold", "hangup", "transfer", "transfer-to", "transfer-note", "reply"];
function enableControls(on) {
  for (const id of CALL_CONTROLS) $(id).disabled = !on;
}

async function openCall(id) {
  callId = id;
  callStarted = Date.now();
  muted = mine = false;
  $("mute").textContent = "Mute";
  $("call-error").textContent = "";
  closeWrapUp();
  enableControls(true);
  $("call").hidden = false;
  $("call").querySelector("[data-testid=transcript]").innerHTML = "";
  $("remote-video").hidden = true;  // shown once the caller's camera reaches us
  $("remote-video").onloadeddata = () => { $("remote-video").hidden = false; };
  $("panels").innerHTML = CALL_PANELS;
  view = createCallView($("call"));
  const [call, history, queues, agents] = await Promise.all([
    api(`/api/v1/calls/${id}`), api(`/api/v1/calls/${id}/history`), api("/api/v1/queues"), api("/api/v1/agents"),
  ]);
  $("caller").textContent = `${call.caller || "unknown caller"} · ${call.channel} · ${call.language} · ${identity(call)}${call.intent ? ` · asked for ${call.intent.replaceAll("_", " ")}` : ""}`;
  $("reply-box").hidden = call.channel !== "chat";
  for (const id of ["mute", "hold"]) $(id).hidden = call.channel === "chat";
  // a call that goes on from a chat: the chat, so nobody asks again
  $("chat-before").hidden = !call.upgraded_from;
  if (call.upgraded_from) {
    const chat = await api(`/api/v1/calls/${call.upgraded_from}`);
    $("chat-before").innerHTML = "<strong>The chat before this call</strong>" + chat.transcript.map((u) =>
      `<div class="line"><span class="t">${u.start.toFixed(1)}s</span><span class="who">${esc(u.speaker === "bot" ? "assistant" : u.speaker)}</span><span class="text">${esc(u.text)}</span></div>`).join("");
  }
  view.load(call);
  consult.open(id, call.channel); // consult.js, dialpad.js: their parts of the call
  keys.open(call.channel);
  showNotes(call.notes);
  setCallState(call.state);
  $("history").innerHTML = history.length ? history.map((h) => `
    <div class="history-item"><strong>${new Date(h.created_at).toLocaleString()}</strong>
      · ${esc(h.channel)}${h.intent ? ` · ${esc(h.intent.replaceAll("_", " "))}` : ""} · ${esc(h.disposition || h.end_reason || h.state)}${h.emotion ? ` · <span class="badge ${esc(h.emotion)}">${esc(h.emotion)}</span>` : ""}
      <div>${esc(h.summary || "no summary")}</div></div>`).join("") : "No earlier calls.";
  $("transfer-to").innerHTML =
    queues.map((q) => `<option value="queue:${esc(q.name)}">queue ${esc(q.name)} (${q.waiting} waiting)</option>`).join("") +
    agents.filter((a) => a.id !== me.id && a.presence !== "offline")
      .map((a) => `<option value="agent:${esc(a.username)}">${esc(a.display_name || a.username)} (${esc(a.presence)})</option>`).join("");
  callEvents = connectEvents(`/api/v1/calls/${id}/events`, (ev) => {
    consult.onCallEvent(ev);
    if (ev.type === "call.state_changed") {
      setCallState(ev.state);
      // the stream replays the call from its start: our part begins when it is bridged to us
      if (ev.state === "bridged" && ev.reason === me.username) mine = true;
      else if (mine && ev.state === "queued") endOfCall("The call was transferred.");
    } else if (ev.type === "call.ended") endOfCall(`The call ended (${ev.reason}).`);
    // a colleague on the same call (a consult) has their own mute: only ours moves our mic
    else if (ev.type === "call.muted" && me && ev.agent_id === me.id) setMuted(ev.muted);
    else if (ev.type === "call.transferred") addNote({ kind: "transfer", author: ev.from_agent, text: ev.note || "" });
    else view.handle(ev);
  });
}

function setCallState(state) {
  $("call-state").textContent = state;
  $("call-state").className = `state ${state}`;
  $("hold").textContent = state === "held" ? "Resume" : "Hold";
}

function setMuted(m) {
  muted = m;
  $("mute").textContent = m ? "Unmute" : "Mute";
  if (mic) mic.getAudioTracks().forEach((t) => { t.enabled = !m; });
}

function showNotes(notes) {
  $("notes").innerHTML = "";
  notes.forEach(addNote);
}

function addNote(n) {
  $("notes-card").hidden = false;
  const div = document.createElement("div");
  div.textContent = `${n.kind.replace("_", " ")} by ${n.author}${n.disposition ? ` (${n.disposition})` : ""}: ${n.text || "–"}`;
  $("notes").append(div);
}

// after hang-up the controls are disabled, and a click that got in first is not sent:
// there is no call to act on (the engine would answer 409)
$("mute").onclick = () => {
  if (!callId) return;
  api(`/api/v1/calls/${callId}/mute`, { method: "POST", body: { muted: !muted } }).then(() => setMuted(!muted), fail("call-error"));
};
$("hold").onclick = () => {
  if (!callId) return;
  const action = $("hold").textContent === "Hold" ? "hold" : "resume";
  api(`/api/v1/calls/${callId}/${action}`, { method: "POST" }).catch(fail("call-error"));
};
$("hangup").onclick = async () => {
  if (!callId) return;
  enableControls(false);
  // say it first: closing our media first would read as the line dropping
  await api(`/api/v1/calls/${callId}/hangup`, { method: "POST" }).catch(() => {});
  endOfCall("You hung up.");
};
$("transfer").onclick = async () => {
  if (!callId) return;
  const [kind, name] = $("transfer-to").value.split(":");
  const note = $("transfer-note").value.trim() || null;
  try {
    await api(`/api/v1/calls/${callId}/transfer`, { method: "POST", body: { [kind]: name, note } });
    $("transfer-note").value = "";
    endOfCall(`Transferred to ${kind} ${name}.`);
  } catch (err) { $("call-error").textContent = err.message; }
};

$("reply-box").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("reply").value.trim();
  if (!text || !callId) return;
  $("reply").value = "";
  await api(`/api/v1/calls/${callId}/messages`, { method: "POST", body: { text } }).catch(fail("call-error"));
};

function closeMedia() {
  if (mic) mic.getTracks().forEach((t) => t.stop());
  if (pc) pc.close();
  pc = mic = null;
}

function endOfCall(message) {
  if (!callId) return;
  wrapCallId = callId;
  callId = null;
  consult.close();
  keys.close();
  if (callEvents) callEvents.close();
  callEvents = null;
  closeMedia();
  enableControls(false);
  callStarted = null;
  setCallState("ended");
  $("call-error").textContent = message;
  showWrapUp(wrapCallId);
}

// -- after the call: the wrap-up, in view and focused, with its time ---------------------

function showWrapUp(id) {
  wrapCallId = id;
  wrapShownAt = Date.now();
  $("wrapup").hidden = false;
  $("wrapup-error").textContent = "";
  $("wrapup").scrollIntoView({ block: "start" });
  $("wrapup").querySelector("select").focus();
  refreshSelfSoon(); // since when it is owed, and until when (CCENGINE_WRAPUP_SECONDS)
}

function closeWrapUp() {
  wrapCallId = null;
  $("wrapup-form").reset();
  $("wrapup").hidden = true;
  $("wrapup-timer").textContent = "";
  if (!callId) $("call").hidden = true;
}

$("wrapup-form").onsubmit = async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  if (!f.get("disposition")) {
    $("wrapup-error").textContent = "Choose a disposition: how did the call end?";
    return;
  }
  try {
    await api(`/api/v1/calls/${wrapCallId}/wrap-up`, { method: "POST", body: { disposition: f.get("disposition"), notes: f.get("notes") } });
    closeWrapUp();
    $("desk-error").textContent = "";
    refreshSelfSoon();
  } catch (err) { $("wrapup-error").textContent = err.message; }
};

// -- timers: on the call, in this presence, in wrap-up -----------------------------------

function clock(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

function tickTimers() {
  const now = Date.now();
  $("presence-for").textContent = agentNow?.presence_since && agentNow.presence !== "offline" ? clock(now - Date.parse(agentNow.presence_since)) : "";
  $("call-timer").textContent = callStarted ? clock(now - callStarted) : "";
  const w = $("wrapup-timer");
  if (!wrapCallId || agentNow?.wrap_up_call !== wrapCallId) { w.textContent = ""; return; }
  if (agentNow.wrap_up_ends_at) {
    const left = Date.parse(agentNow.wrap_up_ends_at) - now;
    w.textContent = `${clock(left)} left`;
    w.classList.toggle("late", left < 15000);
  } else if (agentNow.wrap_up_since) {
    w.textContent = `${clock(now - Date.parse(agentNow.wrap_up_since))} in wrap-up`;
  }
}
setInterval(tickTimers, 1000);

// consult.js and dialpad.js: consult, conference, warm transfer, a dial pad and keys
const consult = initConsult({ root: $("consult-box"), api, me: () => me, callId: () => callId, endOfCall });
const keys = initDialpad({ desk: $("dialpad"), call: $("call-keypad"), api, me: () => me, callId: () => callId });

me = await api("/api/v1/auth/me").catch(() => null);
if (me) await signedIn().catch(fail("desk-error"));
else $("login").hidden = false;
