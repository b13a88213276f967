// The one event client every page uses: a stream of the engine's events (everything,
// or one call's) that resumes after a disconnect from the last event id it saw.
//
// It is an EventSource on the SSE endpoints (engine/api/streams.py): the browser sends
// the page's cookies with it (a person's sign-in, or this call's caller cookie, whose
// path is the call's), so no token ever goes in a URL. A dropped stream comes back by
// itself with Last-Event-ID, which the engine prefers to the `after` of the first
// connect. The engine answers a refusal (not signed in, another call's cookie, no such
// call) with an HTTP error before the stream starts; EventSource gives up on it without
// saying why, so one plain GET asks for the reason.
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

// connectEvents(path, onEvent, { onStatus, after, desk }) -> { close() }
// onEvent(event) gets each event once, in id order; onStatus(s) hears "live",
// "reconnecting" and "refused: <why>" (then it stops: retrying would not help).
export function connectEvents(path, onEvent, opts = {}) {
  const stream = { last: opts.after || 0, closed: false, delay: RETRY_FIRST };
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

function openSource(path, stream, deliver, status) {
  if (stream.closed) return;
  const url = stream.last ? `${path}?after=${stream.last}` : path;
  const source = new EventSource(url);
  stream.source = source;
  source.onopen = () => status("live");
  source.onmessage = (m) => deliver(JSON.parse(m.data));
  source.onerror = async () => {
    if (stream.closed) return;
    status("reconnecting");
    if (source.readyState !== EventSource.CLOSED) return; // it comes back by itself
    // refused, or an answer that was no stream at all (429, 5xx, a proxy's page)
    const why = await refusal(url);
    if (stream.closed) return;
    if (why !== null) { status(`refused: ${why}`); return; }
    setTimeout(() => openSource(path, stream, deliver, status), stream.delay);
    stream.delay = Math.min(stream.delay * 2, RETRY_MAX);
  };
}

// Why the engine refuses this stream for good (4xx but 429), or null when trying
// again may help. Only the status and the problem body are read: a stream that opens
// after all is dropped at once.
async function refusal(url) {
  const abort = new AbortController();
  try {
    const res = await fetch(url, { signal: abort.signal, headers: { accept: "text/event-stream" } });
    if (res.status < 400 || res.status >= 500 || res.status === 429) return null;
    const body = await res.json().catch(() => ({}));
    return body.detail || `HTTP ${res.status}`;
  } catch {
    return null; // the engine is not there: try again
  } finally {
    abort.abort();
  }
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
