// The operator page: plain DOM over the operator API (/admin/v1, CONTRACT §8).
//
// The token lives in this tab's sessionStorage only: never in a URL, local storage or a log.
// Everything shown comes from the API; text is set with textContent, never parsed as HTML.

const TOKEN_STORAGE = "meterapi.admin_token";
const $ = (id) => document.getElementById(id);

const tokenStore = {
  get() {
    try { return window.sessionStorage.getItem(TOKEN_STORAGE); } catch { return null; }
  },
  set(token) { window.sessionStorage.setItem(TOKEN_STORAGE, token); },
  clear() {
    try { window.sessionStorage.removeItem(TOKEN_STORAGE); } catch { /* nothing stored */ }
  },
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${tokenStore.get() || ""}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "http_error",
      error.message || `The service answered ${response.status}.`);
  }
  return data;
}

function notify(text, kind = "info") {
  const notice = $("notice");
  notice.textContent = text;
  notice.className = `notice ${kind}`;
  notice.hidden = !text;
}

function failed(error) {
  if (error instanceof ApiError && error.code === "invalid_admin_token") {
    signOut();
    notify("The operator token was not accepted. Paste it again.", "error");
    return;
  }
  notify(error.message || String(error), "error");
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (className) td.className = className;
  row.append(td);
  return td;
}

function button(label, onClick, extra = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `small ${extra}`.trim();
  b.textContent = label;
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await onClick(); } catch (error) { failed(error); } finally { b.disabled = false; }
  });
  return b;
}

// A column of a table: its header, its cell's text, and the cell's class (a string, or a function
// of the row's item). `actions` is the last column's buttons instead of text.
const column = (header, text, className) => ({ header, text, className });
const actions = (buttons) => ({ header: "Actions", text: () => "", className: "actions", buttons });

// A table, in the page's `<div data-table="name">`: a header row from the same columns its rows
// are filled with, and an empty body (id `table.body`) for `fillRows`.
function addTable(name, table) {
  const element = document.createElement("table");
  element.className = "keys";
  const header = element.createTHead().insertRow();
  for (const { header: text } of table.columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = text;
    header.append(th);
  }
  element.createTBody().id = table.body;
  document.querySelector(`[data-table="${name}"]`).append(element);
}

// One row per item in the table's body, after the rows already there when `append`; `table.row`
// may mark the row. A table left empty says `table.empty` across its columns.
function fillRows(table, items, append = false) {
  const body = $(table.body);
  if (!append) body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    if (table.row) table.row(row, item);
    for (const { text, className, buttons } of table.columns) {
      const td = cell(row, text(item), typeof className === "function" ? className(item) : className);
      if (buttons) td.append(...buttons(item));
    }
    body.append(row);
  }
  if (body.children.length) return;
  const row = document.createElement("tr");
  row.className = "empty-row";
  cell(row, table.empty).colSpan = table.columns.length;
  body.append(row);
}

const when = (iso) => (iso ? new Date(iso).toISOString().replace(".000Z", "Z") : "-");
// Amounts are in the currency's minor units (cents for USD, none for JPY).
function money(m) {
  if (!m) return "-";
  if (!m.currency) return `${m.amount} (minor units)`;
  try {
    const format = new Intl.NumberFormat("en-US", { style: "currency", currency: m.currency });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(m.amount / 10 ** digits);
  } catch {
    return `${m.amount} ${m.currency} (minor units)`;
  }
}

// -- the tables -------------------------------------------------------------------------------

