// The desk's dial pad: "Call a number" (POST /api/v1/calls/outbound, then the call
// rings this desk like any other), and during a call a keypad that sends keys to the
// other party (POST /api/v1/calls/{id}/dtmf: RFC 4733 events to a phone, tones to a
// browser). Keys pressed quickly are queued and sent one request at a time, so a
// burst never overlaps itself on the line.
const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"];
const DIALLED = /^[0-9*#+]$/;
const MAX_NUMBER = 32; // the API's bound on a number (OutboundIn.to)
const MAX_QUEUED = 32; // keys waiting to be sent during a call

function keypad(testid, extra = "") {
  return `<div class="keypad" role="group" aria-label="Keypad">${KEYS.map((k) =>
    `<button type="button" class="key" data-key="${k}" data-testid="${testid}-${k === "*" ? "star" : k === "#" ? "hash" : k}">${k}</button>`).join("")}${extra}</div>`;
}

export function initDialpad({ desk, call, api, me, callId }) {
  // -- call a number ---------------------------------------------------------------
  desk.innerHTML = `
    <h2 id="dial-title">Call a number</h2>
    <form class="dial" data-testid="dial-form">
      <label>Number <input id="dial-number" data-testid="dial-number" inputmode="tel" autocomplete="off" maxlength="${MAX_NUMBER}" placeholder="+15551234567"></label>
      ${keypad("dial", `<button type="button" class="key" data-key="+" data-testid="dial-plus">+</button><button type="button" class="key" data-key="back" data-testid="dial-back" aria-label="Delete the last digit">⌫</button>`)}
      <button data-testid="dial-call">Call</button>
      <p class="note" id="dial-status" data-testid="dial-status" role="status" aria-live="polite"></p>
    </form>`;
  const number = desk.querySelector("#dial-number");
  const status = desk.querySelector("#dial-status");
  const clean = (s) => [...s].filter((c) => DIALLED.test(c)).join("").slice(0, MAX_NUMBER);
  number.oninput = () => { number.value = clean(number.value); };
  desk.querySelector(".keypad").onclick = (e) => {
    const key = e.target.closest("[data-key]")?.dataset.key;
    if (!key) return;
    number.value = key === "back" ? number.value.slice(0, -1) : clean(number.value + key);
    number.focus();
  };
  desk.querySelector("form").onsubmit = async (e) => {
    e.preventDefault();
    const to = number.value;
    if (!/^\+?[0-9*#]{2,32}$/.test(to)) { status.textContent = "Enter a number: digits, and + first for an international one."; return; }
    status.textContent = `Calling ${to}… it rings here when they answer.`;
    try {
      await api("/api/v1/calls/outbound", { method: "POST", body: { to, agent: me().username } });
      status.textContent = `${to} answered: take the call.`;
      number.value = "";
    } catch (err) { status.textContent = `Could not call ${to}: ${err.message}`; }
  };

  // -- keys during a call --------------------------------------------------------------
  call.innerHTML = `
    <details class="call-keys"><summary data-testid="keys-toggle">Keypad</summary>
      ${keypad("key")}
      <p class="note" id="keys-sent" data-testid="keys-sent" role="status" aria-live="polite"></p>
    </details>`;
  const sent = call.querySelector("#keys-sent");
  const queued = [];
  let sending = false;
  let sentSoFar = ""; // this call's keys, as sent (the last few)
  async function send() {
    if (sending) return;
    sending = true;
    try {
      while (queued.length && callId()) {
        const digits = queued.splice(0, queued.length).join("");
        try {
          await api(`/api/v1/calls/${callId()}/dtmf`, { method: "POST", body: { digits } });
          sentSoFar = (sentSoFar + digits).slice(-MAX_QUEUED);
          sent.textContent = `Keys sent: ${sentSoFar}`;
        } catch (err) { sent.textContent = `Keys not sent: ${err.message}`; queued.length = 0; }
      }
    } finally { sending = false; }
  }
  function press(key) {
    if (!callId() || queued.length >= MAX_QUEUED) return;
    queued.push(key);
    send();
  }
  call.querySelector(".keypad").onclick = (e) => {
    const key = e.target.closest("[data-key]")?.dataset.key;
    if (key) press(key);
  };
  call.querySelector(".keypad").onkeydown = (e) => {
    if (KEYS.includes(e.key)) { e.preventDefault(); press(e.key); }
  };
  return {
    open(channel) { call.hidden = channel === "chat"; sent.textContent = sentSoFar = ""; queued.length = 0; },
    close() { call.hidden = true; queued.length = 0; },
  };
}
