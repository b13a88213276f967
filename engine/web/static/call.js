import { agentName, phoneProblem, sayCallback, sayEnded, sayLine, sayState } from "/static/callcopy.js";
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
// what the page says depends on more than the state: who answered, whether the
// assistant spoke, whether it is a chat, and a callback asked for
const talk = { state: "idle", chat: false, agent: null, assistant: false, callback: null };
// for tests and embedding pages: the live peer connection and call id
window.ccengineCall = { get pc() { return pc; }, get callId() { return callId; } };

// state: the call's (engine/callstate.py) or the page's own (idle, dialing, chat,
// failed). The sentence is for the customer; data-state keeps the state for scripts.
function setState(state, reason = null) {
  talk.state = state;
  const el = $("state");
  el.dataset.state = state;
  el.className = `state ${state}`;
  el.textContent = state === "ended" ? sayEnded(reason, { chat: talk.chat, contact: talk.callback }) : sayState(state, talk);
  // the place in line and the callback offer are only true while in line
  if (state !== "queued") $("queue").hidden = true;
  $("callback-box").hidden = state !== "queued" || talk.callback !== null;
}

// the assistant's first words change "You're connected" into who the caller talks to
function assistantSpoke() {
  if (talk.assistant) return;
  talk.assistant = true;
  if (["active", "chat"].includes(talk.state)) setState(talk.state);
}

function onStateChanged(ev) {
  // with an agent (answered, resumed, handed over to a colleague): the engine names them
  // each time (agent_name: the name callers are told). No name: "one of our team".
  if (ev.state === "bridged") talk.agent = agentName(ev.agent_name);
  if (ev.state === "queued") talk.agent = null; // transferred: someone else comes
  setState(ev.state, ev.reason);
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
  const who = ev.speaker === "agent" ? esc(talk.agent || "agent") : "you";
  el.innerHTML = `<span class="t">${ev.start.toFixed(1)}s</span><span class="who">${who}</span><span class="text">${esc(ev.text)}</span>`;
  el.dataset.speaker = ev.speaker;
  $("captions").scrollTop = $("captions").scrollHeight;
}

// the virtual agent's words, as captions beside the caller's own
function botSaid(ev) {
  assistantSpoke();
  const el = document.createElement("div");
  el.className = "line final bot";
  el.innerHTML = `<span class="t">${ev.at.toFixed(1)}s</span><span class="who">assistant</span><span class="text">${esc(ev.text)}</span>`;
  $("captions").append(el);
  $("captions").scrollTop = $("captions").scrollHeight;
}