// Every table of the page, by the name its div gives: its tbody's id, its columns, what it says
// when empty.
const TABLES = {
  customers: {
    body: "customers-body",
    row: (row, c) => { row.dataset.customer = c.customer_id; },
    columns: [
      column("Customer", (c) => c.customer_id, "mono"),
      column("Email", (c) => c.email),
      column("Subscription", (c) => c.subscription_status),
      column("Access", (c) => c.access, (c) => `access-${c.access}`),
      column("Units this period", (c) => c.units_this_period),
      column("Active keys", (c) => c.active_keys),
      actions((c) => [button("Open", () => showCustomer(c.customer_id))]),
    ],
    empty: "No customers yet.",
  },
  keys: {
    body: "customer-keys",
    columns: [
      column("Name", (k) => k.name),
      column("Key", (k) => `${k.prefix}…${k.last4}`, "mono"),
      column("Created", (k) => when(k.created_at)),
      column("Last used", (k) => when(k.last_used_at)),
      column("Status", (k) => (k.revoked_at ? "revoked" : (k.expires_at ? `expires ${when(k.expires_at)}` : "active"))),
      actions((k) => (k.revoked_at ? [] : [button("Revoke", () => revokeKey(openCustomer, k.id), "secondary")])),
    ],
    empty: "No keys.",
  },
  reports: {
    body: "reports-body",
    columns: [
      column("Id", (r) => r.id),
      column("Customer", (r) => r.customer_id, "mono"),
      column("Units", (r) => r.units),
      column("Identifier", (r) => r.identifier, "mono"),
      column("Error", (r) => r.last_error, "error-text"),
      actions((r) => [button("Retry", () => retryReport(r))]),
    ],
    empty: "No parked reports.",
  },
  events: {
    body: "events-body",
    columns: [
      column("Event", (e) => e.id, "mono"),
      column("Type", (e) => e.type),
      column("Attempts", (e) => e.attempts),
      column("Error", (e) => e.last_error, "error-text"),
      actions((e) => [button("Replay", () => replayEvent(e))]),
    ],
    empty: "No failed events.",
  },
  outbound: {
    body: "outbound-body",
    columns: [
      column("Event", (e) => e.id, "mono event-id"),
      column("Type", (e) => e.type),
      column("Customer", (e) => e.customer_id, "mono"),
      column("Status", (e) => e.status, (e) => `outbound-${e.status}`),
      column("Attempts", (e) => e.attempts),
      column("Next attempt", (e) => when(e.next_attempt_at)),
      column("Error", (e) => e.last_error, "error-text"),
      actions((e) => [button("Retry", () => retryOutbound(e))]),
    ],
    empty: "No undelivered events.",
  },
  reconcile: {
    body: "reconcile-body",
    row: (row, r) => { if (r.drift !== 0) row.className = "drift"; },
    columns: [
      column("Customer", (r) => r.customer_id, "mono"),
      column("Ledger", (r) => r.ledger_units),
      column("Pending", (r) => r.pending_units),
      column("Stripe", (r) => r.stripe_units),
      column("Drift", (r) => (r.drift > 0 ? `+${r.drift}` : r.drift)),
    ],
    empty: "No customers.",
  },
};

// -- customers --------------------------------------------------------------------------------

let lastCustomer = null;
let openCustomer = null;

async function loadCustomers(append = false) {
  const params = new URLSearchParams({ limit: "20" });
  if (append && lastCustomer) params.set("starting_after", lastCustomer);
  const page = await api("GET", `/admin/v1/customers?${params}`);
  fillRows(TABLES.customers, page.data, append);
  lastCustomer = page.data.length ? page.data[page.data.length - 1].customer_id : lastCustomer;
  $("more-customers").hidden = !page.has_more;
}

async function showCustomer(customerId) {
  const c = await api("GET", `/admin/v1/customers/${encodeURIComponent(customerId)}`);
  openCustomer = c.customer_id;
  for (const row of $("customers-body").children) {
    row.classList.toggle("selected", row.dataset.customer === c.customer_id);
  }
  $("customer-title").textContent =
    `${c.customer_id}${c.email ? ` (${c.email})` : ""}: ${c.subscription_status || "no subscription"}, access ${c.access}`;
  $("customer-units").textContent = String(c.usage.units);
  $("customer-pending").textContent = String(c.usage.pending_units);
  $("customer-spent").textContent = money(c.limits.spent_this_period);
  $("customer-period").textContent =
    `Billing period ${when(c.usage.period.start)} to ${when(c.usage.period.end)}`;
  fillRows(TABLES.keys, c.keys);
  const limits = c.limits;
  $("limit-rate").value = limits.rate_limit_overridden ? (limits.rate_limit || "none") : "";
  $("limit-rate-default").textContent = limits.rate_limit_overridden
    ? `This customer's own rate limit: ${limits.rate_limit || "none"}.`
    : `Default applies: ${limits.rate_limit || "no rate limit"}.`;
  $("limit-cap").value = limits.monthly_spend_cap ? String(limits.monthly_spend_cap.amount) : "";
  $("customer").hidden = false;
}

async function revokeKey(customerId, keyId) {
  const path = `/admin/v1/customers/${encodeURIComponent(customerId)}/keys/${encodeURIComponent(keyId)}`;
  try {
    await api("DELETE", path);
  } catch (error) {
    if (!(error instanceof ApiError && error.code === "last_active_key")) throw error;
    if (!window.confirm("This is the customer's only active key. Revoke it anyway?")) return;
    await api("DELETE", `${path}?force=true`);
  }
  notify(`Key ${keyId} revoked.`, "success");
  await Promise.all([showCustomer(customerId), loadCustomers()]);
}

