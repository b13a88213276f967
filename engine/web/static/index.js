import { connectEvents, esc } from "/static/events.js";

const tbody = document.getElementById("calls");
const rows = new Map();

function render(call) {
  let tr = rows.get(call.id);
  if (!tr) {
    tr = document.createElement("tr");
    rows.set(call.id, tr);
    tbody.prepend(tr);
  }
  tr.innerHTML = `<td>${new Date(call.created_at).toLocaleString()}</td><td>${esc(call.channel)}</td>
    <td><span class="state ${esc(call.state)}">${esc(call.state)}</span></td>
    <td>${call.emotion ? `<span class="badge ${esc(call.emotion)}">${esc(call.emotion)}</span>` : ""}</td>
    <td>${esc(call.caller || "")}</td><td><a href="/calls/${esc(call.id)}">open</a></td>`;
  tr.dataset.call = JSON.stringify(call);
}

const res = await fetch("/api/v1/calls?limit=100");
if (res.status === 401 || res.status === 403) {
  tbody.innerHTML = '<tr><td colspan="6" class="note">Calls are private: <a href="/agent">sign in</a> as a supervisor or agent, then come back.</td></tr>';
  throw new Error("not signed in");
}
const { calls } = await res.json();
tbody.innerHTML = calls.length ? "" : '<tr><td colspan="6" class="note">No calls yet. Open the caller page and press Call.</td></tr>';
for (const c of calls.reverse()) render(c);

const models = await (await fetch("/api/v1/models")).json();
document.getElementById("models").textContent = models.map((m) => `${m.language}: ${m.note}`).join(" · ");

connectEvents("/api/v1/events", (ev) => {
  const known = rows.get(ev.call_id);
  const call = known ? JSON.parse(known.dataset.call) : null;
  // The stream replays what the engine still holds, then follows live; replayed
  // events arrive in order, so re-rendering from them ends in the current state.
  if (ev.type === "call.started" && !call) {
    if (tbody.querySelector("td[colspan]")) tbody.innerHTML = "";
    render({ id: ev.call_id, channel: ev.channel, state: "new", created_at: ev.time, emotion: null, caller: "" });
  } else if (call && ev.type === "call.state_changed") {
    render({ ...call, state: ev.state });
  } else if (call && ev.type === "emotion.updated" && (ev.speaker ?? "caller") === "caller") {
    // the call's mood, as the list API stores it: the caller's call-level label, not
    // the last utterance's (nor ever the agent's)
    render({ ...call, emotion: ev.call_label });
  }
});
