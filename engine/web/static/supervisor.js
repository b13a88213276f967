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

// -- the wallboard ---------------------------------------------------------------------

async function refresh() {
  clearTimeout(soon);
  soon = null;
  try {
    board = await api("/api/v1/wallboard");
    fetchedAt = performance.now();
    $("error").textContent = "";
    render();
  } catch (err) {
    $("error").textContent = `Wallboard: ${err.message}`;
  }
}

function refreshSoon() {
  if (!soon) soon = setTimeout(refresh, SOON_MS);
}

function render() {
  for (const a of board.agents) names.set(a.id, a.display_name || a.username);
  const t = board.totals;
  // the tiles are a live region: written only when they change, so a screen reader
  // hears a change, not every refresh
  const tiles = { "t-waiting": t.waiting, "t-available": t.agents.available ?? 0,
    "t-on_call": t.agents.on_call ?? 0, "t-live": t.live_calls, "t-risk": board.at_risk.length };
  for (const [id, value] of Object.entries(tiles)) {
    if ($(id).textContent !== String(value)) $(id).textContent = value;
  }
  $("sl-threshold").textContent = `(${span(board.threshold)})`;
  $("queues").innerHTML = board.queues.map((q) => `<tr data-queue="${esc(q.name)}">
    <td>${esc(q.name)}</td><td class="num" data-testid="queue-waiting">${q.waiting}</td>
    <td class="num" data-tick="${q.waiting ? q.longest_wait : ""}">${q.waiting ? span(q.longest_wait) : "–"}</td>
    <td class="num">${q.expected_wait === null ? "nobody staffed" : span(q.expected_wait)}</td>
    <td class="num">${q.service_level === null ? "–" : `${Math.round(q.service_level * 100)} %`}</td>
    <td class="num">${q.answered_today}</td><td class="num">${q.abandoned_today}</td></tr>`).join("")
    || '<tr><td colspan="7" class="note">No queues.</td></tr>';
  $("agents").innerHTML = board.agents.map((a) => `<tr data-agent="${esc(a.username)}">
    <td>${esc(a.display_name || a.username)}</td>
    <td><span class="state ${esc(a.presence)}" data-testid="agent-presence">${esc(a.presence.replace("_", " "))}</span>${a.absent ? ' <span class="note">(desk gone)</span>' : ""}</td>
    <td class="num" data-tick="${a.time_in_state ?? ""}">${span(a.time_in_state)}</td>
    <td>${a.call_id ? `<a href="/calls/${esc(a.call_id)}">${esc(a.call_id.slice(0, 8))}</a>` : ""}</td>
    <td>${mood(a.caller_mood)}</td></tr>`).join("")
    || '<tr><td colspan="5" class="note">No agents yet.</td></tr>';
  const disabled = monitoring ? "" : ' disabled title="listening is not available on this engine"';
  $("calls").innerHTML = board.calls.map((c) => `<tr data-call="${esc(c.id)}"${c.risk ? ' class="risky"' : ""}>
    <td><a href="/calls/${esc(c.id)}">${esc(c.id.slice(0, 8))}</a> <span class="note">${esc(c.channel)}</span></td>
    <td><span class="state ${esc(c.state)}">${esc(c.state)}</span>${c.queue && c.state === "queued" ? ` <span class="note">${esc(c.queue)}${c.position ? ` #${c.position}` : ""}</span>` : ""}</td>
    <td class="num" data-tick="${c.since}">${span(c.since)}</td>
    <td>${mood(c.mood)}</td>
    <td><span class="heat" role="meter" aria-valuemin="0" aria-valuemax="100" aria-valuenow="${Math.round(c.heat * 100)}" aria-label="heat"><i data-heat="${c.heat}"></i></span></td>
    <td>${esc(c.agent_id ? names.get(c.agent_id) || "" : "")}</td>
    <td>${c.risks.length ? `<ul class="risks" data-testid="risks">${c.risks.map((r) => `<li>${esc(r.reason)}</li>`).join("")}</ul>` : (c.escalated ? '<span class="note">escalated</span>' : "")}</td>
    <td><div class="supervise">${["listen", "whisper", "barge"].map((m) =>
      `<button class="quiet" data-monitor="${m}" data-testid="monitor-${m}"${disabled}>${m[0].toUpperCase() + m.slice(1)}</button>`).join("")}</div></td>
    </tr>`).join("") || '<tr><td colspan="8" class="note">No live calls.</td></tr>';
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

// one call monitored at a time: a mode on the same call changes the mode, on another
// call it leaves the first (monitor.js: monitor() gives a session with setMode and stop)
let session = null, sessionCall = null;

function showMonitoring() {
  const active = session && !session.stopped;
  $("monitoring").hidden = !active;
  $("monitoring-text").textContent = active ? `${session.mode} on call ${sessionCall.slice(0, 8)}` : "";
  for (const b of document.querySelectorAll("button[data-monitor]")) {
    const on = active && b.closest("tr").dataset.call === sessionCall && b.dataset.monitor === session.mode;
    b.setAttribute("aria-pressed", on ? "true" : "false");
  }
}

async function stopMonitoring() {
  const s = session;
  session = sessionCall = null;
  if (s) await s.stop();
  showMonitoring();
}

$("calls").addEventListener("click", async (e) => {
  const button = e.target.closest("button[data-monitor]");
  if (!button) return;
  const callId = button.closest("tr").dataset.call;
  const mode = button.dataset.monitor;
  try {
    if (!monitoring) throw new Error("listening is not available on this engine");
    if (session && !session.stopped && sessionCall === callId) {
      await session.setMode(mode);
    } else {
      await stopMonitoring();
      session = await monitoring.monitor(callId, mode, { onEnded: () => { session = sessionCall = null; showMonitoring(); } });
      sessionCall = callId;
    }
    $("error").textContent = "";
  } catch (err) {
    $("error").textContent = `${mode}: ${err.message}`;
  }
  showMonitoring();
});
$("monitor-stop").onclick = () => stopMonitoring().catch((err) => { $("error").textContent = err.message; });

// -- alerts ----------------------------------------------------------------------------

const alerts = new Map(); // id -> alert, the open ones

async function loadAlerts() {
  try {
    const { alerts: open } = await api("/api/v1/alerts?open=true&limit=200");
    alerts.clear();
    for (const a of open) alerts.set(a.id, a);
    renderAlerts();
  } catch (err) {
    $("error").textContent = `Alerts: ${err.message}`;
  }
}

function renderAlerts() {
  const list = [...alerts.values()].sort((a, b) => (a.raised_at < b.raised_at ? 1 : -1));
  $("no-alerts").hidden = list.length > 0;
  $("alerts").innerHTML = list.map((a) => `<li data-alert="${esc(a.id)}" data-testid="alert"${a.acked_at ? ' class="acked"' : ""}>
    <span class="grow">${esc(a.reason)} <span class="note">· call <a href="/calls/${esc(a.call_id)}">${esc(a.call_id.slice(0, 8))}</a> · ${new Date(a.raised_at).toLocaleTimeString()}</span></span>
    ${a.acked_at
      ? `<span class="note" data-testid="acked-by">acknowledged by ${esc(a.acked_by)}</span>`
      : `<button data-ack="${esc(a.id)}" data-testid="ack">Acknowledge</button>`}
  </li>`).join("");
}

$("alerts").addEventListener("click", async (e) => {
  const button = e.target.closest("button[data-ack]");
  if (!button) return;
  button.disabled = true;
  try {
    const acked = await api(`/api/v1/alerts/${encodeURIComponent(button.dataset.ack)}/ack`, { method: "POST" });
    alerts.set(acked.id, acked);
    renderAlerts();
  } catch (err) {
    button.disabled = false;
    $("error").textContent = `Acknowledge: ${err.message}`;
  }
});

function onEvent(ev) {
  if (ev.type === "supervisor.alert") {
    setTimeout(loadAlerts, SOON_MS); // stored as it is told: read it back
  } else if (ev.type === "alert.acknowledged" && alerts.has(ev.alert_id)) {
    alerts.set(ev.alert_id, { ...alerts.get(ev.alert_id), acked_at: ev.acked_at, acked_by: ev.by });
    renderAlerts();
  } else if (ev.type === "alert.closed") {
    alerts.delete(ev.alert_id);
    renderAlerts();
  }
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
      if (s === "live") { refresh(); loadAlerts(); } // what passed while it was away
    },
  });
  setInterval(refresh, REFRESH_MS);
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
