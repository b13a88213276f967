// A supervisor on a live call: listen (hear both sides), whisper (only the agent hears
// you) or barge (both do), over WebRTC like the desk's softphone (rtc.js).
//
//   const m = await monitor(callId, "listen");   // throws Error(detail) if refused
//   await m.setMode("whisper");
//   await m.stop();
//
// The engine decides who hears whom (engine/monitor.py); the microphone is also turned
// off here while listening, so a listener sends silence whatever happens on the way.
import { iceServers, waitIce } from "/static/rtc.js";

export const MODES = ["listen", "whisper", "barge"];

// X-Requested-With: the engine takes changes made with the sign-in cookie only with it
async function send(path, method, body) {
  const headers = { "x-requested-with": "ccengine" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new Error(data?.detail || `HTTP ${res.status}`);
  return data;
}

// ``audio``: the element that plays the call (one is made if none is given).
// ``onEnded``: called once if the connection goes (the call ended, the network).
export async function monitor(callId, mode, { audio = null, onEnded = null } = {}) {
  if (!MODES.includes(mode)) throw new Error(`mode must be one of ${MODES.join(", ")}`);
  const path = `/api/v1/calls/${encodeURIComponent(callId)}/monitor`;
  const servers = await iceServers();
  const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
  const pc = new RTCPeerConnection({ iceServers: servers });
  const out = audio || new Audio();
  out.autoplay = true;
  pc.ontrack = (e) => { out.srcObject = new MediaStream([e.track]); };
  mic.getTracks().forEach((t) => pc.addTrack(t, mic));
  const release = () => {
    pc.close();
    mic.getTracks().forEach((t) => t.stop());
    out.srcObject = null;
  };
  let answer;
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitIce(pc);
    answer = await send(path, "POST", { mode, type: "offer", sdp: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  } catch (err) {
    release();
    throw err;
  }
  let current = answer.mode;
  let stopped = false;
  const speak = () => mic.getAudioTracks().forEach((t) => { t.enabled = current !== "listen"; });
  speak();
  pc.onconnectionstatechange = () => {
    if (stopped || !["failed", "closed"].includes(pc.connectionState)) return;
    stopped = true;
    release();
    if (onEnded) onEnded(pc.connectionState);
  };
  return {
    pc,
    legId: answer.leg_id,
    get mode() { return current; },
    get stopped() { return stopped; },
    async setMode(next) {
      if (stopped) throw new Error("not monitoring");
      current = (await send(path, "PATCH", { mode: next })).mode;
      speak();
      return current;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        await send(path, "DELETE");
      } catch {
        // the call ended first: the engine has ended the leg already
      } finally {
        release();
      }
    },
  };
}
