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

// One row in the table body `body` per item, its cells added by `addCells(row, item)`, after
// the rows already there when `append`; a table left empty says `emptyText` across its columns.
function fillRows(body, items, addCells, emptyText, append = false) {
  if (!append) body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    addCells(row, item);
    body.append(row);
  }
  if (body.children.length) return;
  const row = document.createElement("tr");
  row.className = "empty-row";
  cell(row, emptyText).colSpan = body.closest("table").tHead.rows[0].cells.length;
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

// -- customers --------------------------------------------------------------------------------

let lastCustomer = null;
let openCustomer = null;

async function loadCustomers(append = false) {
  const params = new URLSearchParams({ limit: "20" });
  if (append && lastCustomer) params.set("starting_after", lastCustomer);
  const page = await api("GET", `/admin/v1/customers?${params}`);
  fillRows($("customers-body"), page.data, (row, c) => {
    row.dataset.customer = c.customer_id;
    cell(row, c.customer_id, "mono");
    cell(row, c.email);
    cell(row, c.subscription_status);
    cell(row, c.access, `access-${c.access}`);
    cell(row, c.units_this_period);
    cell(row, c.active_keys);
    cell(row, "", "actions").append(button("Open", () => showCustomer(c.customer_id)));
  }, "No customers yet.", append);
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
  fillRows($("customer-keys"), c.keys, (row, k) => {
    cell(row, k.name);
    cell(row, `${k.prefix}…${k.last4}`, "mono");
    cell(row, when(k.created_at));
    cell(row, when(k.last_used_at));
    const status = k.revoked_at ? "revoked" : (k.expires_at ? `expires ${when(k.expires_at)}` : "active");
    cell(row, status);
    const actions = cell(row, "", "actions");
    if (!k.revoked_at) {
      actions.append(button("Revoke", () => revokeKey(c.customer_id, k.id), "secondary"));
    }
  }, "No keys.");
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
  fillRows($("reports-body"), page.data, (row, r) => {
    cell(row, r.id);
    cell(row, r.customer_id, "mono");
    cell(row, r.units);
    cell(row, r.identifier, "mono");
    cell(row, r.last_error, "error-text");
    cell(row, "", "actions").append(button("Retry", async () => {
      await api("POST", `/admin/v1/reports/${r.id}/retry`);
      notify(`Report ${r.id} is pending again under ${r.identifier}.`, "success");
      await loadReports();
    }));
  }, "No parked reports.");
}

async function loadEvents() {
  const page = await api("GET", "/admin/v1/stripe-events?status=failed&limit=100");
  fillRows($("events-body"), page.data, (row, e) => {
    cell(row, e.id, "mono");
    cell(row, e.type);
    cell(row, e.attempts);
    cell(row, e.last_error, "error-text");
    cell(row, "", "actions").append(button("Replay", async () => {
      const result = await api("POST", `/admin/v1/stripe-events/${encodeURIComponent(e.id)}/replay`);
      notify(`Event ${e.id}: ${result.outcome}${result.last_error ? ` (${result.last_error})` : ""}.`,
        result.outcome === "failed" ? "error" : "success");
      await Promise.all([loadEvents(), loadCustomers()]);
    }));
  }, "No failed events.");
}

async function loadOutbound() {
  const page = await api("GET", "/admin/v1/webhooks/outbound?status=undelivered&limit=100");
  fillRows($("outbound-body"), page.data, (row, e) => {
    cell(row, e.id, "mono");
    cell(row, e.type);
    cell(row, e.customer_id, "mono");
    cell(row, e.status, `outbound-${e.status}`);
    cell(row, e.attempts);
    cell(row, when(e.next_attempt_at));
    cell(row, e.last_error, "error-text");
    cell(row, "", "actions").append(button("Retry", async () => {
      await api("POST", `/admin/v1/webhooks/outbound/${encodeURIComponent(e.id)}/retry`);
      notify(`Event ${e.id} is pending again under the same webhook-id.`, "success");
      await loadOutbound();
    }));
  }, "No undelivered events.");
  $("outbound-more").hidden = !page.has_more;
}

async function runReconcile() {
  $("reconcile-summary").textContent = "Reading Stripe's meter event summaries…";
  const result = await api("GET", "/admin/v1/reconciliation");
  let drifting = 0;
  fillRows($("reconcile-body"), result.data, (row, r) => {
    if (r.drift !== 0) {
      row.className = "drift";
      drifting += 1;
    }
    cell(row, r.customer_id, "mono");
    cell(row, r.ledger_units);
    cell(row, r.pending_units);
    cell(row, r.stripe_units);
    cell(row, r.drift > 0 ? `+${r.drift}` : r.drift);
  }, "No customers.");
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
