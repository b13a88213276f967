// What the caller page says, in the customer's words: every state of their call or
// chat, their place in line, a callback, the end. Never an engine word ("bridged"), a
// reason code ("agent_hangup") or operator advice (which recognizer runs). Pure
// functions of the call's events, so tests/test_call_copy.py runs them under node.

// how long, in the words a person would use: "about 3 minutes"
export function minutes(seconds) {
  const n = Math.max(1, Math.round(seconds / 60));
  return `about ${n} minute${n === 1 ? "" : "s"}`;
}

// An agent's name as the caller sees it: the engine names them by their display name
// ("Ann Smith"; call.state_changed's agent_name); the caller is told the first name.
// No name: null, and the page says "one of our team", never a login.
export function agentName(displayName) {
  const first = String(displayName ?? "").trim().split(/\s+/)[0];
  return first ? first[0].toUpperCase() + first.slice(1) : null;
}

// What is wrong with a callback number, in the caller's words, or null. A number as
// people type one: 6 to 30 of digits, spaces and + ( ) . -, with 6 digits at least
// (the engine checks the same: CallbackIn in engine/api/schemas.py). Empty is fine
// only when the engine knows a number for the call (`required` false).
const PHONE = /^[0-9+()\s.-]{6,30}$/;
export function phoneProblem(number, required) {
  const n = String(number ?? "").trim();
  if (!n) return required ? "Please enter the number we should call you back on." : null;
  const digits = (n.match(/[0-9]/g) || []).length;
  return PHONE.test(n) && digits >= 6 ? null : "Please enter a phone number, like +44 20 7946 0018.";
}

// state: a call's state (engine/callstate.py) or the page's own (idle, dialing, chat,
// failed); chat: it is a chat; agent: who answered; assistant: the virtual agent spoke
export function sayState(state, { chat = false, agent = null, assistant = false, reason = null } = {}) {
  const talking = chat ? "chatting" : "talking";
  switch (state) {
    case "idle": return "Not connected";
    case "dialing": case "new": case "connecting": return "Connecting…";
    case "chat": return assistant ? "You're chatting with our assistant" : "Chat open: type your message below";
    case "active":
      if (assistant) return `You're ${talking} with our assistant`;
      return chat ? "Chat open: type your message below" : "You're connected";
    case "queued": return "Waiting for the next available person";
    case "bridged": return agent ? `You're ${chat ? "chatting with" : "through to"} ${agent}` : `You're ${talking} with one of our team`;
    case "held": return "On hold — we'll be right back";
    case "ended": return sayEnded(reason, { chat });
    case "failed": return chat ? "The chat couldn't start" : "The call couldn't be placed";
    default: return "Connecting…"; // a state this page does not know yet: say nothing wrong
  }
}

// queue.updated: where the caller is in line and how long it may take
export function sayLine({ position, expected_wait: wait, callback_offered: offered }) {
  const place = position <= 1 ? "You're next in line" : `You're number ${position} in line`;
  const when = wait == null ? ". Everyone is busy right now: we'll be with you as soon as we can." : `, ${minutes(wait)}.`;
  return `${place}${when}${offered ? " You can ask us to call you back instead." : ""}`;
}

export function sayCallback(contact) {
  return contact ? `We'll call you back at ${contact}.` : "We'll call you back as soon as someone is free.";
}

// call.ended's reason, as the last thing the page says
export function sayEnded(reason, { chat = false, contact = null } = {}) {
  const thanks = chat ? "Thank you for contacting us." : "Thank you for calling.";
  switch (reason) {
    case "callback_requested": return `${sayCallback(contact)} ${thanks}`;
    case "no_media": return "We couldn't hear you, so the call ended. Please check your microphone and call again.";
    case "chat_idle": return `The chat ended after a quiet while. ${thanks}`;
    default: return `${chat ? "Chat" : "Call"} ended. ${thanks}`;
  }
}
