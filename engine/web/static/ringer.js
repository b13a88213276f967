// How the desk rings: a ringtone made in the page (Web Audio oscillators, no audio file
// from anywhere), a browser notification, and the tab's title flashing while the tab is
// hidden. ring() starts all three, silence() stops them all; nothing else is kept.

const TONES_HZ = [440, 480]; // the two tones of the North American ring
const ON_S = 1.2, OFF_S = 1.8; // one burst, then quiet: a ring every 3 s
const MAX_S = 300; // the longest an offer rings (CCENGINE_OFFER_TIMEOUT's maximum)
const LEVEL = 0.12; // each tone's gain: audible, not startling

let ctx = null; // one AudioContext for the page, made on a user gesture (autoplay rules)
let tone = null; // { oscillators, envelope } while ringing
let note = null; // the Notification shown for this ring
let flash = null; // the title-flash interval
let title = document.title;
let ringingText = "";

// Browsers let a page make sound only after the person did something on it: the first
// click or key anywhere on the desk readies the ringtone (a desk reloaded while available
// rings aloud from then on).
function unlockAudio() {
  try {
    ctx ??= new AudioContext();
    if (ctx.state === "suspended") ctx.resume();
  } catch { /* no audio output: the ring is still shown, announced and notified */ }
}
for (const kind of ["pointerdown", "keydown"]) document.addEventListener(kind, unlockAudio, { once: true });

// Called from a click that means "I take calls" (signing in, going available): the
// ringtone is readied and notifications are asked for (once: the browser remembers).
export function unlock() {
  unlockAudio();
  if ("Notification" in window && Notification.permission === "default") {
    Notification.requestPermission().catch(() => {});
  }
}

function startTone() {
  try {
    ctx ??= new AudioContext();
    if (ctx.state === "suspended") ctx.resume();
  } catch { return; }
  const envelope = ctx.createGain();
  const t0 = ctx.currentTime + 0.05;
  envelope.gain.setValueAtTime(0, ctx.currentTime);
  // the whole cadence is scheduled now: the audio thread keeps it even in a hidden tab,
  // where timers are slowed down
  for (let t = t0; t < t0 + MAX_S; t += ON_S + OFF_S) {
    envelope.gain.setValueAtTime(0, t);
    envelope.gain.linearRampToValueAtTime(LEVEL, t + 0.02);
    envelope.gain.setValueAtTime(LEVEL, t + ON_S - 0.02);
    envelope.gain.linearRampToValueAtTime(0, t + ON_S);
  }
  envelope.connect(ctx.destination);
  const oscillators = TONES_HZ.map((hz) => {
    const o = ctx.createOscillator();
    o.frequency.value = hz;
    o.connect(envelope);
    o.start(t0);
    o.stop(t0 + MAX_S);
    return o;
  });
  tone = { oscillators, envelope };
}

function stopTone() {
  if (!tone) return;
  for (const o of tone.oscillators) { try { o.stop(); } catch { /* stopped already */ } o.disconnect(); }
  tone.envelope.disconnect();
  tone = null;
}

function showNotification(heading, body) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  try {
    note = new Notification(heading, { body, tag: "ccengine-ring", requireInteraction: true });
    note.onclick = () => { window.focus(); note?.close(); };
  } catch { note = null; /* e.g. a browser that wants a service worker for them */ }
}

// the title alternates while the tab is hidden; a visible tab shows the ring itself
function followVisibility() {
  clearInterval(flash);
  flash = null;
  document.title = title;
  if (!ringingText || !document.hidden) return;
  let on = false;
  const swap = () => { on = !on; document.title = on ? ringingText : title; };
  swap();
  flash = setInterval(swap, 1000);
}
document.addEventListener("visibilitychange", followVisibility);

// Ring for an offer from `caller` (shown as the notification's body with `detail`).
export function ring(caller, detail) {
  silence();
  title = document.title;
  ringingText = `Ringing: ${caller}`;
  startTone();
  showNotification(`Incoming call: ${caller}`, detail);
  followVisibility();
}

export function silence() {
  stopTone();
  if (note) { note.close(); note = null; }
  ringingText = "";
  followVisibility();
}
