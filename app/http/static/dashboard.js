// The stripeline dashboard: one static page that reads the token-protected /api. The page holds
// no data of its own; the token stays in this tab's sessionStorage. Text from Stripe is only
// ever set as text (never as HTML), and the strict Content-Security-Policy allows nothing but
// this script and its stylesheet. Every view's state lives in the URL fragment, so links are
// real links: shareable, bookmarkable, reachable with the keyboard.
"use strict";

const TOKEN_KEY = "stripeline-token";
const PAGE_SIZE = 50;
const REFRESH_MS = 20000;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let renderCount = 0;

// ---- building the page ------------------------------------------------------------------------

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function build(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  return node;
}

function h(tag, attrs, ...children) {
  return append(build(document.createElement(tag), attrs), children);
}

function svg(tag, attrs, ...children) {
  return append(build(document.createElementNS(SVG, tag), attrs), children);
}

// ---- formatting -------------------------------------------------------------------------------

const numbers = new Intl.NumberFormat();
const count = (n) => (n === null || n === undefined ? "–" : numbers.format(n));
const plural = (n, word) => `${count(n)} ${word}${n === 1 ? "" : "s"}`;

// Stripe's currencies whose minor unit is the whole unit, and those with three decimals.
const ZERO_DECIMAL = new Set(["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd",
  "vuv", "xaf", "xof", "xpf"]);
const THREE_DECIMAL = new Set(["bhd", "jod", "kwd", "omr", "tnd"]);

function money(amount, currency) {
  if (amount === null || amount === undefined) return "–";
  const code = (currency || "").toLowerCase();
  if (!code) return count(amount);
  const digits = ZERO_DECIMAL.has(code) ? 0 : THREE_DECIMAL.has(code) ? 3 : 2;
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: code.toUpperCase(),
      minimumFractionDigits: digits, maximumFractionDigits: digits }).format(amount / 10 ** digits);
  } catch {
    return `${(amount / 10 ** digits).toFixed(digits)} ${code.toUpperCase()}`;
  }
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(Math.abs(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  const days = Math.round(s / 86400);
  return `${days} day${days === 1 ? "" : "s"}`;
}

function relative(iso) {
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  if (Math.abs(seconds) < 10) return "just now";
  return seconds > 0 ? `${duration(seconds)} ago` : `in ${duration(seconds)}`;
}

const exactFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

function exact(iso) {
  return `${exactFormat.format(new Date(iso))} (${iso.replace("T", " ").replace("Z", " UTC")})`;
}

// A time shown as "3 min ago", its exact time on hover.
function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "–");
  return h("time", { datetime: iso, title: exact(iso) }, relative(iso));
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
const day = (iso) => (iso ? dateFormat.format(new Date(iso)) : null);

const badge = (text, kind) => h("span", { class: `badge ${kind || text}` }, text.replace(/_/g, " "));

// ---- links and the URL fragment ---------------------------------------------------------------

function href(parts, params) {
  const path = "#/" + parts.map(encodeURIComponent).join("/");
  const query = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v !== null && v !== undefined && v !== ""));
  return query.toString() ? `${path}?${query}` : path;
}

function parseFragment() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

const customerLink = (id, label) => h("a", { href: href(["customers", id]) }, label || id);
const eventLink = (id, label) => h("a", { href: href(["events", id]), class: label ? null : "mono" }, label || id);

// ---- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` };
  if (options && options.body) headers["Content-Type"] = "application/json";
  let answer;
  try {
    answer = await fetch(path, { ...options, headers });
  } catch {
    throw new ApiError(0, "The server did not answer. Is stripeline running?");
  }
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) {
    const message = answer.status === 401 ? "That token is not accepted." :
      answer.status === 503 ? "The database is unavailable right now; try again in a moment." :
      body.error || `The server answered ${answer.status}.`;
    throw new ApiError(answer.status, message);
  }
  return body;
}

// ---- shared pieces of views -------------------------------------------------------------------

