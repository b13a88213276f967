// The one event client every page uses: a stream of the engine's events (everything,
// or one call's) that resumes after a disconnect from the last event id it saw.
//
// It is an EventSource on the SSE endpoints (engine/api/streams.py): the browser sends
// the page's cookies with it (a person's sign-in, or this call's caller cookie, whose
// path is the call's), so no token ever goes in a URL. A dropped stream comes back by
// itself with Last-Event-ID, which the engine prefers to the `after` of the first
// connect. The engine answers a refusal (not signed in, another call's cookie, no such
// call) with an HTTP error before the stream starts; EventSource gives up on it without
// saying why, so one plain GET asks for the reason. A 429 (too many requests) is tried
// again after its Retry-After, by that GET alone until the engine lets it through: one
// request per try, not two.
//
// The agent's desk is the exception ({ desk: true }): it keeps the WebSocket stream,
// because an agent's open WebSocket is how routing knows they are at their desk
// (engine/desks.py), and its pings notice a desk whose computer vanished within
// seconds; nothing notices a vanished SSE reader until TCP gives up, minutes later.
export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const RETRY_FIRST = 500; // ms before a stream the engine refused for now is tried again ...
const RETRY_MAX = 10000; // ... doubling up to this
const ASK_WITHIN = 10000; // ms for the GET that asks why; no answer: try again later
const RETRY_AFTER_MAX = 300000; // ms: a Retry-After longer than this is taken as this

// connectEvents(path, onEvent, { onStatus, after, desk, askWithin }) -> { close() }
// onEvent(event) gets each event once, in id order; onStatus(s) hears "live",
// "reconnecting" and "refused: <why>" (then it stops: retrying would not help).
export function connectEvents(path, onEvent, opts = {}) {
  const stream = { last: opts.after || 0, closed: false, delay: RETRY_FIRST, askWithin: opts.askWithin || ASK_WITHIN };
  const status = (s) => opts.onStatus && opts.onStatus(s);
  const deliver = (ev) => {
    if (ev.id <= stream.last) return; // a replay overlapping what we had
    stream.last = ev.id;
    stream.delay = RETRY_FIRST;
    onEvent(ev);
  };
  (opts.desk ? openSocket : openSource)(path, stream, deliver, status);
  return { close() { stream.closed = true; if (stream.source) stream.source.close(); } };
}

const urlOf = (path, stream) => (stream.last ? `${path}?after=${stream.last}` : path);

function openSource(path, stream, deliver, status) {
  if (stream.closed) return;
  const source = new EventSource(urlOf(path, stream));
  stream.source = source;
  source.onopen = () => status("live");
  source.onmessage = (m) => deliver(JSON.parse(m.data));
  source.onerror = () => {
    if (stream.closed) return;
    status("reconnecting");
    if (source.readyState !== EventSource.CLOSED) return; // it comes back by itself
    // refused, or an answer that was no stream at all (429, 5xx, a proxy's page)
    ask(path, stream, deliver, status);
  };
}

// One GET says what to do next: give up (refused for good), wait as a 429 says and
// ask again (throttled), or wait and open the stream again.
async function ask(path, stream, deliver, status) {
  const answer = await refusal(urlOf(path, stream), stream.askWithin);
  if (stream.closed) return;
  if (answer.refused !== undefined) { status(`refused: ${answer.refused}`); return; }
  const wait = answer.retryAfter ?? stream.delay;
  stream.delay = Math.min(stream.delay * 2, RETRY_MAX);
  const next = answer.retryAfter !== undefined ? ask : openSource;
  setTimeout(() => next(path, stream, deliver, status), wait);
}

// What the engine says to this stream now: { refused: why } for good (4xx but 429),
// { retryAfter: ms } throttled (429), {} when opening it again may help (it opens, 5xx,
// no answer within `within` ms, no engine). Only the status and the problem body are
// read: a stream that opens after all is dropped at once.
async function refusal(url, within) {
  const abort = new AbortController();
  try {
    const signal = AbortSignal.any([abort.signal, AbortSignal.timeout(within)]);
    const res = await fetch(url, { signal, headers: { accept: "text/event-stream" } });
    if (res.status === 429) return { retryAfter: retryAfter(res.headers.get("retry-after")) };
    if (res.status < 400 || res.status >= 500) return {};
    const body = await res.json().catch(() => ({}));
    return { refused: typeof body.detail === "string" ? body.detail : `HTTP ${res.status}` };
  } catch {
    return {}; // the engine is not there, or said nothing in time: try again
  } finally {
    abort.abort();
  }
}

// Retry-After in ms: seconds, or an HTTP date; a 429 without one waits RETRY_FIRST
function retryAfter(value) {
  const seconds = Number(value);
  let ms = value !== null && value.trim() !== "" && Number.isFinite(seconds) ? seconds * 1000 : Date.parse(value ?? "") - Date.now();
  if (!Number.isFinite(ms)) ms = RETRY_FIRST;
  return Math.min(Math.max(ms, 0), RETRY_AFTER_MAX);
}

function openSocket(path, stream, deliver, status) {
  if (stream.closed) return;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}${path}?after=${stream.last}`);
  stream.source = ws;
  ws.onmessage = (m) => deliver(JSON.parse(m.data));
  ws.onopen = () => status("live");
  ws.onclose = (e) => {
    if (stream.closed) return;
    if (e.code >= 4400 && e.code < 4500 && e.code !== 4429) {
      // refused (not signed in, another call's token, unknown call): retrying won't help
      status(`refused: ${e.reason}`);
      return;
    }
    status("reconnecting");
    setTimeout(() => openSocket(path, stream, deliver, status), stream.delay);
    stream.delay = Math.min(stream.delay * 2, RETRY_MAX);
  };
}
