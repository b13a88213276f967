// The supervisor console: the wallboard (queues, agents, live calls at risk first) and
// the alerts kept by the engine, acknowledged here. The snapshot comes from
// GET /api/v1/wallboard; events (the shared event client) ask for a fresh one at once,
// a timer every few seconds in case, and times tick here between the two.
import { connectEvents, esc } from "/static/events.js";

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 5000; // the snapshot again even when no event came (timers, waits)
const SOON_MS = 250; // events come in bursts: one fetch for a burst
// events that change what the wallboard shows
const BOARD_EVENTS = new Set([
  "call.started", "call.state_changed", "call.ended", "queue.updated", "agent.presence_changed",
  "call.offered", "call.offer_withdrawn", "call.transferred", "call.wrapped_up",
  "emotion.updated", "escalation.raised",
]);

let board = null; // the last snapshot
let fetchedAt = 0; // performance.now() when it came
let soon = null;
let asked = 0; // snapshots asked for, numbered
let shown = 0; // the number of the one shown: an older answer landing later is dropped
const names = new Map(); // agent id -> name shown

// Listen / whisper / barge come from /static/monitor.js when the engine has it; the
// page works without it (the buttons say so).
const monitoring = await import("/static/monitor.js").catch(() => null);

async function api(path, { method = "GET" } = {}) {
  // X-Requested-With: the engine takes changes made with the sign-in cookie only with it
  const res = await fetch(path, { method, headers: { "x-requested-with": "ccengine" } });
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw Object.assign(new Error(data?.detail || `HTTP ${res.status}`), { status: res.status });
  return data;
}