function pageHead(title, subtitle, crumbs, extra) {
  return h("div", { class: "page-head" },
    h("div", {}, crumbs ? h("div", { class: "crumbs" }, crumbs) : null, h("h1", {}, title),
      subtitle ? h("p", { class: "muted" }, subtitle) : null),
    extra || null);
}

function figure(label, value, note, state, link) {
  const body = [h("div", { class: "label" }, label), h("div", { class: "value" }, value),
    note ? h("div", { class: "note" }, note) : null];
  return link ? h("a", { class: `figure ${state || ""}`, href: link }, body) : h("div", { class: `figure ${state || ""}` }, body);
}

function table(headings, rows, empty) {
  if (!rows.length) return h("div", { class: "notice" }, empty);
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, headings.map(([text, kind]) => h("th", { class: kind || null, scope: "col" }, text)))),
    h("tbody", {}, rows)));
}

// A table cell with a class (numbers right-aligned, times, errors); plain content gets a plain cell.
class Cell {
  constructor(kind, content) {
    this.kind = kind;
    this.content = content;
  }
}

const cell = (kind, content) => new Cell(kind, content);

function row(cells) {
  return h("tr", {}, cells.map((item) => (item instanceof Cell ? h("td", { class: item.kind }, item.content) : h("td", {}, item))));
}

function pager(parts, params, next) {
  if (!next && !params.get("after")) return null;
  return h("div", { class: "pager" },
    params.get("after") ? h("a", { href: href(parts, { ...Object.fromEntries(params), after: null }) }, "« First page") : null,
    next ? h("a", { href: href(parts, { ...Object.fromEntries(params), after: next }) }, "Next page »") : null);
}

function panel(title, ...content) {
  return h("section", { class: "panel" }, title ? h("h2", {}, title) : null, content);
}

function flushPanel(title, ...content) {
  return h("section", { class: "panel flush" }, title ? h("h2", {}, title) : null, content);
}

// An action's outcome, shown right beside the button the user pressed.
function actionNote() {
  return h("span", { class: "inline-note", role: "status" });
}

function report(note, text, ok) {
  note.className = `inline-note ${ok ? "done" : "error"}`;
  note.textContent = text;
}

// ---- Overview ---------------------------------------------------------------------------------

const HEALTH = {
  healthy: ["Healthy", "Every stored event is processed."],
  lagging: ["Lagging", "Events are waiting longer than a minute to be processed."],
  failing: ["Failing", "Some events failed on every attempt and wait for a retry."],
};

function banner(sync) {
  const [title, text] = HEALTH[sync.status] || [sync.status, ""];
  let detail = text;
  if (sync.rebuild) detail = `Rebuilding the model from the event log: ${count(sync.rebuild.events_done)} of ${count(sync.rebuild.events_total)} events.`;
  else if (sync.status === "lagging") detail = `The oldest pending event has waited ${duration(sync.oldest_pending_age_seconds)}.`;
  else if (sync.status === "failing") detail = `${plural(sync.events.failed, "event")} failed on every attempt.`;
  return h("div", { class: `banner ${sync.status}`, role: "status" }, h("span", { class: "dot" }), h("strong", {}, title),
    h("span", { class: "detail" }, detail),
    sync.status === "failing" ? h("a", { href: href(["events"], { status: "failed" }) }, "Review failed events →") : null);
}

