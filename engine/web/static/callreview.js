// An ended call, looked back on (the call page once the call is over): who took it,
// its disposition and notes, its analytics (GET /api/v1/calls/{id}/analytics) with the
// sentiment arc and handle time drawn by plotly.js (served by the engine, loaded only
// here), the recording, and the downloads the API has for it.
import { esc } from "/static/events.js";

let plotly = null;
function loadPlotly() {
  plotly ||= new Promise((resolve, reject) => {
    if (window.Plotly) return resolve(window.Plotly);
    // plotly's own styles from a file: the CSP refuses the inline ones it would add
    const css = document.createElement("link");
    Object.assign(css, { rel: "stylesheet", id: "plotly.js-style-global", className: "no-inline-styles", href: "/static/plotly-csp.css" });
    // there already: plotly would add its maps' styles inline (no maps here)
    const maps = Object.assign(document.createElement("meta"), { name: "plotly-maps-css", id: "9f215cf04c5486422605d13261cb87401f4e7763b6296af81e98efbc0130da53", content: "none" });
    document.head.append(css, maps);
    const s = document.createElement("script");
    s.src = "/static/vendor/plotly.min.js";
    s.onload = () => resolve(window.Plotly);
    s.onerror = () => reject(new Error("the chart library did not load"));
    document.head.append(s);
  });
  return plotly;
}

