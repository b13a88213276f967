// The calls report (/reports): GET /api/v1/reports/calls drawn with plotly.js, which
// the engine serves itself (/static/vendor/plotly.min.js, from the plotly wheel).
import { esc } from "/static/events.js";

const $ = (id) => document.getElementById(id);
const form = $("filters");
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
    bar("avg non-talk (s)", report.rows.map((r) => r.avg_non_talk_seconds), "#4b5563"),
    bar("interruptions by caller", report.rows.map((r) => r.caller_interruptions), "#b45309"),
    bar("interruptions by agent", report.rows.map((r) => r.agent_interruptions), "#6d28d9"),
  ]);
  const names = Object.keys(report.total.categories);
  plot("chart-categories", names.length ? [{ type: "bar", orientation: "h", x: names.map((n) => report.total.categories[n]), y: names, marker: { color: "#047857" } }]
    : [], { margin: { t: 10, r: 10, b: 40, l: 140 }, xaxis: { title: { text: "calls" } }, yaxis: { type: "category", automargin: true }, annotations: names.length ? [] : [{ text: "no categories in this period", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] });
  table(report);
}

function table(report) {
  const cols = [["key", report.group], ["calls", "calls"], ["escalated", "escalated"], ["abandoned", "abandoned"],
    ["analysed", "analysed"], ["avg_handle_seconds", "avg handle s"], ["caller_talk_share", "caller talk share"],
    ["avg_non_talk_seconds", "avg non-talk s"], ["avg_longest_non_talk_seconds", "avg longest silence s"],
    ["caller_interruptions", "caller interruptions"], ["agent_interruptions", "agent interruptions"]];
  const t = document.querySelector('[data-testid="report-table"]');
  t.tHead.innerHTML = `<tr>${cols.map(([, h]) => `<th scope="col">${esc(h)}</th>`).join("")}</tr>`;
  const cell = (v) => (v == null ? "–" : typeof v === "number" && !Number.isInteger(v) ? v.toFixed(2) : v);
  t.tBodies[0].innerHTML = [...report.rows, report.total]
    .map((r) => `<tr>${cols.map(([k]) => `<td>${esc(cell(r[k]))}</td>`).join("")}</tr>`).join("");
}

async function load() {
  const group = form.group.value;
  $("csv").href = `/api/v1/reports/calls.csv?${params(group)}`;
  $("csv-calls").href = `/api/v1/reports/calls.csv?${params("call")}`;
  $("status").textContent = "loading…";
  const res = await fetch(`/api/v1/reports/calls?${params(group)}`);
  if (res.status === 401 || res.status === 403) {
    $("status").innerHTML = 'Reports are private: <a href="/agent">sign in</a> as a supervisor, then come back.';
    return;
  }
  const body = await res.json();
  if (!res.ok) {
    $("status").textContent = body.detail || `error ${res.status}`;
    return;
  }
  draw(body);
  $("status").textContent = `${body.total.calls} ended calls, ${body.total.analysed} analysed, by ${group}.`;
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  load();
});
defaults();
load();