function chart(history) {
  const width = 1100, height = 180, left = 40, right = 8, top = 10, bottom = 24;
  const points = history.history;
  const peak = Math.max(1, ...points.map((p) => Math.max(p.received, p.processed, p.failed)));
  const step = (width - left - right) / Math.max(points.length, 1);
  const y = (value) => top + (height - top - bottom) * (1 - value / peak);
  const base = y(0);
  const parts = [
    svg("line", { class: "axis", x1: left, x2: width - right, y1: base, y2: base }),
    svg("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, count(peak)),
    svg("text", { x: left - 6, y: base, "text-anchor": "end" }, "0"),
  ];
  const line = [];
  points.forEach((point, index) => {
    const x = left + index * step;
    if (point.received) parts.push(svg("rect", { class: "received", x: x + step * 0.1, width: step * 0.8, y: y(point.received), height: base - y(point.received) }));
    if (point.failed) parts.push(svg("rect", { class: "failed", x: x + step * 0.1, width: step * 0.8, y: y(point.failed), height: base - y(point.failed) }));
    line.push(`${(x + step / 2).toFixed(1)},${y(point.processed).toFixed(1)}`);
  });
  parts.push(svg("polyline", { class: "processed", points: line.join(" ") }));
  const label = (index) => new Intl.DateTimeFormat(undefined, { timeStyle: "short" }).format(new Date(points[index].at));
  if (points.length) {
    parts.push(svg("text", { x: left, y: height - 6 }, label(0)));
    parts.push(svg("text", { x: left + (width - left - right) / 2, y: height - 6, "text-anchor": "middle" }, label(Math.floor(points.length / 2))));
    parts.push(svg("text", { x: width - right, y: height - 6, "text-anchor": "end" }, "now"));
  }
  points.forEach((point, index) => {
    parts.push(svg("rect", { class: "hit", x: left + index * step, width: step, y: top, height: base - top },
      svg("title", {}, `${label(index)}: ${point.received} received, ${point.processed} processed, ${point.failed} failed`)));
  });
  const total = (key) => points.reduce((sum, p) => sum + p[key], 0);
  const hours = Math.round((points.length * history.interval_seconds) / 3600);
  return panel(`Activity, last ${hours} hours`,
    h("div", { class: "chart" }, svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `Events per minute over the last ${hours} hours` }, parts)),
    h("div", { class: "legend" }, h("span", { class: "received" }, `Received ${count(total("received"))}`),
      h("span", { class: "processed" }, `Processed ${count(total("processed"))}`),
      h("span", { class: "failed" }, `Failed attempts ${count(total("failed"))}`)));
}

function eventRows(events) {
  return events.map((e) => row([cell("when", when(e.created)),
    [eventLink(e.id, e.type), h("span", { class: "sub mono" }, e.id)], badge(e.status),
    e.customer ? [customerLink(e.customer, e.customer_name || e.customer_email || e.customer),
      e.customer_name || e.customer_email ? h("span", { class: "sub mono" }, e.customer) : null] : h("span", { class: "muted" }, "–")]));
}

async function overview() {
  const [sync, history, segments, latest] = await Promise.all([api("/api/sync"), api("/api/sync/history?minutes=180"),
    api("/api/segments"), api("/api/events?limit=8")]);
  const events = sync.events;
  const age = sync.oldest_pending_age_seconds;
  return [
    pageHead("Overview", sync.last_event_at ? ["Last event received ", when(sync.last_event_at)] : "No event received yet."),
    banner(sync),
    h("div", { class: "figures" },
      figure("Events received", count(events.received), "unique events stored"),
      figure("Processed", count(events.processed + events.ignored),
        events.ignored ? `${count(events.ignored)} of them of a type nobody handles` : "all of a handled type", "ok"),
      figure("Pending", count(events.pending), age === null ? "none waiting" : `oldest waiting ${duration(age)}`,
        age !== null && age > 60 ? "warn" : null, href(["events"], { status: "pending" })),
      figure("Failed", count(events.failed), events.failed ? "waiting for a retry" : "none", events.failed ? "bad" : "ok",
        href(["events"], { status: "failed" })),
      figure("Customers in sync", count(sync.customers_in_sync), "not deleted in Stripe", null, href(["customers"]))),
    chart(history),
    h("div", { class: "grid-2" },
      flushPanel("Latest events", table([["Created"], ["Event"], ["Status"], ["Customer"]], eventRows(latest.events),
        "No event stored yet. Point Stripe's webhooks at /webhooks/stripe."),
      h("div", { class: "pager" }, h("a", { href: href(["events"]) }, "All events »"))),
      flushPanel("Segments", table([["Segment"], ["Customers", "number"]],
        segments.map((s) => row([h("a", { href: href(["segments", s.key]) }, s.name), cell("number", count(s.count))])),
        "No segments."))),
  ];
}

