import { connectEvents, esc } from "/static/events.js";

const $ = (id) => document.getElementById(id);
let pc = null;
let stream = null;
let callId = null;
let events = null;

function setState(s) {
  $("state").textContent = s;
  $("state").className = `state ${s}`;
}

function waitIce(pc, ms = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => pc.iceGatheringState === "complete" && done();
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, ms);  // host candidates are enough on most networks
  });
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
  el.innerHTML = `<span class="t">${ev.start.toFixed(1)}s</span><span></span><span class="text">${esc(ev.text)}</span>`;
  $("captions").scrollTop = $("captions").scrollHeight;
}

async function call() {
  $("error").textContent = "";
  $("call").disabled = true;
  setState("dialing");
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    pc = new RTCPeerConnection();
    // what the engine says to us: queue announcements now, the agent later
    pc.ontrack = (e) => { $("remote").srcObject = e.streams[0] || new MediaStream([e.track]); };
    stream.getTracks().forEach((t) => pc.addTrack(t, stream));
    await pc.setLocalDescription(await pc.createOffer());
    await waitIce(pc);
    const res = await fetch("/api/v1/calls", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp, language: $("language").value }),
    });
    const body = await res.json();
    if (!res.ok) throw new Error(body.detail || `HTTP ${res.status}`);
    callId = body.call_id;
    window.ccengineCallId = callId;
    $("notice").textContent = `Speech recognition: ${body.recognizer_note}`;
    if (body.recognizer !== "vosk") $("notice").className = "note warn";
    await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
    $("hangup").disabled = false;
    events = connectEvents(`/api/v1/calls/${callId}/events`, (ev) => {
      if (ev.type === "call.state_changed") setState(ev.state);
      else if (ev.type === "transcript.partial" || ev.type === "transcript.final") caption(ev);
      else if (ev.type === "queue.updated") {
        $("queue").hidden = false;
        const wait = ev.expected_wait == null ? "all agents are busy" : `expected wait about ${Math.max(1, Math.round(ev.expected_wait / 60))} min`;
        $("queue").textContent = `Connecting you to a person: you are number ${ev.position} in line (${wait}).`;
      }
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
}

async function hangup() {
  $("hangup").disabled = true;
  if (callId) await fetch(`/api/v1/calls/${callId}/hangup`, { method: "POST" }).catch(() => {});
  finish("You hung up.");
  setState("ended");
}

$("call").onclick = call;
$("hangup").onclick = hangup;