async function saveLimits(event) {
  event.preventDefault();
  if (!openCustomer) return;
  const rate = $("limit-rate").value.trim();
  const cap = $("limit-cap").value.trim();
  const body = {
    rate_limit: rate === "" ? "default" : (rate.toLowerCase() === "none" ? null : rate),
    monthly_spend_cap: cap === "" ? null : { amount: Number(cap) },
  };
  try {
    await api("PUT", `/admin/v1/customers/${encodeURIComponent(openCustomer)}/limits`, body);
    notify("Limits saved.", "success");
    await showCustomer(openCustomer);
  } catch (error) {
    failed(error);
  }
}

// -- reports, Stripe events, outbound webhooks, reconciliation --------------------------------

async function loadReports() {
  const page = await api("GET", "/admin/v1/reports?status=parked&limit=100");
  fillRows(TABLES.reports, page.data);
}

async function retryReport(r) {
  await api("POST", `/admin/v1/reports/${r.id}/retry`);
  notify(`Report ${r.id} is pending again under ${r.identifier}.`, "success");
  await loadReports();
}

async function loadEvents() {
  const page = await api("GET", "/admin/v1/stripe-events?status=failed&limit=100");
  fillRows(TABLES.events, page.data);
}

async function replayEvent(e) {
  const result = await api("POST", `/admin/v1/stripe-events/${encodeURIComponent(e.id)}/replay`);
  notify(`Event ${e.id}: ${result.outcome}${result.last_error ? ` (${result.last_error})` : ""}.`,
    result.outcome === "failed" ? "error" : "success");
  await Promise.all([loadEvents(), loadCustomers()]);
}

async function loadOutbound() {
  const page = await api("GET", "/admin/v1/webhooks/outbound?status=undelivered&limit=100");
  fillRows(TABLES.outbound, page.data);
  $("outbound-more").hidden = !page.has_more;
}

async function retryOutbound(e) {
  await api("POST", `/admin/v1/webhooks/outbound/${encodeURIComponent(e.id)}/retry`);
  notify(`Event ${e.id} is pending again under the same webhook-id.`, "success");
  await loadOutbound();
}

async function runReconcile() {
  $("reconcile-summary").textContent = "Reading Stripe's meter event summaries…";
  const result = await api("GET", "/admin/v1/reconciliation");
  fillRows(TABLES.reconcile, result.data);
  const drifting = result.data.filter((r) => r.drift !== 0).length;
  $("reconcile-summary").textContent =
    `${result.data.length} customer(s) reconciled; ${drifting} drifting.`;
}

// -- sign-in ----------------------------------------------------------------------------------

function signOut() {
  tokenStore.clear();
  $("signed-in").hidden = true;
  $("signed-out").hidden = false;
  $("sign-out").hidden = true;
}

async function signedIn() {
  $("signed-out").hidden = true;
  $("signed-in").hidden = false;
  $("sign-out").hidden = false;
  try {
    await loadCustomers();
    await Promise.all([loadReports(), loadEvents(), loadOutbound()]);
  } catch (error) {
    failed(error);
  }
}

function guarded(work) {
  return async () => {
    try { await work(); } catch (error) { failed(error); }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  for (const [name, table] of Object.entries(TABLES)) addTable(name, table);
  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("admin-token").value.trim();
    if (!token) {
      notify("Paste the operator token.", "error");
      return;
    }
    tokenStore.set(token);
    $("admin-token").value = "";
    notify("");
    await signedIn();
  });
  $("sign-out").addEventListener("click", () => { signOut(); notify("Signed out.", "info"); });
  $("reload-customers").addEventListener("click", guarded(() => loadCustomers()));
  $("more-customers").addEventListener("click", guarded(() => loadCustomers(true)));
  $("close-customer").addEventListener("click", () => { $("customer").hidden = true; openCustomer = null; });
  $("limits-form").addEventListener("submit", saveLimits);
  $("reload-reports").addEventListener("click", guarded(loadReports));
  $("reload-events").addEventListener("click", guarded(loadEvents));
  $("reload-outbound").addEventListener("click", guarded(loadOutbound));
  $("run-reconcile").addEventListener("click", guarded(runReconcile));
  if (tokenStore.get()) signedIn(); else signOut();
});