// ---- Segments ---------------------------------------------------------------------------------

async function segmentList() {
  const segments = await api("/api/segments");
  return [
    pageHead("Segments", "Lifecycle segments, recomputed on every event and every minute."),
    flushPanel(null, table([["Segment"], ["Key"], ["Customers", "number"]],
      segments.map((s) => row([h("a", { href: href(["segments", s.key]) }, s.name), h("code", {}, s.key),
        cell("number", count(s.count))])), "No segments.")),
  ];
}

async function segmentMembers(key, params) {
  const query = new URLSearchParams({ expand: "customer", limit: PAGE_SIZE });
  if (params.get("after")) query.set("after", params.get("after"));
  const [segments, page] = await Promise.all([api("/api/segments"),
    api(`/api/segments/${encodeURIComponent(key)}/customers?${query}`)]);
  const segment = segments.find((s) => s.key === key) || { name: key, count: null };
  return [
    pageHead(segment.name, plural(segment.count, "customer"), [h("a", { href: href(["segments"]) }, "Segments"), " / ", key]),
    flushPanel(null, table([["Customer"], ["Email"], ["MRR", "number"], ["In segment since"]],
      page.customers.map((c) => row([
        [customerLink(c.id, c.name || c.email || c.id), c.name || c.email ? h("span", { class: "sub mono" }, c.id) : null],
        c.email || h("span", { class: "muted" }, c.deleted_in_stripe ? "deleted in Stripe" : "–"),
        cell("number", money(c.mrr, c.currency)), cell("when", when(c.entered_at))])),
      "No customer is in this segment right now."),
    pager(["segments", key], params, page.next)),
  ];
}

// ---- Customers --------------------------------------------------------------------------------

async function customerSearch(params) {
  const q = params.get("q") || "";
  const query = new URLSearchParams({ limit: PAGE_SIZE });
  if (q) query.set("q", q);
  if (params.get("after")) query.set("after", params.get("after"));
  const page = await api(`/api/customers?${query}`);
  const input = h("input", { type: "search", name: "q", value: q, placeholder: "cus_…, email or name",
    "aria-label": "Find a customer by id, email or name" });
  const form = h("form", { class: "filters", role: "search", onsubmit: (event) => {
    event.preventDefault();
    location.hash = href(["customers"], { q: input.value.trim() });
  } }, input, h("button", { class: "primary", type: "submit" }, "Search"));
  const empty = q ? `No customer's id, email or name starts with “${q}”.` : "No customers yet: they appear as Stripe sends customer events.";
  return [
    pageHead("Customers", q ? `Id, email or name starting with “${q}”` : "Every customer, by id.", null, form),
    flushPanel(null, table([["Customer"], ["Email"], ["MRR", "number"], ["Customer since"]],
      page.customers.map((c) => row([
        [customerLink(c.id, c.name || c.email || c.id), " ", c.deleted_in_stripe ? badge("deleted in Stripe", "deleted") : null,
          c.delinquent ? badge("delinquent", "failed") : null, c.name || c.email ? h("span", { class: "sub mono" }, c.id) : null],
        c.email || "–", cell("number", money(c.mrr, c.currency)), cell("when", when(c.created_at))])),
      empty),
    pager(["customers"], params, page.next)),
  ];
}

function subscriptionPlan(subscription) {
  return subscription.items.map((item) => {
    const price = item.price || {};
    const every = price.interval ? ` / ${price.interval_count > 1 ? `${price.interval_count} ` : ""}${price.interval}` : "";
    const name = (item.product && item.product.name) || price.nickname || price.id || "item";
    return h("div", {}, `${name}${item.quantity > 1 ? ` × ${item.quantity}` : ""}`,
      h("span", { class: "sub" }, `${money(price.unit_amount, price.currency)}${every}`));
  });
}

