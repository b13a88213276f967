// One WebSocket event stream that resumes after a disconnect from the last event id.
export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

export function connectEvents(path, onEvent, opts = {}) {
  let last = 0;
  let closed = false;
  let delay = 500;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  function open() {
    const ws = new WebSocket(`${proto}://${location.host}${path}?after=${last}`);
    ws.onmessage = (m) => {
      const ev = JSON.parse(m.data);
      if (ev.id <= last) return;
      last = ev.id;
      delay = 500;
      onEvent(ev);
    };
    ws.onclose = (e) => {
      if (closed) return;
      if (e.code >= 4400 && e.code < 4500 && e.code !== 4429) {
        // refused (not signed in, another call's token, unknown call): retrying won't help
        if (opts.onStatus) opts.onStatus(`refused: ${e.reason}`);
        return;
      }
      if (opts.onStatus) opts.onStatus("reconnecting");
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 10000);
    };
    ws.onopen = () => opts.onStatus && opts.onStatus("live");
    return ws;
  }
  open();
  return { close() { closed = true; } };
}
