// The calls report (/reports): GET /api/v1/reports/calls drawn with plotly.js, which
// the engine serves itself (/static/vendor/plotly.min.js, from the plotly wheel).
import { esc } from "/static/events.js";

const $ = (id) => document.getElementById(id);
const form = $("filters");
// the charts need plotly.js; without it (not installed, blocked) the table still shows
const Plotly = window.Plotly;
const PARTS = ["queue", "bot", "agent", "hold", "wrap_up"];
// colours with text-level contrast on white where they label anything (>= 4.5:1)
const COLOURS = { queue: "#b45309", bot: "#6d28d9", agent: "#1d4ed8", hold: "#b91c1c", wrap_up: "#047857" };
const LAYOUT = {
  margin: { t: 10, r: 10, b: 60, l: 50 }, height: 300, barmode: "group",
  font: { family: "system-ui, sans-serif", size: 13, color: "#1d2330" },
  legend: { orientation: "h", y: -0.25 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
  // keys are names (queues, agents) or days: one bar each, never a time axis
  xaxis: { type: "category", automargin: true },
};
// no mode bar: its per-chart styles are inline, which the pages' CSP refuses
const CONFIG = { displaylogo: false, responsive: true, displayModeBar: false };

const day = (d) => d.toISOString().slice(0, 10);
function defaults() {
  const to = new Date();
  const from = new Date(to.getTime() - 6 * 86400e3);
  form.from.value ||= day(from);
  form.to.value ||= day(to);
}

function params(group) {
  // the "to" day is included: the period ends at the start of the next day (UTC)
  const to = new Date(`${form.to.value}T00:00:00Z`);
  to.setUTCDate(to.getUTCDate() + 1);
  return new URLSearchParams({ group, from: `${form.from.value}T00:00:00Z`, to: to.toISOString() });
}

function plot(id, traces, layout = {}) {
  Plotly.react($(id), traces, { ...LAYOUT, ...layout }, CONFIG);
}

function draw(report) {
  table(report); // first: it is the figures for everyone, charts or not
  if (!Plotly) return false;
  const keys = report.rows.map((r) => r.key);
  const bar = (name, ys, color) => ({ type: "bar", name, x: keys, y: ys, marker: { color } });
  plot("chart-volume", [
    bar("calls", report.rows.map((r) => r.calls), "#1d4ed8"),
    bar("escalated", report.rows.map((r) => r.escalated), "#b45309"),
    bar("abandoned", report.rows.map((r) => r.abandoned), "#b91c1c"),
  ]);
  plot("chart-handle", PARTS.map((p) => bar(p.replace("_", "-"), report.rows.map((r) => r.avg_split_seconds[p] ?? 0), COLOURS[p])), { barmode: "stack" });
  plot("chart-talk", [
    bar("caller talk share (%)", report.rows.map((r) => (r.caller_talk_share == null ? null : Math.round(r.caller_talk_share * 100))), "#1d4ed8"),
    bar("avg dead air (s)", report.rows.map((r) => r.avg_non_talk_seconds), "#4b5563"),
    bar("interruptions by caller", report.rows.map((r) => r.caller_interruptions), "#b45309"),
    bar("interruptions by agent", report.rows.map((r) => r.agent_interruptions), "#6d28d9"),
  ]);
  const names = Object.keys(report.total.categories);
  plot("chart-categories", names.length ? [{ type: "bar", orientation: "h", x: names.map((n) => report.total.categories[n]), y: names, marker: { color: "#047857" } }]
    : [], { margin: { t: 10, r: 10, b: 40, l: 140 }, xaxis: { title: { text: "calls" } }, yaxis: { type: "category", automargin: true }, annotations: names.length ? [] : [{ text: "no categories in this period", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] });
  return true;
}

function table(report) {
  // every figure the charts draw is here as text too: the handle time's parts and the
  // calls in each category (a chart is no use to a screen reader)
  const get = (k) => (r) => r[k];
  const names = Object.keys(report.total.categories);
  const cols = [[get("key"), report.group === "day" ? "day (UTC)" : report.group], [get("calls"), "calls"],
    [get("escalated"), "escalated"], [get("abandoned"), "abandoned"], [get("callbacks"), "callbacks"],
    [get("analysed"), "analysed"], [get("avg_handle_seconds"), "avg handle s"],
    ...PARTS.map((p) => [(r) => r.avg_split_seconds[p], `avg ${p.replace("_", "-")} s`]),
    [get("caller_talk_share"), "caller talk share"],
    [get("avg_non_talk_seconds"), "avg dead air s"], [get("avg_longest_non_talk_seconds"), "avg longest dead air s"],
    [get("caller_interruptions"), "caller interruptions"], [get("agent_interruptions"), "agent interruptions"],
    ...names.map((n) => [(r) => r.categories[n] ?? 0, `calls: ${n}`])];
  const t = document.querySelector('[data-testid="report-table"]');
  t.tHead.innerHTML = `<tr>${cols.map(([, h]) => `<th scope="col">${esc(h)}</th>`).join("")}</tr>`;
  const cell = (v) => (v == null ? "–" : typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : v);
  t.tBodies[0].innerHTML = [...report.rows, report.total]
    .map((r) => `<tr>${cols.map(([f]) => `<td>${esc(cell(f(r)))}</td>`).join("")}</tr>`).join("");
}

// a problem body's detail, or the status: a proxy's HTML error page is no JSON
async function problem(res) {
  try {
    return (await res.json()).detail || `error ${res.status}`;
  } catch {
    return `error ${res.status}`;
  }
}

async function load() {
  const group = form.group.value;
  $("csv").href = `/api/v1/reports/calls.csv?${params(group)}`;
  $("csv-calls").href = `/api/v1/reports/calls.csv?${params("call")}`;
  $("status").textContent = "loading…";
  let res, body;
  try {
    res = await fetch(`/api/v1/reports/calls?${params(group)}`);
    if (res.status === 401 || res.status === 403) {
      $("status").innerHTML = 'Reports are for supervisors and admins: <a href="/agent">sign in</a> as one, then come back.';
      return;
    }
    if (!res.ok) {
      $("status").textContent = await problem(res);
      return;
    }
    body = await res.json();
  } catch (e) {
    $("status").textContent = `The report did not load (${e.message}).`;
    return;
  }
  const charted = draw(body);
  $("status").textContent = `${body.total.calls} ended calls, ${body.total.analysed} analysed, by ${group}.`
    + (charted ? "" : " The charts did not load; the figures are in the table below.");
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  load();
});
defaults();
load();
