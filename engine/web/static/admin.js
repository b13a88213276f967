// The admin pages: people, queues, escalation rules, knowledge-base articles, the
// virtual agent's flows and webhooks, each a table with a form, over the REST API as it
// is. The server decides who may do what and whether a change is valid: this page shows
// its answers (its 422 with the flow's line, its 409s, its 403s) next to the form.
import { esc } from "/static/events.js";

const $ = (id) => document.getElementById(id);
let me = null;

/** A refusal from the API: its status and problem body (RFC 9457). */
class Problem extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.line = body?.line ?? null;
    this.reason = body?.reason ?? null;
  }
}

// X-Requested-With: the engine takes changes made with the sign-in cookie only with it
// (a page on another site cannot send it), so every request here sends it.
async function api(path, { method = "GET", body, yaml } = {}) {
  const headers = { "x-requested-with": "ccengine" };
  let payload;
  if (yaml !== undefined) {
    headers["content-type"] = "application/yaml";  // a flow is sent as its own text
    payload = yaml;
  } else if (body !== undefined) {
    headers["content-type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const res = await fetch(path, { method, headers, body: payload });
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new Problem(res.status, data);
  return data;
}

/** What to tell the person about a refusal, in words. */
function explain(err) {
  if (!(err instanceof Problem)) return err.message;
  if (err.status === 401) return "Your sign-in has ended: sign in again at the agent desk (/agent).";
  if (err.status === 403) return `Not allowed: ${err.message}`;
  if (err.line != null) return `Line ${err.line}: ${err.reason || err.message}`;
  return err.message;
}

const say = (text) => { $("status").textContent = text; };
const list = (text) => String(text || "").split(",").map((s) => s.trim()).filter(Boolean);
const isAdmin = () => me?.role === "admin";
const path = (s) => encodeURIComponent(s);

// -- the resources: how each is listed, shown, filled into its form, saved, removed --

const FLOW_TEMPLATE = `# numbers: ["+15550001234"]   # dialled numbers it answers; none: the default flow
greeting: Thanks for calling. How can I help?
intents:
  - name: opening_hours
    examples: [when are you open, opening hours]
    say: We are open from nine to five, Monday to Friday.
`;
const RULE_TEMPLATE = JSON.stringify({
  id: "refund_request",
  kind: "phrase",
  description: "caller asks for a refund",
  phrases: ["refund", "money back"],
  actions: ["route_to_human"],
}, null, 2);

const RESOURCES = {
  people: {
    noun: "person",
    name: (u) => u.username,
    // admins see everyone; supervisors may read the agents only (GET /agents)
    load: async () => isAdmin()
      ? api("/api/v1/users")
      : (await api("/api/v1/agents")).map((a) => ({ ...a, role: "agent" })),
    cells: (u) => [u.username, u.display_name, u.role, u.skills.join(", ")],
    editable: isAdmin,
    fill(f, u) {
      f.username.value = u?.username || "";
      f.username.readOnly = !!u;  // a username names the person in the API's paths
      f.display_name.value = u?.display_name || "";
      f.role.value = u?.role || "agent";
      f.skills.value = u?.skills.join(", ") || "";
      f.password.value = "";
      f.password.required = !u;
      $("person-password-label").textContent = u
        ? "New password (leave empty to keep; a new one signs them out)"
        : "Password (8 characters or more)";
    },
    async save(f, u) {
      const fields = { display_name: f.display_name.value.trim() || null, role: f.role.value, skills: list(f.skills.value) };
      if (f.password.value) fields.password = f.password.value;
      if (u) return api(`/api/v1/agents/${path(u.username)}`, { method: "PATCH", body: fields });
      return api("/api/v1/agents", { method: "POST", body: { username: f.username.value.trim(), ...fields } });
    },
    remove: (u) => api(`/api/v1/agents/${path(u.username)}`, { method: "DELETE" }),
  },
  queues: {
    noun: "queue",
    name: (q) => q.name,
    load: () => api("/api/v1/queues"),
    cells: (q) => [q.name, q.skills.join(", "), q.priority, `${q.max_wait} s`, q.waiting],
    editable: () => true,
    fill(f, q) {
      f.name.value = q?.name || "";
      f.name.readOnly = !!q;
      f.skills.value = q?.skills.join(", ") || "";
      f.priority.value = q?.priority ?? 0;
      f.max_wait.value = q?.max_wait ?? 600;
      f.announcement.value = q?.announcement ?? f.announcement.defaultValue;
    },
    added: (f) => f.name.value.trim(),
    save: (f) => api(`/api/v1/queues/${path(f.name.value.trim())}`, {
      method: "PUT",
      body: { skills: list(f.skills.value), priority: Number(f.priority.value), max_wait: Number(f.max_wait.value), announcement: f.announcement.value },
    }),
    remove: (q) => api(`/api/v1/queues/${path(q.name)}`, { method: "DELETE" }),
  },
  rules: {
    noun: "rule",
    name: (r) => r.id,
    load: () => api("/api/v1/escalation-rules"),
    cells: (r) => [r.id, r.kind, r.description, r.actions.join(", ")],
    editable: () => true,
    fill(f, r) { f.json.value = r ? JSON.stringify(r, null, 2) : RULE_TEMPLATE; },
    added(f) {
      try { return String(JSON.parse(f.json.value)?.id ?? ""); } catch { return ""; }
    },
    async save(f) {
      let rule;
      try {
        rule = JSON.parse(f.json.value);
      } catch (err) {
        throw new Error(`This is not JSON: ${err.message}`);
      }
      if (!rule || typeof rule !== "object" || typeof rule.id !== "string" || !rule.id) {
        throw new Error('A rule is a JSON object with an "id" (lower-case letters, digits, _ and -).');
      }
      return api(`/api/v1/escalation-rules/${path(rule.id)}`, { method: "PUT", body: rule });
    },
    remove: (r) => api(`/api/v1/escalation-rules/${path(r.id)}`, { method: "DELETE" }),
  },
  articles: {
    noun: "article",
    name: (a) => a.id,
    load: () => api("/api/v1/knowledge-base/articles"),
    cells: (a) => [a.id, a.title, a.tags.join(", ")],
    editable: () => true,
    fill(f, a) {
      f.id.value = a?.id || "";
      f.id.readOnly = !!a;
      f.title.value = a?.title || "";
      f.body.value = a?.body || "";
      f.tags.value = a?.tags.join(", ") || "";
    },
    added: (f) => f.id.value.trim(),
    save: (f) => api(`/api/v1/knowledge-base/articles/${path(f.id.value.trim())}`, {
      method: "PUT", body: { title: f.title.value.trim(), body: f.body.value, tags: list(f.tags.value) },
    }),
    remove: (a) => api(`/api/v1/knowledge-base/articles/${path(a.id)}`, { method: "DELETE" }),
  },
  flows: {
    noun: "flow",
    name: (fl) => fl.id,
    async load() {
      const { on, flows } = await api("/api/v1/bot/flows");
      $("flows-note").textContent = [
        on ? "The virtual agent answers new calls with these flows."
          : "The virtual agent is off (CCENGINE_BOT_FLOWS is not set): flows are kept but answer nobody.",
        isAdmin() ? "" : "Only admins change flows: their actions are sent callers' data.",
      ].join(" ").trim();
      return flows;
    },
    cells: (fl) => [fl.id, fl.numbers.join(", ") || "default (any number)", fl.intents.join(", "), fl.source],
    editable: isAdmin,
    // the list has no text: the whole flow (admins only) is read when it is edited,
    // before the form changes, so a failed read leaves the form as it was
    prepare: async (fl) => (fl ? (await api(`/api/v1/bot/flows/${path(fl.id)}`)).yaml : FLOW_TEMPLATE),
    fill(f, fl, yaml) {
      f.id.value = fl?.id || "";
      f.id.readOnly = !!fl;
      f.yaml.value = yaml;
    },
    added: (f) => f.id.value.trim(),
    save: (f) => api(`/api/v1/bot/flows/${path(f.id.value.trim())}`, { method: "PUT", yaml: f.yaml.value }),
    remove: (fl) => api(`/api/v1/bot/flows/${path(fl.id)}`, { method: "DELETE" }),
  },
  webhooks: {
    noun: "webhook",
    name: (w) => w.url,
    load: () => api("/api/v1/webhooks"),
    cells: (w) => [w.url, w.events.join(", "), w.description, new Date(w.created_at).toLocaleString()],
    editable: isAdmin,
    canEdit: false,  // a subscription is replaced, not changed: the API has no PATCH
    fill(f) { f.reset(); },
    async save(f) {
      const made = await api("/api/v1/webhooks", {
        method: "POST", body: { url: f.url.value.trim(), events: list(f.events.value), description: f.description.value },
      });
      const secret = $("webhooks-form").querySelector("[data-testid=webhook-secret]");
      secret.textContent = `Signing secret for ${made.url} (shown only now, keep it): ${made.secret}`;
      secret.hidden = false;
      return made;
    },
    remove: (w) => api(`/api/v1/webhooks/${path(w.id)}`, { method: "DELETE" }),
  },
};

// -- one table and one form per resource ---------------------------------------------

const state = {};  // per resource: its rows, and the one being changed (null: adding)

function form(kind) { return $(`${kind}-form`); }

function showError(kind, err) {
  const box = form(kind).querySelector("[data-error]");
  box.textContent = err ? explain(err) : "";
  const text = form(kind).querySelector("textarea.code");
  if (text) {
    text.setAttribute("aria-invalid", err ? "true" : "false");
    if (err instanceof Problem && err.line != null) selectLine(text, err.line);
  }
}

/** Put the cursor on the line the server named, so the mistake is in view. */
function selectLine(textarea, line) {
  const lines = textarea.value.split("\n");
  const n = Math.min(Math.max(line, 1), lines.length);
  const start = lines.slice(0, n - 1).reduce((sum, l) => sum + l.length + 1, 0);
  textarea.focus();
  textarea.setSelectionRange(start, start + lines[n - 1].length);
}

async function refresh(kind) {
  const r = RESOURCES[kind];
  const s = state[kind] ||= { rows: [], editing: null };
  try {
    s.rows = await r.load();
  } catch (err) {
    say(`Could not list ${r.noun}s: ${explain(err)}`);
    return;
  }
  const actions = r.editable();
  $(`${kind}-rows`).innerHTML = s.rows.map((item, i) => {
    const name = esc(r.name(item));
    const buttons = !actions ? "" : `<td class="actions">${r.canEdit === false ? "" :
      `<button type="button" class="quiet" data-edit="${i}" aria-label="Edit ${r.noun} ${name}">Edit</button>`}
      ${kind === "people" && r.name(item) === me?.username ? "" :
      `<button type="button" class="danger" data-delete="${i}" aria-label="Delete ${r.noun} ${name}">Delete</button>`}</td>`;
    return `<tr data-name="${name}">${r.cells(item).map((c) => `<td>${esc(c)}</td>`).join("")}${buttons || "<td></td>"}</tr>`;
  }).join("") || `<tr><td colspan="9" class="note">No ${r.noun}s yet.</td></tr>`;
}

async function edit(kind, item, focus = true) {
  const r = RESOURCES[kind];
  const s = (state[kind] ||= { rows: [], editing: null, seq: 0 });
  const seq = s.seq = (s.seq || 0) + 1;
  showError(kind, null);
  let extra;
  try {
    extra = r.prepare ? await r.prepare(item) : undefined;
  } catch (err) {
    if (seq === s.seq) showError(kind, err);
    return;  // the form still shows, and saves, what it showed before
  }
  if (seq !== s.seq) return;  // another Edit was clicked meanwhile: it wins
  s.editing = item;
  r.fill(form(kind), item, extra);
  const title = $(`${kind}-form-title`);
  if (title) title.textContent = item ? `Change ${r.noun} ${r.name(item)}` : `Add a ${r.noun}`;
  if (!focus) return;
  const first = [...form(kind).elements].find((e) => !e.readOnly && !e.hidden && e.type !== "hidden");
  if (first) first.focus();
}

function wire(kind) {
  const r = RESOURCES[kind];
  const f = form(kind);
  f.onsubmit = async (e) => {
    e.preventDefault();
    const editing = state[kind]?.editing ?? null;
    showError(kind, null);
    // the API's PUTs replace: adding under a taken name, or renaming a rule while
    // changing it, would overwrite another one without a word
    const named = r.added ? r.added(f) : "";
    const taken = named && (editing === null || r.name(editing) !== named)
      && (state[kind]?.rows || []).some((x) => r.name(x) === named);
    if (taken && !confirm(`The ${r.noun} ${named} exists already. Replace it?`)) return;
    const button = f.querySelector("button:not([type=button])");
    button.disabled = true;
    try {
      const saved = await r.save(f, editing);
      const name = saved ? r.name(saved) : r.name(editing);
      say(`Saved ${r.noun} ${name}.`);
      await edit(kind, null, false);
      await refresh(kind);
    } catch (err) {
      showError(kind, err);
      say(`The ${r.noun} was not saved.`);
    } finally {
      button.disabled = false;
    }
  };
  const reset = f.querySelector("[data-reset]");
  if (reset) reset.onclick = () => edit(kind, null);
  $(`${kind}-rows`).onclick = async (e) => {
    const button = e.target.closest("button");
    if (!button) return;
    const item = state[kind].rows[Number(button.dataset.edit ?? button.dataset.delete)];
    if (!item) return;
    if (button.dataset.edit !== undefined) {
      await edit(kind, item);
      return;
    }
    if (!confirm(`Delete ${r.noun} ${r.name(item)}? This cannot be undone.`)) return;
    try {
      await r.remove(item);
      say(`Deleted ${r.noun} ${r.name(item)}.`);
      const editing = state[kind].editing;
      // rows are new objects after any refresh: compare names, not objects
      if (editing && r.name(editing) === r.name(item)) await edit(kind, null, false);
      await refresh(kind);
      $(`${kind}-rows`).closest("table")?.focus();  // the Delete button is gone: keep focus near
    } catch (err) {
      say(`Did not delete ${r.noun} ${r.name(item)}: ${explain(err)}`);
    }
  };
}

// -- tabs: arrow keys move between them, as in any tab list ---------------------------

const TABS = Object.keys(RESOURCES);

function tabs() { return TABS.filter((k) => !$(`tab-${k}`).hidden); }

async function show(kind) {
  for (const k of TABS) {
    const on = k === kind;
    $(`tab-${k}`).setAttribute("aria-selected", String(on));
    $(`tab-${k}`).tabIndex = on ? 0 : -1;
    $(k).hidden = !on;
  }
  history.replaceState(null, "", `#${kind}`);
  await refresh(kind);
}

document.querySelector("[role=tablist]").onkeydown = (e) => {
  const shown = tabs();
  const at = shown.indexOf(document.activeElement?.id?.replace("tab-", ""));
  if (at < 0) return;
  const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: shown.length - 1 }[e.key];
  if (to === undefined) return;
  e.preventDefault();
  const next = shown[(to + shown.length) % shown.length];
  $(`tab-${next}`).focus();
  show(next);
};

// -- start: who is this? ---------------------------------------------------------------

async function start() {
  try {
    me = await api("/api/v1/auth/me");
  } catch (err) {
    if (err instanceof Problem && err.status === 401) {
      $("signed-out").hidden = false;
      say("You are not signed in.");
      return;
    }
    say(`Could not reach the engine: ${explain(err)}`);
    return;
  }
  $("who").textContent = `${me.display_name || me.username} (${me.role})`;
  if (me.role !== "supervisor" && me.role !== "admin") {
    $("denied-who").textContent = `${me.username} (${me.role})`;
    $("denied").hidden = false;
    return;
  }
  // what only admins may change: shown to supervisors as lists with a note
  $("tab-webhooks").hidden = !isAdmin();
  for (const f of document.querySelectorAll("form[data-admin-only]")) f.hidden = !isAdmin();
  if (!isAdmin()) $("people-note").textContent = "Only admins add, change or remove people. These are the agents.";
  for (const k of TABS) {
    wire(k);
    $(`tab-${k}`).onclick = () => show(k);
    await edit(k, null, false);
  }
  $("console").hidden = false;
  const wanted = location.hash.slice(1);
  await show(tabs().includes(wanted) ? wanted : "people");
}

start();
