import { connectEvents, esc } from "/static/events.js";

const $ = (id) => document.getElementById(id);
const callId = location.pathname.split("/").pop();
const samples = new Map(); // utterance_id -> emotion sample

function setState(s, reason) {
  $("state").textContent = reason ? `${s} (${reason})` : s;
  $("state").className = `state ${s}`;
}

function line(key, speaker, start, text, final) {
  let el = document.querySelector(`[data-key="${key}"]`);
  if (!el) {
    el = document.createElement("div");
    el.dataset.key = key;
    $("transcript").append(el);
  }
  el.className = `line ${final ? "final" : "partial"}`;
  el.innerHTML = `<span class="t">${start.toFixed(1)}s</span><span class="t">${esc(speaker)}</span><span class="text">${esc(text)}</span>`;
  $("transcript").scrollTop = $("transcript").scrollHeight;
}

function emotion(s) {
  samples.set(s.utterance_id, s);
  $("emotion").innerHTML = `<span class="badge ${esc(s.call_label)}" data-testid="call-emotion">${esc(s.call_label)}</span>
    <span class="note">last utterance: ${esc(s.label)} · arousal ${s.arousal.toFixed(2)} · valence ${s.valence.toFixed(2)} · trend ${s.trend.toFixed(2)}</span>`;
  const all = [...samples.values()].sort((a, b) => a.at - b.at);
  const end = Math.max(10, ...all.map((x) => x.at));
  const x = (t) => (t / end) * 590 + 5;
  const y = (v) => 60 - v * 55;
  const path = all.map((p, i) => `${i ? "L" : "M"}${x(p.at).toFixed(1)},${y(p.trend).toFixed(1)}`).join(" ");
  $("chart").innerHTML = `<line x1="0" x2="600" y1="60" y2="60" stroke="#ddd"/>
    <path d="${path}" fill="none" stroke="#2f6fed" stroke-width="2"/>` +
    all.map((p) => `<circle cx="${x(p.at)}" cy="${y(p.valence)}" r="4" fill="var(--${p.label})"><title>${p.label} at ${p.at.toFixed(1)}s</title></circle>`).join("");
  $("timeline").innerHTML = all.map((p) => `<span class="badge ${esc(p.label)}" title="${p.at.toFixed(1)}s">${esc(p.label)}</span>`).join(" ");
}

const escalations = new Set();
function escalation(e) {
  if (escalations.has(e.id)) return;
  escalations.add(e.id);
  $("escalation-card").hidden = false;
  const routes = e.actions.includes("route_to_human") || e.actions.includes("target_skill");
  if (routes && !$("escalation-reason").textContent) $("escalation-reason").textContent = `Needs a person: ${e.reason}`;
  $("priority").textContent = `priority ${e.priority}`;
  const li = document.createElement("li");
  li.textContent = `${e.at.toFixed(1)}s · ${e.reason} → ${e.actions.join(", ")}${e.skill ? ` (${e.skill})` : ""}`;
  $("escalations").append(li);
}

function assist(summary, facts, suggestions) {
  if (summary) $("summary").textContent = summary;
  $("facts").innerHTML = facts.map((f) => `<span class="fact" title="said at ${f.at.toFixed(1)}s"><b>${esc(f.kind.replace("_", " "))}</b>${esc(f.value)}</span>`).join("");
  if (suggestions) {
    $("suggestions").innerHTML = suggestions.length
      ? suggestions.map((s) => `<div class="suggestion"><strong>${esc(s.title)}</strong><div>${esc(s.answer)}</div></div>`).join("")
      : "No matching article.";
  }
}

const res = await fetch(`/api/v1/calls/${callId}`);
if (!res.ok) {
  $("meta").textContent = (await res.json()).detail;
} else {
  const call = await res.json();
  setState(call.state, call.end_reason);
  $("meta").textContent = `${call.channel} call · ${call.language} · ${call.recognizer_note} · started ${new Date(call.created_at).toLocaleString()}`;
  for (const u of call.transcript) line(u.id, u.speaker, u.start, u.text, true);
  for (const e of call.emotion_timeline) emotion(e);
  for (const e of call.escalations) escalation({ ...e, priority: call.priority });
  assist(call.summary, call.facts, null);
  connectEvents(`/api/v1/calls/${callId}/events`, (ev) => {
    if (ev.type === "call.state_changed") setState(ev.state, ev.reason);
    else if (ev.type === "call.ended") setState("ended", ev.reason);
    else if (ev.type === "transcript.partial") line(`p-${ev.leg_id}:${ev.index}`, ev.speaker, ev.start, ev.text, false);
    else if (ev.type === "transcript.final") {
      // the partial line of this utterance becomes its final line, in place
      const partial = document.querySelector(`[data-key="p-${ev.leg_id}:${ev.index}"]`);
      if (document.querySelector(`[data-key="${ev.utterance_id}"]`)) { partial?.remove(); return; }
      if (partial) partial.dataset.key = ev.utterance_id;
      line(ev.utterance_id, ev.speaker, ev.start, ev.text, true);
    } else if (ev.type === "emotion.updated") emotion(ev);
    else if (ev.type === "escalation.raised") escalation({ ...ev, id: ev.escalation_id });
    else if (ev.type === "assist.updated") assist(ev.summary, ev.facts, ev.suggestions);
  }, { onStatus: (s) => ($("stream").textContent = `stream: ${s}`) });
}
