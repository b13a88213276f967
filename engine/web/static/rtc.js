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

// Microphone in, the other party out: a peer connection ready to make an offer.
export async function openAudioPeer(audioElement) {
  const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
  const pc = new RTCPeerConnection();
  pc.ontrack = (e) => { audioElement.srcObject = e.streams[0] || new MediaStream([e.track]); };
  mic.getTracks().forEach((t) => pc.addTrack(t, mic));
  await pc.setLocalDescription(await pc.createOffer());
  await waitIce(pc);
  return { pc, mic };
}

// Audio bytes this peer has sent and received so far (for status and tests).
export async function audioBytes(pc) {
  let sent = 0, received = 0;
  (await pc.getStats()).forEach((r) => {
    if (r.kind !== "audio") return;
    if (r.type === "outbound-rtp") sent += r.bytesSent;
    if (r.type === "inbound-rtp") received += r.bytesReceived;
  });
  return { sent, received };
}
