// Consult, three-way conference and warm transfer on the agent desk
// (engine/api/consult.py, engine/consult.py), with a colleague or with a number outside
// (dialled through the SIP trunk). agent.js hands us its API helper and
// hooks: ring() shows a consult's origin, openCall()/endOfCall() open and close our
// part, and every event of the call's stream passes through onCallEvent().
//
// The call's stream replays the call from its start: only events after the offer that
// brought this call to this desk (or after we opened it) are acted on, so an earlier
// consult on the same call does not end this one.
import { esc } from "/static/events.js";

// what the API dials for a consult: + and digits, or a sip: URI; people type spaces ( ) . -
// (* and # are keys, pressed on the call's keypad once they answer: the API refuses them)
const NUMBER = /^(\+?[0-9]{2,32}|sip:\S{1,330})$/;
const typed = (s) => (s.trim().startsWith("sip:") ? s.trim() : s.replace(/[\s().-]/g, ""));

const HTML = `
  <div class="row consult" role="group" aria-label="Consult a colleague or a number">
    <label>Consult <select id="consult-to" data-testid="consult-to"></select></label>
    <label>or a number <input id="consult-number" data-testid="consult-number" type="tel"
      inputmode="tel" autocomplete="off" maxlength="340" placeholder="+15551234567"></label>
    <button id="consult-start" class="quiet" data-testid="consult-start">Consult</button>
    <button id="consult-complete" data-testid="consult-complete" hidden>Transfer to them</button>
    <button id="consult-conference" class="quiet" data-testid="consult-conference" hidden>Conference</button>
    <button id="consult-cancel" class="quiet" data-testid="consult-cancel" hidden>Cancel consult</button>
    <button id="conference-leave" class="hang" data-testid="conference-leave" hidden>Leave conference</button>
  </div>
  <p class="consult-status" id="consult-status" data-testid="consult-status" role="status" aria-live="polite"></p>`;
const BAD_NUMBER = "Type a phone number (+ and digits) or a sip: address.";
// the API's refusals of the number itself (engine/dialpolicy.py, engine/sip.py)
const REFUSED = /^the number |DIAL_DOMAINS|not a SIP URI/;

