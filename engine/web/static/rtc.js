// WebRTC helpers shared by the caller page and the agent desk.

// Our offers are non-trickle: wait until the browser has gathered its candidates.
export function waitIce(pc, ms = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => pc.iceGatheringState === "complete" && done();
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, ms);  // host candidates are enough on most networks
  });
}

// The STUN/TURN servers the engine is configured with (CCENGINE_ICE_SERVERS), the same
// it uses itself; none unless configured. A call link's page shows its invite, which is
// what lets it read them when calls are not public.
export async function iceServers(invite = null) {
  const headers = invite ? { "x-call-invite": invite } : {};
  const res = await fetch("/api/v1/ice-servers", { headers });
  if (!res.ok) throw new Error(`ICE servers: HTTP ${res.status}`);
  return (await res.json()).ice_servers;
}

// Microphone (and camera) in, the other party out: a peer connection with its offer
// ready. With a ``video`` element but no camera we still offer to receive video, so an
// agent sees a caller's camera without sending their own.
export async function openPeer({ audio, video = null, camera = false, invite = null }) {
  // a small picture: the engine relays it (decode + encode), so pixels cost its CPU
  const video_ = camera ? { width: { ideal: 320 }, height: { ideal: 240 }, frameRate: { ideal: 15 } } : false;
  const servers = await iceServers(invite);
  const local = await navigator.mediaDevices.getUserMedia({ audio: true, video: video_ });
  const pc = new RTCPeerConnection({ iceServers: servers });
  pc.ontrack = (e) => {
    const el = e.track.kind === "video" ? video : audio;
    if (el) el.srcObject = new MediaStream([e.track]);
  };
  local.getTracks().forEach((t) => pc.addTrack(t, local));
  if (video && !camera) pc.addTransceiver("video", { direction: "recvonly" });
  await pc.setLocalDescription(await pc.createOffer());
  await waitIce(pc);
  return { pc, mic: local };
}

// Bytes of ``kind`` media this peer has sent and received so far (for status and tests).
export async function mediaBytes(pc, kind = "audio") {
  let sent = 0, received = 0;
  (await pc.getStats()).forEach((r) => {
    if (r.kind !== kind) return;
    if (r.type === "outbound-rtp") sent += r.bytesSent;
    if (r.type === "inbound-rtp") received += r.bytesReceived;
  });
  return { sent, received };
}
