import { connectEvents, esc } from "/static/events.js";
import { openPeer } from "/static/rtc.js";

const $ = (id) => document.getElementById(id);
// the engine takes changes made with a cookie (this call's) only with this header
const WRITE = { "x-requested-with": "ccengine" };
let pc = null;
let stream = null;
let callId = null;
let events = null;
// a chat: its id, its caller token (sent to take it on to a call) and its stream
let chatId = null;
let chatToken = null;
let chatEvents = null;
// for tests and embedding pages: the live peer connection and call id
window.ccengineCall = { get pc() { return pc; }, get callId() { return callId; } };

function setState(s) {
  $("state").textContent = s;
  $("state").className = `state ${s}`;
  $("callback").hidden = s !== "queued";
}

function caption(ev) {
  const key = `${ev.leg_id}:${ev.index}`;
  let el = document.querySelector(`[data-key="${key}"]`);
  if (!el) {
    el = document.createElement("div");
    el.dataset.key = key;
    $("captions").append(el);
  }
  el.className = `line ${ev.type === "transcript.final" ? "final" : "partial"}`;
  el.innerHTML = `<span class="t">${ev.start.toFixed(1)}s</span><span class="who">${ev.speaker === "agent" ? "agent" : "you"}</span><span class="text">${esc(ev.text)}</span>`;
  el.dataset.speaker = ev.speaker;
  $("captions").scrollTop = $("captions").scrollHeight;
}

// the virtual agent's words, as captions beside the caller's own
function botSaid(ev) {
  const el = document.createElement("div");
  el.className = "line final bot";
  el.innerHTML = `<span class="t">${ev.at.toFixed(1)}s</span><span class="who">assistant</span><span class="text">${esc(ev.text)}</span>`;
  $("captions").append(el);
  $("captions").scrollTop = $("captions").scrollHeight;
}

function queued(ev) {
  $("queue").hidden = false;
  const wait = ev.expected_wait == null ? "all agents are busy" : `expected wait about ${Math.max(1, Math.round(ev.expected_wait / 60))} min`;
  $("queue").textContent = `Connecting you to a person: you are number ${ev.position} in line (${wait}).`;
  if (ev.callback_offered) $("queue").textContent += " You can ask us to call you back instead.";
}

// A call link (#invite=…) goes straight to the agent or queue it names. The fragment
// never reaches a server; take it out of the address bar so it is not bookmarked.
// The business's app may open this page signed in as its user (#customer_token=…,
// a JWT it signed): the call is then theirs, verified, and nobody asks who they are.
const fragment = new URLSearchParams(location.hash.slice(1));
const invite = fragment.get("invite");
const customerToken = fragment.get("customer_token") || window.ccengineCustomerToken || null;
if (invite || customerToken) history.replaceState(null, "", location.pathname);
if (invite) $("notice").textContent = "You were invited to this call: press Call to be put through.";

// keys go to the engine as keys, never as tones in the audio: a PIN keyed here is in
// no recording. One request after another: two at once may arrive the other way round
let keysSent = Promise.resolve();
for (const b of $("keypad").querySelectorAll("button")) {
  b.onclick = () => {
    if (!callId) return;
    const url = `/api/v1/calls/${callId}/keys`;
    keysSent = keysSent.then(() => fetch(url, {
      method: "POST", headers: { "content-type": "application/json", ...WRITE },
      body: JSON.stringify({ digits: b.textContent }),
    })).catch(() => {});
  };
}

async function call() {
  $("error").textContent = "";
  $("call").disabled = true;
  setState("dialing");
  try {
    // what the engine sends us: queue announcements, hold audio, the agent
    const camera = $("camera").checked;
    $("remote-video").hidden = !camera;
    ({ pc, mic: stream } = await openPeer({ audio: $("remote"), video: camera ? $("remote-video") : null, camera, invite }));
    // a live chat goes on as this call: its token says it is ours to take on
    const upgrading = chatId ? { authorization: `Bearer ${chatToken}` } : {};
    const goesOn = chatId ? "The chat goes on as this call. " : "";
    const res = await fetch("/api/v1/calls", {
      method: "POST",
      headers: { "content-type": "application/json", ...WRITE, ...upgrading },
      body: JSON.stringify({
        type: "offer", sdp: pc.localDescription.sdp, language: $("language").value,
        caller: $("identity").value.trim() || null, invite, customer_token: customerToken,
        upgrade_from: chatId,
      }),
    });
    const body = await res.json();
    if (!res.ok) throw new Error(body.detail || `HTTP ${res.status}`);
    callId = body.call_id;
    window.ccengineCallId = callId;
    $("notice").textContent = `${goesOn}Speech recognition: ${body.recognizer_note}`;
    if (!["vosk", "moonshine"].includes(body.recognizer)) $("notice").className = "note warn";
    await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    $("hangup").disabled = false;
    $("keypad").hidden = false;
    events = connectEvents(`/api/v1/calls/${callId}/events`, (ev) => {
      if (ev.type === "call.state_changed") {
        setState(ev.state);
        if (ev.state === "bridged") $("queue").textContent = "You are talking to a person.";
        if (ev.state === "held") $("queue").textContent = "You are on hold. Your agent will be right back.";
      }
      else if (ev.type === "transcript.partial" || ev.type === "transcript.final") caption(ev);
      else if (ev.type === "bot.said") botSaid(ev);
      else if (ev.type === "call.verified") { $("verified").hidden = false; $("verified").textContent = "You are verified."; }
      else if (ev.type === "queue.updated") queued(ev);
      else if (ev.type === "callback.requested") $("queue").textContent = "We will call you back. Thank you.";
      else if (ev.type === "call.ended") { setState("ended"); finish(`Call ended (${ev.reason}).`); }
    });
  } catch (err) {
    $("error").textContent = `Could not place the call: ${err.message}`;
    setState("failed");
    finish();
  }
}

