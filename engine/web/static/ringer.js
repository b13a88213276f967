// How the desk rings: a ringtone made in the page (Web Audio oscillators, no audio file
// from anywhere), a browser notification, and the tab's title flashing while the tab is
// hidden. ring() starts all three, silence() stops them all; nothing else is kept.
// soundBlocked() says whether the browser keeps the page quiet (no click on it yet, as
// after a reload), for the desk to offer an "Enable ring sound" button.

const TONES_HZ = [440, 480]; // the two tones of the North American ring
const ON_S = 1.2, OFF_S = 1.8; // one burst, then quiet: a ring every 3 s
const MAX_RING_S = 300; // the longest an offer rings (CCENGINE_OFFER_TIMEOUT's maximum)
const SOUND_EVENT = "ccengine-ring-sound"; // on document, when soundBlocked() may change
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
function context() {
  if (!ctx) {
    ctx = new AudioContext();
    ctx.onstatechange = () => document.dispatchEvent(new Event(SOUND_EVENT));
  }
  return ctx;
}

function audio() {
  // refused without a click on the page: the "Enable ring sound" button asks for one
  if (context().state === "suspended") ctx.resume().catch(() => {});
  return ctx;
}

function unlockAudio() {
  try { audio(); } catch { /* no audio output: the ring is still shown, announced and notified */ }
  document.dispatchEvent(new Event(SOUND_EVENT));
}

// true while a ring would be silent because the browser has not let the page play sound
// yet; `onChange` is called when that may have changed
export function soundBlocked() {
  try { return context().state !== "running"; } catch { return false; /* no audio at all */ }
}
export function onSoundChange(onChange) { document.addEventListener(SOUND_EVENT, onChange); }
for (const kind of ["pointerdown", "keydown"]) document.addEventListener(kind, unlockAudio, { once: true });

// Called from a click that means "I take calls" (signing in, going available): the
// ringtone is readied and notifications are asked for (once: the browser remembers).
export function unlock() {
  unlockAudio();
  if ("Notification" in window && Notification.permission === "default") {
    Notification.requestPermission().catch(() => {});
  }
}

// the tone lasts `seconds` at most: it stops when the offer expires even if nothing else
// tells the page (a lost withdrawal, a tab whose timers are slowed)
function startTone(seconds) {
  try { audio(); } catch { return; }
  const length = Math.max(0, Math.min(seconds, MAX_RING_S));
  if (length <= 0) return;
  const envelope = ctx.createGain();
  const t0 = ctx.currentTime + 0.05;
  envelope.gain.setValueAtTime(0, ctx.currentTime);
  // the whole cadence is scheduled now: the audio thread keeps it even in a hidden tab,
  // where timers are slowed down
  for (let t = t0; t < t0 + length; t += ON_S + OFF_S) {
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
    o.stop(t0 + length);
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

// Ring for an offer from `caller` (shown as the notification's body with `detail`) until
// `until` (ms since the epoch: when the offer expires).
export function ring(caller, detail, until = Date.now() + MAX_RING_S * 1000) {
  silence();
  title = document.title;
  ringingText = `Ringing: ${caller}`;
  startTone((until - Date.now()) / 1000);
  showNotification(`Incoming call: ${caller}`, detail);
  followVisibility();
}

export function silence() {
  stopTone();
  if (note) { note.close(); note = null; }
  ringingText = "";
  followVisibility();
}
// a page going away (closed, reloaded, navigated) must not leave its notification up
window.addEventListener("pagehide", silence);
