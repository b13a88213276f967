// What an agent or supervisor sees of one call: transcript of both sides, emotion
// timeline, escalation, summary with facts, suggested answers. Every render is keyed
// (utterance, escalation), so replayed events and a REST snapshot can be mixed freely.
import { esc } from "/static/events.js";

export function createCallView(root) {
  const part = (name) => root.querySelector(`[data-testid="${name}"]`);
  const samples = new Map(); // utterance_id -> emotion sample
  const escalations = new Set();

  function line(key, speaker, start, text, final) {
    let el = root.querySelector(`[data-key="${key}"]`);
    if (!el) {
      el = document.createElement("div");
      el.dataset.key = key;
      el.dataset.start = start;
      // both speakers share the call's clock: keep the lines in the order they were said
      const after = [...part("transcript").children].find((x) => Number(x.dataset.start) > start);
      part("transcript").insertBefore(el, after || null);
    }
    el.className = `line ${final ? "final" : "partial"} ${speaker}`;
    el.innerHTML = `<span class="t">${start.toFixed(1)}s</span><span class="who">${esc(speaker)}</span><span class="text">${esc(text)}</span>`;
    part("transcript").scrollTop = part("transcript").scrollHeight;
  }

  function emotion(s) {
    if (s.speaker && s.speaker !== "caller") return;
    samples.set(s.utterance_id, s);
    part("emotion").innerHTML = `<span class="badge ${esc(s.call_label)}" data-testid="call-emotion">${esc(s.call_label)}</span>
      <span class="note" data-testid="last-emotion">last: ${esc(s.label)}${s.confidence ? ` (${Math.round(s.confidence * 100)}% sure)` : ""} · arousal ${s.arousal.toFixed(2)} · valence ${s.valence.toFixed(2)} · trend ${s.trend.toFixed(2)}</span>
      <ul class="note" data-testid="emotion-evidence">${(s.evidence || []).map((e) => `<li>${esc(e)}</li>`).join("")}</ul>`;
    const all = [...samples.values()].sort((a, b) => a.at - b.at);
    const end = Math.max(10, ...all.map((x) => x.at));
    const x = (t) => (t / end) * 590 + 5;
    const y = (v) => 60 - v * 55;
    const path = all.map((p, i) => `${i ? "L" : "M"}${x(p.at).toFixed(1)},${y(p.trend).toFixed(1)}`).join(" ");
    part("chart").innerHTML = `<line x1="0" x2="600" y1="60" y2="60" stroke="#ddd"/>
      <path d="${path}" fill="none" stroke="#2f6fed" stroke-width="2"/>` +
      all.map((p) => `<circle cx="${x(p.at)}" cy="${y(p.valence)}" r="4" fill="var(--${p.label})"><title>${p.label}${p.confidence ? ` (${Math.round(p.confidence * 100)}%)` : ""} at ${p.at.toFixed(1)}s</title></circle>`).join("");
    part("timeline").innerHTML = all.map((p) => `<span class="badge ${esc(p.label)}" title="${p.at.toFixed(1)}s">${esc(p.label)}</span>`).join(" ");
  }

  function escalation(e) {
    if (escalations.has(e.id)) return;
    escalations.add(e.id);
    part("escalation-card").hidden = false;
    const routes = e.actions.includes("route_to_human") || e.actions.includes("target_skill");
    if (routes && !part("escalation-reason").textContent) part("escalation-reason").textContent = `Needs a person: ${e.reason}`;
    part("priority").textContent = `priority ${e.priority}`;
    const li = document.createElement("li");
    li.textContent = `${e.at.toFixed(1)}s · ${e.reason} → ${e.actions.join(", ")}${e.skill ? ` (${e.skill})` : ""}`;
    part("escalations").append(li);
  }

  function assist(summary, facts, suggestions) {
    if (summary) part("summary").textContent = summary;
    part("facts").innerHTML = facts.map((f) => `<span class="fact" title="said at ${f.at.toFixed(1)}s"><b>${esc(f.kind.replace("_", " "))}</b>${esc(f.value)}</span>`).join("");
    if (suggestions) {
      part("suggestions").innerHTML = suggestions.length
        ? suggestions.map((s) => `<div class="suggestion"><strong>${esc(s.title)}</strong><div>${esc(s.answer)}</div></div>`).join("")
        : "No matching article.";
    }
  }

  return {
    // a stored call (GET /api/v1/calls/{id}): everything said and seen so far
    load(call) {
      const speakers = new Map(call.transcript.map((u) => [u.id, u.speaker]));
      for (const u of call.transcript) line(u.id, u.speaker, u.start, u.text, true);
      for (const e of call.emotion_timeline) emotion({ ...e, speaker: speakers.get(e.utterance_id) });
      for (const e of call.escalations) escalation({ ...e, priority: call.priority });
      assist(call.summary, call.facts, null);
    },
    // one event of the call's stream; true if it was about what this view shows
    handle(ev) {
      if (ev.type === "transcript.partial") line(`p-${ev.leg_id}:${ev.index}`, ev.speaker, ev.start, ev.text, false);
      else if (ev.type === "transcript.final") {
        // the partial line of this utterance becomes its final line, in place
        const partial = root.querySelector(`[data-key="p-${ev.leg_id}:${ev.index}"]`);
        if (root.querySelector(`[data-key="${ev.utterance_id}"]`)) partial?.remove();
        else {
          if (partial) partial.dataset.key = ev.utterance_id;
          line(ev.utterance_id, ev.speaker, ev.start, ev.text, true);
        }
      } else if (ev.type === "bot.said") line(ev.utterance_id, "bot", ev.at, ev.text, true);
      else if (ev.type === "emotion.updated") emotion(ev);
      else if (ev.type === "escalation.raised") escalation({ ...ev, id: ev.escalation_id });
      else if (ev.type === "assist.updated") assist(ev.summary, ev.facts, ev.suggestions);
      else return false;
      return true;
    },
  };
}

// The panels a call view fills, for pages that show one.
export const CALL_PANELS = `
  <section class="card" data-testid="escalation-card" hidden>
    <h3>Why it escalated</h3>
    <p><strong data-testid="escalation-reason"></strong> <span class="note" data-testid="priority"></span></p>
    <ul class="note" data-testid="escalations"></ul>
  </section>
  <section class="card">
    <h3>Summary so far</h3>
    <p data-testid="summary" class="note">Nothing yet.</p>
    <div data-testid="facts" class="row"></div>
  </section>
  <section class="card">
    <h3>Suggested answers</h3>
    <div data-testid="suggestions" class="note">None yet.</div>
  </section>
  <section class="card">
    <h3>Caller's emotion</h3>
    <p data-testid="emotion">–</p>
    <svg class="chart" viewBox="0 0 600 120" preserveAspectRatio="none" data-testid="chart"></svg>
    <div class="note" data-testid="timeline"></div>
  </section>`;