function span(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function mood(label) {
  return label ? `<span class="badge ${esc(label)}">${esc(label)}</span>` : "";
}

// a short message for screen readers (the one polite status region)
function say(text) {
  $("status").textContent = text;
}

// -- rows kept in place ----------------------------------------------------------------
// A refresh writes only the cells whose markup changed, in rows found by their key: a
// keyboard user's focus on a button (Listen, Acknowledge) stays where it is. Should a
// row move or its cell change anyway, the focus goes back to the same button, found by
// its data-* attributes.

function focused() {
  const el = document.activeElement;
  const row = el?.closest?.("[data-key]");
  if (!row || !el.matches("button")) return null;
  const attrs = [...el.attributes].filter((a) => a.name.startsWith("data-") && a.name !== "data-testid");
  return { key: row.dataset.key, list: row.parentElement, attrs };
}

function refocus(was) {
  if (!was || document.activeElement?.matches?.("button")) return;
  const row = [...was.list.children].find((r) => r.dataset.key === was.key);
  const sel = `button${was.attrs.map((a) => `[${a.name}="${CSS.escape(a.value)}"]`).join("")}`;
  row?.querySelector(sel)?.focus();
}

// ``items``: [{key, attrs: {name: value}, cells: [html]}], in order; ``tag``: the row's
// element and ``cell`` its cells' (null: the row holds the one html); ``empty``: the
// markup when there are none.
function patch(list, items, { tag = "tr", cell = "td", classes = [], empty = "" } = {}) {
  const was = focused();
  if (!items.length) {
    if (list.dataset.empty !== "1") { list.innerHTML = empty; list.dataset.empty = "1"; }
    refocus(was);
    return;
  }
  if (list.dataset.empty === "1") { list.innerHTML = ""; delete list.dataset.empty; }
  const rows = new Map([...list.children].map((r) => [r.dataset.key, r]));
  items.forEach((item, i) => {
    let row = rows.get(item.key);
    rows.delete(item.key);
    if (!row) {
      row = document.createElement(tag);
      row.dataset.key = item.key;
    }
    for (const [name, value] of Object.entries(item.attrs || {})) {
      if (value === null) row.removeAttribute(name);
      else if (row.getAttribute(name) !== value) row.setAttribute(name, value);
    }
    if (cell === null) {
      if (row._html !== item.cells[0]) { row.innerHTML = item.cells[0]; row._html = item.cells[0]; }
    } else {
      item.cells.forEach((html, c) => {
        let td = row.children[c];
        if (!td) {
          td = document.createElement(cell);
          if (classes[c]) td.className = classes[c];
          row.append(td);
        }
        if (td._html !== html) { td.innerHTML = html; td._html = html; }
      });
    }
    if (list.children[i] !== row) list.insertBefore(row, list.children[i] || null);
  });
  for (const gone of rows.values()) gone.remove();
  refocus(was);
}

// -- the wallboard ---------------------------------------------------------------------

async function refresh() {
  clearTimeout(soon);
  soon = null;
  const mine = ++asked;
  try {
    const next = await api("/api/v1/wallboard");
    if (mine < shown) return; // a newer snapshot is shown already
    shown = mine;
    board = next;
    fetchedAt = performance.now();
    $("error").textContent = "";
    render();
  } catch (err) {
    if (mine >= shown) $("error").textContent = `Wallboard: ${err.message}`;
  }
}

function refreshSoon() {
  if (!soon) soon = setTimeout(refresh, SOON_MS);
}

const QUEUE_CELLS = ["", "num", "num", "num", "num", "num", "num", "num"];
const CALL_CELLS = ["", "", "num", "", "", "", "", ""];
const AGENT_CELLS = ["", "", "num", "", ""];

function render() {
  for (const a of board.agents) names.set(a.id, a.display_name || a.username);
  const t = board.totals;
  // each tile is a live region: written only when it changes, so a screen reader hears
  // a change, not every refresh
  const tiles = { "t-waiting": t.waiting, "t-available": t.agents.available ?? 0,
    "t-on_call": t.agents.on_call ?? 0, "t-live": t.live_calls, "t-risk": board.at_risk.length };
  for (const [id, value] of Object.entries(tiles)) {
    if ($(id).textContent !== String(value)) $(id).textContent = value;
  }
  $("sl-threshold").textContent = `(${span(board.threshold)})`;
  patch($("queues"), board.queues.map((q) => ({
    key: q.name,
    attrs: { "data-queue": q.name },
    cells: [
      esc(q.name),
      `<span data-testid="queue-waiting">${q.waiting}</span>`,
      `<span data-tick="${q.waiting ? q.longest_wait : ""}">${q.waiting ? span(q.longest_wait) : "–"}</span>`,
      `<span data-testid="queue-expected">${q.expected_wait === null ? "nobody staffed" : span(q.expected_wait)}</span>`,
      q.service_level === null ? "–" : `${Math.round(q.service_level * 100)} %`,
      String(q.answered_today),
      `<span data-testid="queue-abandoned">${q.abandoned_today}</span>`,
      `<span data-testid="queue-callbacks">${q.callbacks_today}</span>`,
    ],
  })), { classes: QUEUE_CELLS, empty: '<tr><td colspan="8" class="note">No queues.</td></tr>' });
  patch($("agents"), board.agents.map((a) => ({
    key: a.id,
    attrs: { "data-agent": a.username },
    cells: [
      esc(a.display_name || a.username),
      `<span class="state ${esc(a.presence)}" data-testid="agent-presence">${esc(a.presence.replace("_", " "))}</span>${a.absent ? ' <span class="note">(desk gone)</span>' : ""}`,
      `<span data-tick="${a.time_in_state ?? ""}">${span(a.time_in_state)}</span>`,
      a.call_id ? `<a href="/calls/${esc(a.call_id)}">${esc(a.call_id.slice(0, 8))}</a>` : "",
      mood(a.caller_mood),
    ],
  })), { classes: AGENT_CELLS, empty: '<tr><td colspan="5" class="note">No agents yet.</td></tr>' });
  const disabled = monitoring ? "" : ' disabled title="listening is not available on this engine"';
  patch($("calls"), board.calls.map((c) => ({
    key: c.id,
    attrs: { "data-call": c.id, class: c.risk ? "risky" : null },
    cells: [
      `<a href="/calls/${esc(c.id)}">${esc(c.id.slice(0, 8))}</a> <span class="note">${esc(c.channel)}</span>`,
      `<span class="state ${esc(c.state)}">${esc(c.state)}</span>${c.queue && c.state === "queued" ? ` <span class="note">${esc(c.queue)}${c.position ? ` #${c.position}` : ""}</span>` : ""}`,
      `<span data-tick="${c.since}">${span(c.since)}</span>`,
      mood(c.mood),
      `<span class="heat" role="meter" aria-valuemin="0" aria-valuemax="100" aria-valuenow="${Math.round(c.heat * 100)}" aria-label="heat"><i data-heat="${c.heat}"></i></span>`,
      esc(c.agent_id ? names.get(c.agent_id) || "" : ""),
      c.risks.length ? `<ul class="risks" data-testid="risks">${c.risks.map((r) => `<li>${esc(r.reason)}</li>`).join("")}</ul>` : (c.escalated ? '<span class="note">escalated</span>' : ""),
      `<div class="supervise">${["listen", "whisper", "barge"].map((m) =>
        `<button class="quiet" data-monitor="${m}" data-testid="monitor-${m}"${disabled}>${m[0].toUpperCase() + m.slice(1)}</button>`).join("")}</div>`,
    ],
  })), { classes: CALL_CELLS, empty: '<tr><td colspan="8" class="note">No live calls.</td></tr>' });
  // through the CSSOM: the engine's CSP refuses style attributes in markup
  for (const bar of document.querySelectorAll("i[data-heat]")) {
    const heat = Number(bar.dataset.heat);
    bar.style.width = `${Math.round(heat * 100)}%`;
    bar.style.background = `hsl(${Math.round(120 - 120 * heat)} 75% 30%)`;
  }
  showMonitoring();
  tick();
}

// the times shown move on between snapshots, from the snapshot's figures
function tick() {
  if (!board) return;
  const gone = (performance.now() - fetchedAt) / 1000;
  for (const el of document.querySelectorAll("[data-tick]")) {
    if (el.dataset.tick !== "") el.textContent = span(Number(el.dataset.tick) + gone);
  }
}

// -- monitoring ------------------------------------------------------------------------
// One call monitored at a time: a mode on the same call changes the mode, on another
// call it leaves the first (monitor.js: monitor() gives a session with setMode and
// stop). Clicks run one after another (a double-click opened two sessions), and the
// session ends with its call or when the engine ends my leg.

let session = null, sessionCall = null;
let chain = Promise.resolve(); // the monitoring steps, in order
const ended = new Set(); // calls seen ending (bounded): one that ended while joining

function serial(step) {
  chain = chain.then(step).catch((err) => { $("error").textContent = err.message; });
  return chain;
}

function showMonitoring() {
  const active = session && !session.stopped;
  $("monitoring").hidden = !active;
  $("monitoring-text").textContent = active ? `${session.mode} on call ${sessionCall.slice(0, 8)}` : "";
  for (const b of document.querySelectorAll("button[data-monitor]")) {
    const on = active && b.closest("tr").dataset.call === sessionCall && b.dataset.monitor === session.mode;
    b.setAttribute("aria-pressed", on ? "true" : "false");
  }
}

async function stopMonitoring(why = "Monitoring stopped") {
  const s = session;
  session = sessionCall = null;
  if (s) {
    await s.stop();
    say(why);
  }
  showMonitoring();
}

// the engine ended the leg (or the call): nothing to tell it (monitor.js's close(),
// where it has one; stop() otherwise, whose DELETE then finds no leg)
async function endedByEngine(why) {
  const s = session;
  session = sessionCall = null;
  if (s) {
    if (typeof s.close === "function") s.close();
    else await s.stop();
    say(why);
  }
  showMonitoring();
}

$("calls").addEventListener("click", (e) => {
  const button = e.target.closest("button[data-monitor]");
  if (!button) return;
  const callId = button.closest("tr").dataset.call;
  const mode = button.dataset.monitor;
  serial(async () => {
    try {
      if (!monitoring) throw new Error("listening is not available on this engine");
      if (session && !session.stopped && sessionCall === callId) {
        if (session.mode !== mode) await session.setMode(mode);
      } else {
        await stopMonitoring();
        const s = await monitoring.monitor(callId, mode, {
          onEnded: () => { if (session === s) serial(() => endedByEngine("Monitoring stopped: disconnected")); },
        });
        session = s;
        sessionCall = callId;
        if (ended.has(callId)) {
          await endedByEngine("Monitoring stopped: the call ended");
          return;
        }
      }
      say(`${session.mode} on call ${callId.slice(0, 8)}`);
      $("error").textContent = "";
    } catch (err) {
      $("error").textContent = `${mode}: ${err.message}`;
    }
    showMonitoring();
  });
});
$("monitor-stop").onclick = () => serial(() => stopMonitoring());

function onMonitorEvent(ev) {
  if (ev.type === "call.ended") {
    ended.add(ev.call_id);
    if (ended.size > 500) ended.delete(ended.values().next().value);
    if (ev.call_id === sessionCall) serial(() => endedByEngine("Monitoring stopped: the call ended"));
  } else if (ev.type === "supervisor.monitor_stopped" && session && ev.leg_id === session.legId) {
    serial(() => endedByEngine(`Monitoring stopped: ${String(ev.reason).replaceAll("_", " ")}`));
  }
}

// -- alerts ----------------------------------------------------------------------------
// Open alerts, from GET /alerts (at start, every few seconds, on reconnecting) and
// straight from the ``supervisor.alert`` event. A load or an acknowledgement answered
// late never brings back an alert closed meanwhile, nor drops one told after it was
// asked for.

const alerts = new Map(); // id -> alert, the open ones
const closed = new Set(); // ids closed (bounded)
let told = 0; // events taken, numbered: an alert told after a load was asked is kept
let loadsAsked = 0, loadShown = 0;
let alertsSoon = null;

function close(id) {
  closed.add(id);
  if (closed.size > 1000) closed.delete(closed.values().next().value);
  alerts.delete(id);
}

async function loadAlerts() {
  clearTimeout(alertsSoon);
  alertsSoon = null;
  const mine = ++loadsAsked;
  const since = told;
  try {
    const { alerts: open } = await api("/api/v1/alerts?open=true&limit=200");
    if (mine < loadShown) return; // a newer load is shown already
    loadShown = mine;
    const kept = [...alerts.values()].filter((a) => a.told > since);
    alerts.clear();
    for (const a of [...kept, ...open]) { // the stored copy last: it is the truth
      if (!a.closed_at && !closed.has(a.id)) alerts.set(a.id, { ...alerts.get(a.id), ...a });
    }
    renderAlerts();
  } catch (err) {
    $("error").textContent = `Alerts: ${err.message}`;
  }
}

function loadAlertsSoon() {
  if (!alertsSoon) alertsSoon = setTimeout(loadAlerts, SOON_MS);
}

function renderAlerts() {
  const list = [...alerts.values()].sort((a, b) => (a.raised_at < b.raised_at ? 1 : -1));
  $("no-alerts").hidden = list.length > 0;
  patch($("alerts"), list.map((a) => ({
    key: a.id,
    attrs: { "data-alert": a.id, "data-testid": "alert", class: a.acked_at ? "acked" : null },
    cells: [`<span class="grow">${esc(a.reason)} <span class="note">· call <a href="/calls/${esc(a.call_id)}">${esc(a.call_id.slice(0, 8))}</a> · ${new Date(a.raised_at).toLocaleTimeString()}</span></span>
    ${a.acked_at
      ? `<span class="note" data-testid="acked-by">acknowledged by ${esc(a.acked_by)}</span>`
      : `<button data-ack="${esc(a.id)}" data-testid="ack">Acknowledge</button>`}`],
  })), { tag: "li", cell: null });
}

$("alerts").addEventListener("click", async (e) => {
  const button = e.target.closest("button[data-ack]");
  if (!button) return;
  button.disabled = true;
  try {
    const acked = await api(`/api/v1/alerts/${encodeURIComponent(button.dataset.ack)}/ack`, { method: "POST" });
    // closed while the answer came: it stays closed
    if (alerts.has(acked.id) && !acked.closed_at && !closed.has(acked.id)) {
      alerts.set(acked.id, { ...alerts.get(acked.id), ...acked });
      renderAlerts();
    }
  } catch (err) {
    button.disabled = false;
    $("error").textContent = `Acknowledge: ${err.message}`;
  }
});

function onAlertEvent(ev) {
  if (ev.type === "supervisor.alert") {
    const id = ev.escalation_id; // the alert's id is its escalation's
    if (closed.has(id) || alerts.has(id)) return;
    alerts.set(id, { id, call_id: ev.call_id, reason: ev.reason, priority: ev.priority,
      raised_at: ev.time, acked_at: null, acked_by: null, closed_at: null, told: ++told });
    renderAlerts();
    say(`New alert: ${ev.reason}`);
  } else if (ev.type === "alert.acknowledged") {
    if (alerts.has(ev.alert_id)) {
      alerts.set(ev.alert_id, { ...alerts.get(ev.alert_id), acked_at: ev.acked_at, acked_by: ev.by });
      renderAlerts();
    } else if (!closed.has(ev.alert_id)) {
      loadAlertsSoon(); // one this page has not seen yet
    }
  } else if (ev.type === "alert.closed") {
    close(ev.alert_id);
    renderAlerts();
  }
}

function onEvent(ev) {
  onAlertEvent(ev);
  onMonitorEvent(ev);
  if (BOARD_EVENTS.has(ev.type)) refreshSoon();
}

// -- signing in ------------------------------------------------------------------------

async function start(me) {
  if (!["supervisor", "admin"].includes(me.role)) {
    $("error").textContent = "The wallboard is for supervisors and admins.";
    return;
  }
  $("login").hidden = true;
  $("board").hidden = false;
  $("who").textContent = `${me.display_name || me.username} (${me.role})`;
  $("sign-out").hidden = false;
  await Promise.all([refresh(), loadAlerts()]);
  connectEvents("/api/v1/events", onEvent, {
    onStatus: (s) => {
      $("stream").textContent = s === "live" ? "live" : s;
      if (s === "live") { refreshSoon(); loadAlertsSoon(); } // what passed while it was away
    },
  });
  setInterval(() => { refresh(); loadAlerts(); }, REFRESH_MS);
  setInterval(tick, 1000);
}

$("login-form").onsubmit = async (e) => {
  e.preventDefault();
  const f = new FormData(e.target);
  try {
    const res = await fetch("/api/v1/auth/login", {
      method: "POST",
      headers: { "content-type": "application/json", "x-requested-with": "ccengine" },
      body: JSON.stringify({ username: f.get("username"), password: f.get("password") }),
    });
    const data = await res.json().catch(() => null);
    if (!res.ok) throw new Error(data?.detail || `HTTP ${res.status}`);
    await start(data.user);
  } catch (err) {
    $("login-error").textContent = err.message;
  }
};

$("sign-out").onclick = async () => {
  await api("/api/v1/auth/logout", { method: "POST" }).catch(() => null);
  location.reload();
};

const me = await api("/api/v1/auth/me").catch(() => null);
if (me) await start(me);
else $("login").hidden = false;