const TIMELINE_LABELS = {
  subscription_created: "Subscription created",
  subscription_updated: "Subscription updated",
  subscription_canceled: "Subscription canceled",
  trial_started: "Trial started",
  trial_ended: "Trial ended",
  invoice_created: "Invoice created",
  invoice_paid: "Invoice paid",
  invoice_payment_failed: "Invoice payment failed",
  charge_succeeded: "Payment succeeded",
  charge_failed: "Payment failed",
  charge_refunded: "Payment refunded",
};

function timelineDetail(entry) {
  if (entry.kind === "subscription_updated" && entry.previous_status && entry.previous_status !== entry.status) {
    return [badge(entry.previous_status), " → ", badge(entry.status)];
  }
  if (entry.kind.startsWith("subscription_")) return badge(entry.status || "unknown");
  if (entry.kind === "trial_started" && entry.trial_end) return `ends ${exactFormat.format(new Date(entry.trial_end * 1000))}`;
  if (entry.kind.startsWith("invoice_")) return [entry.number || entry.invoice_id, entry.attempt_count > 1 ? ` · attempt ${entry.attempt_count}` : ""];
  if (entry.kind.startsWith("charge_")) return entry.failure_code ? `failure: ${entry.failure_code}` : entry.charge_id;
  return null;
}

function timelineAmount(entry) {
  if (entry.kind === "charge_refunded") return money(entry.amount_refunded, entry.currency);
  return entry.amount === undefined ? "" : money(entry.amount, entry.currency);
}

async function customerPage(id, params) {
  const query = new URLSearchParams({ limit: PAGE_SIZE });
  if (params.get("after")) query.set("after", params.get("after"));
  // The customer first: for an unknown id, one 404 and no second request that must fail too.
  const customer = await api(`/api/customers/${encodeURIComponent(id)}`);
  const [timeline, segments] = await Promise.all([api(`/api/customers/${encodeURIComponent(id)}/events?${query}`),
    api("/api/segments")]);
  const segmentName = Object.fromEntries(segments.map((s) => [s.key, s.name]));
  const payment = customer.last_payment;
  // Stripe sets a customer's currency with its first subscription or invoice; until an event
  // says so, the subscriptions' currency is the MRR's.
  const currency = customer.currency || (customer.subscriptions.find((s) => s.currency) || {}).currency;
  const title = customer.name || customer.email || customer.id;
  const badges = [customer.deleted_in_stripe ? badge("deleted in Stripe", "deleted") : null,
    customer.delinquent ? badge("delinquent", "failed") : null];
  const attributes = Object.entries(customer.attributes || {});
  return [
    pageHead(title, [customer.email && customer.email !== title ? `${customer.email} · ` : "", h("span", { class: "mono" }, customer.id), " ", badges],
      [h("a", { href: href(["customers"]) }, "Customers"), " / ", customer.id],
      h("a", { href: href(["events"], { customer: customer.id }) }, "All stored events of this customer →")),
    h("div", { class: "figures" },
      figure("MRR", money(customer.mrr, currency), currency ? `${currency.toUpperCase()} per month` : "no subscription yet"),
      figure("Last payment", payment ? money(payment.amount, payment.currency) : "–", payment ? when(payment.at) : "none yet"),
      figure("Last activity", when(customer.last_activity_at), day(customer.last_activity_at)),
      figure("Customer since", when(customer.created_at), day(customer.created_at))),
    h("div", { class: "grid-2" },
      flushPanel("Billing timeline", table([["When"], ["What"], ["Amount", "number"], ["Caused by"]],
        timeline.events.map((entry) => row([cell("when", when(entry.at)),
          [h("div", {}, TIMELINE_LABELS[entry.kind] || entry.kind), h("span", { class: "sub" }, timelineDetail(entry))],
          cell("number", timelineAmount(entry)), [eventLink(entry.event_id, entry.type),
            entry.event_status === "failed" || entry.event_status === "pending" ?
              h("span", { class: "sub" }, badge(entry.event_status), " not applied yet") : null]])),
        "No billing events yet."), pager(["customers", id], params, timeline.next)),
      panel("Details", h("dl", { class: "facts" },
        h("dt", {}, "Segments"), h("dd", {}, customer.segments.length ? h("div", { class: "chips" },
          customer.segments.map((key) => h("a", { class: "chip", href: href(["segments", key]) }, segmentName[key] || key))) : "none"),
        h("dt", {}, "Tags"), h("dd", {}, customer.tags.length ? h("div", { class: "chips" }, customer.tags.map((tag) => h("span", { class: "chip" }, tag))) : "none"),
        attributes.map(([key, value]) => [h("dt", {}, key), h("dd", {}, String(value))]),
        h("dt", {}, "Phone"), h("dd", {}, customer.phone || "–"),
        h("dt", {}, "Last synced"), h("dd", {}, when(customer.last_synced_at))))),
    flushPanel("Subscriptions", table([["Subscription"], ["Status"], ["Plan"], ["MRR", "number"], ["Trial ends"], ["Period ends"]],
      customer.subscriptions.map((s) => row([h("span", { class: "mono" }, s.id), badge(s.status), subscriptionPlan(s),
        cell("number", money(s.mrr, s.currency)), cell("when", when(s.trial_end)), cell("when", when(s.current_period_end))])),
      "No subscriptions.")),
  ];
}

