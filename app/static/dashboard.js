// The dashboard reads the token-protected API; the page itself holds no data. The token stays
// in this tab's sessionStorage. Text from Stripe is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let membersOf = null;
let membersNext = null;

async function api(path) {
  const token = sessionStorage.getItem("stripeline-token");
  const answer = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) {
    throw new Error(answer.status === 401 ? "That token is not accepted." : body.error || `HTTP ${answer.status}`);
  }
  return body;
}

function show(problem) {
  $("problem").hidden = !problem;
  $("problem").textContent = problem || "";
}

function fill(list, pairs) {
  list.replaceChildren();
  for (const [label, value] of pairs) {
    const term = document.createElement("dt");
    term.textContent = label;
    const detail = document.createElement("dd");
    detail.textContent = value === null || value === undefined ? "-" : String(value);
    list.append(term, detail);
  }
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell); else td.textContent = String(cell);
    if (typeof cell === "number") td.className = "number";
    tr.append(td);
  }
  return tr;
}

// Stripe's zero-decimal currencies: their minor unit is the whole unit.
const ZERO_DECIMAL = new Set(["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd",
                              "vuv", "xaf", "xof", "xpf"]);

function money(amount, currency) {
  if (amount === null || amount === undefined) return "-";
  const code = (currency || "").toLowerCase();
  const whole = ZERO_DECIMAL.has(code) ? String(amount) : (amount / 100).toFixed(2);
  return `${whole} ${code.toUpperCase()}`;
}

async function refresh() {
  try {
    const sync = await api("/api/sync");
    $("sync-status").textContent = sync.status;
    $("sync-status").className = `status ${sync.status}`;
    const pairs = Object.entries(sync.events).map(([name, n]) => [`events ${name}`, n]);
    pairs.push(["oldest pending (s)", sync.oldest_pending_age_seconds], ["last event at", sync.last_event_at],
               ["customers in sync", sync.customers_in_sync]);
    if (sync.rebuild) pairs.push(["rebuild", `${sync.rebuild.events_done} of ${sync.rebuild.events_total} events`]);
    fill($("sync"), pairs);
    const segments = await api("/api/segments");
    const body = $("segments").tBodies[0];
    body.replaceChildren(...segments.map((segment) => {
      const link = document.createElement("a");
      link.textContent = segment.name;
      link.onclick = () => members(segment, null);
      return row([link, segment.key, segment.count]);
    }));
    $("login").hidden = true;
    $("logout").hidden = false;
    $("data").hidden = false;
    show(null);
  } catch (problem) {
    show(problem.message);
  }
}

async function members(segment, after) {
  try {
    const query = new URLSearchParams({ limit: "50" });
    if (after) query.set("after", after);
    const page = await api(`/api/segments/${encodeURIComponent(segment.key)}/customers?${query}`);
    if (!after) $("members-list").replaceChildren();
    for (const id of page.customers) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.textContent = id;
      link.onclick = () => { $("customer-id").value = id; customer(id); };
      item.append(link);
      $("members-list").append(item);
    }
    membersOf = segment;
    membersNext = page.next;
    $("members-name").textContent = segment.name;
    $("members-more").hidden = !page.next;
    $("members").hidden = false;
  } catch (problem) {
    show(problem.message);
  }
}

async function customer(id) {
  try {
    const found = await api(`/api/customers/${encodeURIComponent(id)}`);
    const subscriptions = found.subscriptions.map((s) => `${s.id} (${s.status})`).join(", ");
    fill($("customer"), [
      ["id", found.id], ["name", found.name], ["email", found.email], ["MRR", money(found.mrr, found.currency)],
      ["last payment", found.last_payment ? `${money(found.last_payment.amount, found.last_payment.currency)} at ${found.last_payment.at}` : null],
      ["deleted in Stripe", found.deleted_in_stripe], ["last activity", found.last_activity_at],
      ["subscriptions", subscriptions || null], ["segments", found.segments.join(", ") || null],
      ["tags", found.tags.join(", ") || null], ["attributes", JSON.stringify(found.attributes)],
    ]);
    const timeline = await api(`/api/customers/${encodeURIComponent(id)}/events`);
    const entries = timeline.events;
    $("timeline").tBodies[0].replaceChildren(...entries.map((e) => row([e.at, e.kind, e.event_id])));
    $("timeline").hidden = entries.length === 0;
    show(null);
  } catch (problem) {
    fill($("customer"), []);
    $("timeline").hidden = true;
    show(problem.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").onsubmit = (event) => {
    event.preventDefault();
    sessionStorage.setItem("stripeline-token", $("token").value);
    $("token").value = "";
    refresh();
  };
  $("logout").onclick = () => {
    sessionStorage.removeItem("stripeline-token");
    location.reload();
  };
  $("lookup").onsubmit = (event) => { event.preventDefault(); customer($("customer-id").value.trim()); };
  $("members-more").onclick = () => members(membersOf, membersNext);
  if (sessionStorage.getItem("stripeline-token")) refresh();
  setInterval(() => { if (!$("data").hidden) refresh(); }, 15000);
});