function queued(ev) {
  if (talk.state !== "queued" && talk.state !== "active" && talk.state !== "chat") return; // a late one
  $("queue").hidden = false;
  $("queue").textContent = sayLine(ev);
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

// a refused stream would leave the page frozen in its last state: say so, plainly
function lost(status) {
  if (status.startsWith("refused")) $("error").textContent = "We lost the connection. Please reload the page.";
}

async function call() {
  $("error").textContent = "";
  $("notice").textContent = "";
  $("call").disabled = true;
  // a chat stays the page's until the engine has taken it on as this call: a call
  // that fails before then leaves the chat as it was
  const before = { ...talk };
  Object.assign(talk, { chat: chatId !== null, agent: null, assistant: false, callback: null });
  setState("dialing");
  try {
    // what the engine sends us: queue announcements, hold audio, the agent
    const camera = $("camera").checked;
    $("remote-video").hidden = !camera;
    ({ pc, mic: stream } = await openPeer({ audio: $("remote"), video: camera ? $("remote-video") : null, camera, invite }));
    // a live chat goes on as this call: its token says it is ours to take on
    const upgrading = chatId ? { authorization: `Bearer ${chatToken}` } : {};
    const goesOn = chatId ? "The chat goes on as this call." : "";
    const res = await fetch("/api/v1/calls", {
      method: "POST",
      headers: { "content-type": "application/json", ...WRITE, ...upgrading },
      body: JSON.stringify({
        type: "offer", sdp: pc.localDescription.sdp, language: $("language").value,
        caller: $("identity").value.trim() || null, invite, customer_token: customerToken,
        upgrade_from: chatId,
      }),
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(problemText(body, res.status));
    talk.chat = false; // taken on: the call says what happens now
    callId = body.call_id;
    window.ccengineCallId = callId;
    // which recognizer runs is for the staff (the call's view says); the caller only
    // needs to know when there will be no captions
    const captions = body.recognizer ? "" : " Live captions aren't available on this call.";
    $("notice").textContent = `${goesOn}${captions}`.trim();
    await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    $("hangup").disabled = false;
    $("keypad").hidden = false;
    events = connectEvents(`/api/v1/calls/${callId}/events`, (ev) => {
      if (ev.type === "call.state_changed" && ev.state !== "ended") onStateChanged(ev);
      else if (ev.type === "transcript.partial" || ev.type === "transcript.final") caption(ev);
      else if (ev.type === "bot.said") botSaid(ev);
      else if (ev.type === "call.verified") { $("verified").hidden = false; $("verified").textContent = "You are verified."; }
      else if (ev.type === "queue.updated") queued(ev);
      else if (ev.type === "callback.requested") calledBack(ev.contact);
      else if (ev.type === "call.ended") { finish(); setState("ended", ev.reason); }
    }, { onStatus: lost });
  } catch (err) {
    $("error").textContent = `Sorry, we couldn't connect your call: ${err.message}`;
    finish();
    if (chatId && talk.chat) {
      // the chat goes on as it was: its own stream says what happens
      Object.assign(talk, before);
      setState("chat");
      $("hangup").disabled = false;
    } else setState("failed");
  }
}

// a problem body's words (engine/api/problems.py): its detail, or the message of each
// field that was wrong; a reply that was no problem at all says its status
function problemText(body, status) {
  if (Array.isArray(body?.errors) && body.errors.length) {
    return body.errors.map((e) => String(e.message).replace(/^Value error, /, "")).join("; ");
  }
  return typeof body?.detail === "string" ? body.detail : `the service answered ${status}`;
}

function finish() {
  if (events) events.close();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (pc) pc.close();
  pc = stream = events = callId = null;
  $("call").disabled = false;
  $("hangup").disabled = true;
  $("callback-box").hidden = true;
  $("keypad").hidden = true;
}

async function hangup() {
  $("hangup").disabled = true;
  if (chatId && !callId) {
    await fetch(`/api/v1/calls/${chatId}/hangup`, { method: "POST", headers: WRITE }).catch(() => {});
    endChat();
    setState("ended", "hangup");
    return;
  }
  if (callId) await fetch(`/api/v1/calls/${callId}/hangup`, { method: "POST", headers: WRITE }).catch(() => {});
  finish();
  setState("ended", "hangup");
}

// asked once: the offer goes, and the page says when and where we will call
function calledBack(contact) {
  talk.callback = contact || "";
  $("callback-box").hidden = true;
  $("queue").hidden = false;
  $("queue").textContent = sayCallback(contact);
}

async function callback(e) {
  e.preventDefault();
  const id = callId || chatId;
  if (!id || talk.callback !== null) return;
  const contact = $("callback-number").value.trim() || null;
  // a call from the business's app may come with the customer's number; else we need one
  const problem = phoneProblem(contact, !customerToken);
  if (problem) {
    $("error").textContent = problem;
    $("callback-number").setAttribute("aria-invalid", "true");
    $("callback-number").focus();
    return;
  }
  $("callback-number").removeAttribute("aria-invalid");
  $("callback").disabled = true;
  let failed = null;
  let booked = null;
  try {
    const res = await fetch(`/api/v1/calls/${id}/callback`, {
      method: "POST",
      headers: { "content-type": "application/json", ...WRITE },
      body: JSON.stringify({ contact }),
    });
    const body = await res.json().catch(() => null);
    if (res.ok) booked = body?.contact ?? contact;
    else failed = body ? problemText(body, res.status) : `the service answered ${res.status}`;
  } catch {
    failed = "we couldn't reach the service";
  }
  $("callback").disabled = false;
  if (failed !== null) { $("error").textContent = `Sorry, we couldn't book the callback: ${failed}`; return; }
  $("error").textContent = "";
  calledBack(booked);
}

// -- chat ------------------------------------------------------------------------------

async function chat() {
  $("error").textContent = "";
  $("notice").textContent = "";
  $("chat").disabled = true;
  Object.assign(talk, { chat: true, agent: null, assistant: false, callback: null });
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
      const mine = talk.chat; // not yet taken on by a call: it says what happens
      if (ev.type === "transcript.final") caption(ev);
      else if (ev.type === "bot.said") botSaid(ev);
      else if (ev.type === "queue.updated" && mine) queued(ev);
      else if (ev.type === "call.state_changed" && ev.state !== "ended" && mine) onStateChanged(ev);
      else if (ev.type === "call.verified") { $("verified").hidden = false; $("verified").textContent = "You are verified."; }
      else if (ev.type === "callback.requested" && mine) calledBack(ev.contact);
      // upgraded: the call says so (this may come before or after its answer)
      else if (ev.type === "call.ended") {
        endChat();
        if (ev.reason !== "upgraded" && talk.chat) setState("ended", ev.reason);
      }
    }, { onStatus: lost });
  } catch (err) {
    $("error").textContent = `Sorry, we couldn't start the chat: ${err.message}`;
    $("chat").disabled = false;
    setState("failed");
  }
}

function endChat() {
  if (chatEvents) chatEvents.close();
  chatEvents = chatId = chatToken = null;
  $("chat-box").hidden = true;
  $("chat").disabled = false;
  if (!callId) $("hangup").disabled = true;
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
$("callback-box").onsubmit = callback;