// ---- Events -----------------------------------------------------------------------------------

const STATUSES = ["failed", "pending", "processed", "ignored"];

function retryAllButton(filter, label) {
  const note = actionNote();
  const button = h("button", { type: "button", class: "danger", onclick: async () => {
    button.disabled = true;
    try {
      const answer = await api("/api/events/retry", { method: "POST", body: JSON.stringify(filter) });
      report(note, answer.retried ? `${plural(answer.retried, "event")} queued for retry.` :
        "No failed event matches any more.", true);
    } catch (problem) {
      report(note, problem.message, false);
      button.disabled = false;
    }
  } }, label);
  return [button, note];
}

async function eventList(params) {
  const query = new URLSearchParams({ limit: PAGE_SIZE });
  for (const name of ["status", "type", "customer", "after"]) if (params.get(name)) query.set(name, params.get(name));
  const page = await api(`/api/events?${query}`);
  const status = h("select", { name: "status", "aria-label": "Status" }, h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s)));
  const type = h("input", { name: "type", value: params.get("type") || "", placeholder: "invoice.* or an exact type" });
  const customer = h("input", { name: "customer", value: params.get("customer") || "", placeholder: "cus_…" });
  const form = h("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    location.hash = href(["events"], { status: status.value, type: type.value.trim(), customer: customer.value.trim() });
  } }, h("label", { class: "field" }, "Status", status), h("label", { class: "field" }, "Type", type),
  h("label", { class: "field" }, "Customer", customer), h("button", { class: "primary", type: "submit" }, "Filter"),
  params.toString() ? h("a", { href: href(["events"]) }, "Clear") : null);
  const filter = {};
  if (params.get("type")) filter.type = params.get("type");
  if (params.get("customer")) filter.customer = params.get("customer");
  const everyLabel = filter.type || filter.customer ? "Retry every failed event matching these filters" : "Retry every failed event";
  const retryAll = params.get("status") === "failed" && page.events.length ?
    h("div", { class: "actions" }, retryAllButton(filter, everyLabel)) : null;
  return [
    pageHead("Events", "Every stored Stripe event, newest first.", null, retryAll),
    panel(null, form),
    flushPanel(null, table([["Created"], ["Event"], ["Status"], ["Customer"], ["Attempts", "number"], ["Last error"]],
      eventRows(page.events).map((tr, index) => {
        const e = page.events[index];
        tr.append(h("td", { class: "number" }, count(e.attempts)),
          h("td", {}, e.last_error ? h("span", { class: "error-text", title: e.last_error }, e.last_error) : ""));
        return tr;
      }),
      params.toString() ? "No stored event matches these filters." : "No event stored yet. Point Stripe's webhooks at /webhooks/stripe."),
    pager(["events"], params, page.next)),
  ];
}