export function initConsult({ root, api, me, callId, endOfCall }) {
  root.innerHTML = HTML;
  const $ = (id) => root.querySelector(`#${id}`);
  const offers = new Map(); // call id -> id of the offer event that rang this desk
  let since = 0; // act on events after this id
  let role = null; // "host" | "guest" | null
  let phase = "none"; // "none" | "ringing" | "consulting" | "conference"
  let peer = ""; // the other agent's name, or the number consulted
  let free = 0; // colleagues available to consult, when last asked
  let asking = false; // a consult request is in flight (a number's answers once it picks up)
  let dialled = false; // ... and its consult started: its end is told by the call's events

  function show(status) {
    const host = role === "host";
    $("consult-start").hidden = $("consult-to").parentElement.hidden = phase !== "none";
    $("consult-number").parentElement.hidden = phase !== "none";
    $("consult-complete").hidden = !(host && phase === "consulting");
    $("consult-conference").hidden = !(host && phase === "consulting");
    $("consult-cancel").hidden = !(host && (phase === "ringing" || phase === "consulting"));
    $("conference-leave").hidden = !(phase === "conference" || role === "guest" && phase === "consulting");
    $("conference-leave").textContent = phase === "conference" ? "Leave conference" : "Leave consult";
    if (status !== undefined) $("consult-status").textContent = status;
  }

  async function colleagues() {
    const agents = await api("/api/v1/agents").catch(() => []);
    const others = agents.filter((a) => a.id !== me().id && a.presence === "available");
    free = others.length;
    $("consult-to").innerHTML = free
      ? others.map((a) => `<option value="${esc(a.username)}">${esc(a.display_name || a.username)}</option>`).join("")
      : `<option value="">nobody is available</option>`;
    ready();
  }

  // Consult works with a colleague to pick, or a number typed (which wins); never twice
  // at once: one request at a time, so a double click or Enter does not ask again
  function ready() {
    $("consult-start").disabled = asking || !free && !$("consult-number").value.trim();
    $("consult-number").disabled = $("consult-to").disabled = asking;
  }

  function invalid(on) {
    const field = $("consult-number");
    if (on) {
      field.setAttribute("aria-invalid", "true");
      field.setAttribute("aria-describedby", "consult-status");
    } else {
      field.removeAttribute("aria-invalid");
      field.removeAttribute("aria-describedby");
    }
  }

  async function act(path) {
    const id = callId();
    if (!id) return;
    try {
      await api(`/api/v1/calls/${id}/${path}`, { method: "POST" });
    } catch (err) { $("consult-status").textContent = err.message; }
  }

  async function ask(body) {
    asking = true; dialled = false;
    ready();
    try {
      await api(`/api/v1/calls/${callId()}/consult`, { method: "POST", body });
    } catch (err) {
      // once the number was dialled, how it ended (not answered: 502; cancelled: 409)
      // is told by its call.consult_cancelled, in words; a refusal before, here
      if (!(body.number && dialled)) {
        $("consult-status").textContent = err.message;
        if (body.number && (err.status === 422 || err.status === 409 && REFUSED.test(err.message))) invalid(true);
      }
    } finally {
      asking = false;
      ready();
    }
  }

  function start() {
    if (asking || !callId()) return;
    const number = typed($("consult-number").value);
    if (!number) return $("consult-to").value && ask({ agent: $("consult-to").value });
    if (!NUMBER.test(number)) {
      $("consult-status").textContent = BAD_NUMBER;
      invalid(true);
      return $("consult-number").focus();
    }
    invalid(false);
    return ask({ number });
  }

  $("consult-to").onfocus = colleagues;
  $("consult-number").oninput = () => { invalid(false); ready(); };
  $("consult-number").onkeydown = (e) => { if (e.key === "Enter") { e.preventDefault(); start(); } };
  $("consult-start").onclick = start;
  $("consult-complete").onclick = () => act("consult/complete");
  $("consult-conference").onclick = () => act("consult/conference");
  $("consult-cancel").onclick = () => act("consult/cancel");
  $("conference-leave").onclick = () => act("conference/leave");

  return {
    // a ring on this desk: remembered, and its preview row if it is a consult
    ring(ev) {
      offers.set(ev.call_id, ev.id);
      return ev.consult_from ? ["Consult", `from ${ev.consult_from}: the caller is on hold`] : null;
    },
    open(id, channel, lastId = 0) {
      since = offers.get(id) || lastId;
      role = null; phase = "none"; peer = "";
      $("consult-number").value = "";
      invalid(false);
      root.hidden = channel === "chat";
      show("");
      colleagues();
    },
    close() {
      role = null; phase = "none";
      root.hidden = true;
    },
    onCallEvent(ev) {
      if (ev.id <= since || !ev.type.startsWith("call.consult_") && ev.type !== "call.conference_left") return;
      const name = me().username;
      if (ev.type === "call.consult_started" && ev.host === name) {
        role = "host"; phase = "ringing"; peer = ev.guest; dialled = asking;
        show(ev.outside ? `Calling ${ev.guest}… the caller is on hold.` : `Ringing ${ev.guest}… the caller is on hold.`);
      } else if (ev.type === "call.consult_answered") {
        if (ev.guest === name) { role = "guest"; peer = ev.host; }
        phase = "consulting";
        show(role === "guest" ? `Consult from ${ev.host}: the caller is on hold and cannot hear you.`
          : `Talking to ${ev.guest}; the caller is on hold and cannot hear you.`);
      } else if (ev.type === "call.consult_conferenced") {
        phase = "conference";
        show(`Conference: the caller, ${ev.host} and ${ev.guest} hear each other.`);
      } else if (ev.type === "call.consult_cancelled") {
        if (role === "guest") { endOfCall(ev.reason === "guest_left" ? "You left the consult." : `${ev.host} ended the consult.`); return; }
        phase = "none"; role = null;
        const why = {
          declined: `${ev.guest} declined.`,
          no_answer: `${ev.guest} did not answer.`,
          busy: `${ev.guest} is busy.`,
          failed: `${ev.guest} could not be reached.`,
          guest_left: `${ev.guest} left.`,
        }[ev.reason];
        if (ev.reason === "host_left") { endOfCall(`Your line dropped: ${ev.guest} was hung up.`); return; }
        show(why ? `${why} The caller is still on hold: press Resume to go back.`
          : "Consult cancelled: you are back with the caller.");
      } else if (ev.type === "call.consult_completed") {
        if (role === "host") { endOfCall(`You handed the caller to ${ev.guest}.`); return; }
        phase = "none"; role = null;
        show(`${ev.host} handed the caller to you.`);
      } else if (ev.type === "call.conference_left") {
        if (ev.agent === name) { endOfCall("You left the conference."); return; }
        phase = "none"; role = null;
        show(`${ev.agent} left the conference: the caller is with you.`);
      }
    },
    get peer() { return peer; },
  };
}