const SIDE_COLOURS = { caller: "#b91c1c", agent: "#1d4ed8", bot: "#6d28d9" };
const PARTS = [["queue", "#b45309"], ["bot", "#6d28d9"], ["agent", "#1d4ed8"], ["hold", "#b91c1c"], ["wrap_up", "#047857"]];
const secs = (s) => (s == null ? "–" : s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${s.toFixed(1)} s`);

export const REVIEW_PANELS = `
  <section class="card" data-testid="review">
    <h3>After the call</h3>
    <dl class="preview" data-testid="review-facts"></dl>
    <div data-testid="review-notes"></div>
  </section>
  <section class="card">
    <h3>Recording</h3>
    <div data-testid="recording"></div>
    <h3>Downloads</h3>
    <ul class="row plain" data-testid="downloads"></ul>
  </section>
  <section class="card">
    <h3>Analytics</h3>
    <p class="note" role="status" aria-live="polite" data-testid="analytics-status">loading…</p>
    <dl class="preview" data-testid="analytics-figures"></dl>
    <h4>Handle time</h4>
    <dl class="preview" data-testid="handle-parts"></dl>
    <h4>Sentiment</h4>
    <dl class="preview" data-testid="sentiment-text"></dl>
    <div data-testid="categories" class="row"></div>
    <ul class="note" data-testid="interruptions"></ul>
  </section>
  <section class="card">
    <h3>Sentiment over the call</h3>
    <div class="plot" data-testid="sentiment-chart" role="img" aria-label="Valence of each side over the call"></div>
    <h3>Handle time</h3>
    <div class="plot short" data-testid="handle-chart" role="img" aria-label="Handle time split: queue, bot, agent, hold, wrap-up"></div>
  </section>`;

// status 0: no answer; body null: not JSON (a proxy's error page)
async function analytics(id) {
  try {
    const res = await fetch(`/api/v1/calls/${id}/analytics`);
    let body = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    return { ok: res.ok && body != null, status: res.status, body };
  } catch {
    return { ok: false, status: 0, body: null };
  }
}

export async function showReview(root, call) {
  const part = (name) => root.querySelector(`[data-testid="${name}"]`);
  const id = encodeURIComponent(call.id);
  part("review-notes").innerHTML = call.notes.length
    ? `<ul>${call.notes.map((n) => `<li><b>${esc(n.author)}</b> (${esc(n.kind.replace("_", "-"))}${n.disposition ? `, ${esc(n.disposition)}` : ""})${n.text ? `: ${esc(n.text)}` : ""}</li>`).join("")}</ul>`
    : '<p class="note">No notes.</p>';
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "metadata";
  audio.src = `/api/v1/calls/${id}/recording.wav`;
  audio.dataset.testid = "recording-player";
  audio.onerror = () => {
    part("recording").innerHTML = '<p class="note" data-testid="no-recording">This call was not recorded.</p>';
    part("downloads").querySelector('[data-kind="wav"]')?.remove();
  };
  part("recording").replaceChildren(audio);
  const links = [
    ["txt", `/api/v1/calls/${id}/transcript.txt`, "Transcript (text)"],
    ["vtt", `/api/v1/calls/${id}/transcript.vtt`, "Transcript (WebVTT)"],
    ["json", `/api/v1/calls/${id}/transcript.json`, "Transcript (JSON)"],
    ["analytics", `/api/v1/calls/${id}/analytics`, "Analytics (JSON)"],
    ["wav", `/api/v1/calls/${id}/recording.wav`, "Recording (WAV)"],
  ];
  part("downloads").innerHTML = links.map(([k, href, label]) => `<li data-kind="${k}"><a href="${href}" download>${label}</a></li>`).join("");

  // once more after a failure: at hang-up the analyst may be storing the same call
  // (a 503 from the database), or the network blinked
  let res = await analytics(id);
  if (res.status >= 500 || res.status === 0) {
    await new Promise((r) => setTimeout(r, 1000));
    res = await analytics(id);
  }
  const a = res.body || {};
  const facts = [
    ["Agent", a.agent || "none (the virtual agent or nobody)"],
    ["Queue", call.queue || "–"],
    ["Disposition", call.disposition || "none given"],
    ["Ended", `${call.ended_at ? new Date(call.ended_at).toLocaleString() : "–"}${call.end_reason ? ` (${call.end_reason.replace("_", " ")})` : ""}`],
  ];
  part("review-facts").innerHTML = facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd data-testid="review-${k.toLowerCase()}">${esc(v)}</dd>`).join("");
  if (!res.ok) {
    part("analytics-status").textContent = a.detail || `analytics: error ${res.status || "(no answer)"}`;
    return;
  }
  const nt = a.non_talk; // null for a chat: typed lines take no time
  part("analytics-status").textContent = `Handle time ${secs(a.handle.total)}; ${a.interruptions.length} interruption(s)${nt ? `; longest dead air ${secs(nt.longest_seconds)}` : ""}.`;
  const talk = Object.entries(a.talk).map(([side, t]) => [`${side} ${t.talk_seconds == null ? "turns" : "talk"}`,
    t.talk_seconds == null ? `${t.turns}` : `${secs(t.talk_seconds)}${t.talk_ratio != null ? ` · talk/listen ${t.talk_ratio.toFixed(2)}` : ""}`]);
  const figures = [...talk];
  if (nt) figures.push(["Dead air", `${secs(nt.total_seconds)} (longest ${secs(nt.longest_seconds)}${nt.longest_at != null ? ` at ${nt.longest_at.toFixed(1)} s` : ""}; queue and hold not counted)`]);
  const list = (name, rows) => { part(name).innerHTML = rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join(""); };
  list("analytics-figures", figures);
  list("handle-parts", [...PARTS.map(([p]) => [p.replace("_", "-"), secs(a.handle[p])]), ["total", secs(a.handle.total)]]);
  const val = (v) => (v == null ? "–" : v.toFixed(2));
  const arcs = Object.entries(a.sentiment);
  list("sentiment-text", arcs.length ? arcs.map(([side, s]) => [side, `valence ${val(s.start_valence)} at the start, ${val(s.end_valence)} at the end, mean ${val(s.mean_valence)}, change ${s.change == null ? "–" : (s.change > 0 ? "+" : "") + s.change.toFixed(2)}`])
    : [["none", "no emotion samples"]]);
  part("categories").innerHTML = a.categories.length
    ? a.categories.map((c) => `<span class="tag" data-testid="category"><b>${esc(c.name)}</b> ${c.count}×</span>`).join("")
    : '<span class="note">No categories.</span>';
  part("interruptions").innerHTML = a.interruptions.map((i) => `<li>${i.at.toFixed(1)} s: ${esc(i.by)} cut into ${esc(i.of)} (${i.overlap_seconds.toFixed(1)} s over)</li>`).join("");

  let Plotly;
  try {
    Plotly = await loadPlotly();
  } catch (e) {
    part("analytics-status").textContent += ` ${e.message}`;
    return;
  }
  const layout = { margin: { t: 10, r: 10, b: 40, l: 50 }, font: { family: "system-ui, sans-serif", size: 13, color: "#1d2330" }, legend: { orientation: "h" } };
  const config = { displaylogo: false, responsive: true, displayModeBar: false }; // its styles are inline
  const lines = Object.entries(a.sentiment).map(([side, arc]) => ({
    type: "scatter", mode: "lines+markers", name: side, x: arc.points.map((p) => p.at), y: arc.points.map((p) => p.valence),
    text: arc.points.map((p) => p.label), hovertemplate: "%{x:.1f} s: %{text} (valence %{y:.2f})<extra></extra>",
    line: { color: SIDE_COLOURS[side] || "#374151" },
  }));
  Plotly.react(part("sentiment-chart"), lines, { ...layout, height: 260, xaxis: { title: { text: "seconds into the call" } }, yaxis: { title: { text: "valence" }, range: [-1.05, 1.05] } }, config);
  Plotly.react(part("handle-chart"), PARTS.map(([p, color]) => ({ type: "bar", orientation: "h", name: p.replace("_", "-"), x: [a.handle[p]], y: ["seconds"], marker: { color } })),
    { ...layout, height: 170, barmode: "stack", yaxis: { showticklabels: false }, legend: { orientation: "h", y: 1.3 }, margin: { t: 40, r: 10, b: 30, l: 20 } }, config);
}