// Stripe's times are Unix seconds: the readable time on hover.
const TIME_KEY = /^(created|date|start_date)$|_(at|start|end|date|anchor)$/;

function jsonScalar(value, key) {
  if (value === null) return h("span", { class: "null" }, "null");
  const stamp = typeof value === "number" && TIME_KEY.test(key || "") && value > 1e9 && value < 1e10;
  return h("span", { class: typeof value, title: stamp ? exact(new Date(value * 1000).toISOString().replace(".000Z", "Z")) : null },
    JSON.stringify(value));
}

// The payload as a tree of <details>: down to data.object open, deeper levels a click away.
function jsonTree(value, key, depth) {
  const label = key === null ? [] : [h("span", { class: "key" }, JSON.stringify(key)), ": "];
  if (value === null || typeof value !== "object") return h("div", { class: "line" }, label, jsonScalar(value, key));
  const list = Array.isArray(value);
  const entries = list ? value.map((item, index) => [null, item, index]) : Object.entries(value);
  const [open, close] = list ? ["[", "]"] : ["{", "}"];
  if (!entries.length) return h("div", { class: "line" }, label, open + close);
  return h("details", { open: depth < 3 },
    h("summary", {}, label, open, h("span", { class: "count" }, ` ${entries.length} ${list ? "items" : "keys"} `), close),
    entries.map(([name, item]) => jsonTree(item, name, depth + 1)));
}

function customerOf(payload) {
  const object = (payload && payload.data && payload.data.object) || {};
  if (object.object === "customer") return object.id;
  return typeof object.customer === "string" ? object.customer : object.customer && object.customer.id;
}

async function eventPage(id) {
  const event = await api(`/api/events/${encodeURIComponent(id)}`);
  const payload = event.payload || {};
  const object = (payload.data && payload.data.object) || {};
  const customer = customerOf(payload);
  const status = badge(event.status);
  const statusFact = h("dd", {}, event.status);
  const actions = [];
  if (event.status === "failed") {
    const note = actionNote();
    const retry = h("button", { type: "button", class: "primary", onclick: async () => {
      retry.disabled = true;
      try {
        await api(`/api/events/${encodeURIComponent(id)}/retry`, { method: "POST" });
        status.replaceWith(badge("pending"));
        statusFact.textContent = "pending";
        report(note, "Queued for retry: the worker picks it up within seconds.", true);
      } catch (problem) {
        report(note, problem.message, false);
        retry.disabled = false;
      }
    } }, "Retry this event");
    actions.push(h("div", { class: "actions" }, retry, retryAllButton({ type: event.type }, `Retry every failed ${event.type}`), note));
  }
  const created = payload.created ? new Date(payload.created * 1000).toISOString().replace(".000Z", "Z") : null;
  return [
    pageHead(event.type, [h("span", { class: "mono" }, event.id), " ", status],
      [h("a", { href: href(["events"]) }, "Events"), " / ", event.id],
      h("a", { href: href(["events"], { type: event.type, status: event.status === "failed" ? "failed" : null }) },
        event.status === "failed" ? `Failed events of this type →` : `Events of this type →`)),
    h("div", { class: "grid-2" },
      panel("Processing",
        h("dl", { class: "facts" },
          h("dt", {}, "Status"), statusFact,
          h("dt", {}, "Attempts"), h("dd", {}, count(event.attempts)),
          h("dt", {}, "Created at Stripe"), h("dd", {}, when(created)),
          h("dt", {}, "Received"), h("dd", {}, when(event.received_at)),
          h("dt", {}, "Processed"), h("dd", {}, when(event.processed_at))),
        event.last_error ? [h("h2", { class: "gap" }, "Last error"), h("pre", { class: "error-box" }, event.last_error)] : null,
        actions),
      panel("Stripe object", h("dl", { class: "facts" },
        h("dt", {}, "Customer"), h("dd", {}, customer ? customerLink(customer) : "–"),
        h("dt", {}, "Object"), h("dd", {}, object.object ? `${object.object} ` : "", h("span", { class: "mono" }, object.id || "–")),
        h("dt", {}, "API version"), h("dd", {}, payload.api_version || "–"),
        h("dt", {}, "Mode"), h("dd", {}, payload.livemode ? "live" : "test")))),
    panel("Payload", h("div", { class: "json" }, jsonTree(payload, null, 0))),
  ];
}