function finish(message) {
  if (message) $("notice").textContent = message;
  if (events) events.close();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (pc) pc.close();
  pc = stream = events = null;
  $("call").disabled = false;
  $("hangup").disabled = true;
  $("callback").hidden = true;
  $("keypad").hidden = true;
}

async function hangup() {
  $("hangup").disabled = true;
  if (chatId && !callId) {
    await fetch(`/api/v1/calls/${chatId}/hangup`, { method: "POST", headers: WRITE }).catch(() => {});
    endChat("You ended the chat.");
    setState("ended");
    return;
  }
  if (callId) await fetch(`/api/v1/calls/${callId}/hangup`, { method: "POST", headers: WRITE }).catch(() => {});
  finish("You hung up.");
  setState("ended");
}

async function callback() {
  $("callback").disabled = true;
  const res = await fetch(`/api/v1/calls/${callId}/callback`, {
    method: "POST",
    headers: { "content-type": "application/json", ...WRITE },
    body: JSON.stringify({ contact: $("identity").value.trim() || null }),
  });
  $("callback").disabled = false;
  if (!res.ok) $("error").textContent = `Could not request a callback: ${(await res.json()).detail}`;
}

// -- chat ------------------------------------------------------------------------------

async function chat() {
  $("error").textContent = "";
  $("chat").disabled = true;
  try {
    const res = await fetch("/api/v1/chats", {
      method: "POST",
      headers: { "content-type": "application/json", ...WRITE },
      body: JSON.stringify({
        language: $("language").value, caller: $("identity").value.trim() || null,
        customer_token: customerToken,
      }),
    });
    const body = await res.json();
    if (!res.ok) throw new Error(body.detail || `HTTP ${res.status}`);
    ({ call_id: chatId, caller_token: chatToken } = body);
    window.ccengineChatId = chatId;
    setState("chat");
    $("chat-box").hidden = false;
    $("hangup").disabled = false;
    $("message").focus();
    chatEvents = connectEvents(`/api/v1/calls/${chatId}/events`, (ev) => {
      if (ev.type === "transcript.final") caption(ev);
      else if (ev.type === "bot.said") botSaid(ev);
      else if (ev.type === "queue.updated") queued(ev);
      else if (ev.type === "call.state_changed" && ev.state === "bridged") $("queue").textContent = "You are chatting with a person.";
      else if (ev.type === "call.verified") { $("verified").hidden = false; $("verified").textContent = "You are verified."; }
      // upgraded: the call says so (this may come before or after its answer)
      else if (ev.type === "call.ended") endChat(ev.reason === "upgraded" ? null : `Chat ended (${ev.reason}).`);
    });
  } catch (err) {
    $("error").textContent = `Could not start a chat: ${err.message}`;
    $("chat").disabled = false;
  }
}

function endChat(message) {
  if (chatEvents) chatEvents.close();
  chatEvents = chatId = chatToken = null;
  $("chat-box").hidden = true;
  $("chat").disabled = false;
  if (!callId) $("hangup").disabled = true;
  if (message) $("notice").textContent = message;
}

$("chat-box").onsubmit = async (e) => {
  e.preventDefault();
  const text = $("message").value.trim();
  if (!text || !chatId) return;
  $("message").value = "";
  const res = await fetch(`/api/v1/calls/${chatId}/messages`, {
    method: "POST", headers: { "content-type": "application/json", ...WRITE },
    body: JSON.stringify({ text }),
  }).catch((err) => ({ ok: false, json: async () => ({ detail: err.message }) }));
  if (!res.ok) $("error").textContent = `Not sent: ${(await res.json()).detail}`;
};

$("chat").onclick = chat;
$("call").onclick = call;
$("hangup").onclick = hangup;
$("callback").onclick = callback;