// ---- routing ----------------------------------------------------------------------------------

function viewFor(parts, params) {
  const [section, id] = parts;
  if (!section || section === "overview") return ["overview", () => overview()];
  if (section === "segments") return ["segments", id ? () => segmentMembers(id, params) : () => segmentList()];
  if (section === "customers") return ["customers", id ? () => customerPage(id, params) : () => customerSearch(params)];
  if (section === "events") return ["events", id ? () => eventPage(id) : () => eventList(params)];
  return ["", async () => { throw new ApiError(404, "There is no such page here."); }];
}

const NOT_FOUND = {
  customers: (id) => [`No customer with id ${id}. `, h("a", { href: href(["customers"], { q: id }) }, "Search for it »")],
  events: (id) => [`No stored event with id ${id}. `, h("a", { href: href(["events"]) }, "All events »")],
  segments: (id) => [`No segment ${id}. `, h("a", { href: href(["segments"]) }, "All segments »")],
};

async function render(quiet) {
  const { parts, params } = parseFragment();
  const [section, load] = viewFor(parts, params);
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const mine = ++renderCount;
  if (!quiet) $("view").replaceChildren(h("div", { class: "loading" }, "Loading…"));
  try {
    const nodes = await load();
    if (mine !== renderCount) return;
    $("view").replaceChildren(...nodes);
    const heading = $("view").querySelector("h1");
    document.title = heading ? `${heading.textContent} · stripeline` : "stripeline";
  } catch (problem) {
    if (mine !== renderCount) return;
    if (problem.status === 401) return signOut(problem.message);
    const missing = problem.status === 404 && NOT_FOUND[section] && parts.length > 1;
    $("view").replaceChildren(
      pageHead(section ? section[0].toUpperCase() + section.slice(1) : "Not found", null),
      h("div", { class: "notice error", role: "alert" }, missing ? NOT_FOUND[section](parts[1]) : [problem.message, " ",
        h("button", { type: "button", onclick: () => render(false) }, "Try again")]));
    document.title = "stripeline";
  }
}

function signedIn(yes) {
  $("signin").hidden = yes;
  $("nav").hidden = !yes;
  $("logout").hidden = !yes;
  $("view").hidden = !yes;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("view").replaceChildren();
  signedIn(false);
  $("login-problem").hidden = !message;
  $("login-problem").textContent = message || "";
  $("token").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    try {
      await api("/api/sync");
    } catch (problem) {
      return signOut(problem.message);
    }
    $("token").value = "";
    $("login-problem").hidden = true;
    signedIn(true);
    render(false);
  });
  $("logout").addEventListener("click", () => signOut(null));
  window.addEventListener("hashchange", () => { if (sessionStorage.getItem(TOKEN_KEY)) render(false); });
  setInterval(() => {
    const { parts } = parseFragment();
    const idle = document.activeElement === document.body || document.activeElement === null;
    if (sessionStorage.getItem(TOKEN_KEY) && !parts.length && idle && !document.hidden) render(true);
  }, REFRESH_MS);
  if (sessionStorage.getItem(TOKEN_KEY)) {
    signedIn(true);
    render(false);
  } else {
    signOut(null);
  }
});
