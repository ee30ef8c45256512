// The "Spending limit" card and the spend banner, from GET /v1/limits (CONTRACT §7).
//
// The customer sees their monthly spend cap, this period's spend against it, and the rate limit
// of their keys; they set, change or clear the cap in major units (dollars), sent in minor
// units. The banner shows the highest alert threshold the spend has crossed. A key in its
// rotation grace period may read the limits, not change them: the card is then read-only.

import { api } from "./api.js";
import { formatMoney, parseAmount } from "./money.js";

const $ = (id) => document.getElementById(id);

/** The highest of `thresholds` (percentages) that `spent` has reached of `cap`, or null. */
export function crossedThreshold(spent, cap, thresholds) {
  if (cap === null || cap === undefined || spent === null || spent === undefined) return null;
  const reached = (thresholds || []).filter((t) => spent * 100 >= cap * t);
  return reached.length ? Math.max(...reached) : null;
}

/** How much of the cap is spent, as a whole percentage for people (a 0 cap is full at once). */
function percentOf(spent, cap) {
  if (cap <= 0) return 100;
  return Math.floor((spent * 100) / cap);
}

function bannerText(threshold, spentText, capText) {
  if (threshold >= 100) {
    return (
      `You have reached your monthly spending limit of ${capText}. Paid API calls are ` +
      "refused until the next billing period starts or you raise the limit."
    );
  }
  return (
    `You have used ${threshold}% of your monthly spending limit: ${spentText} of ${capText}. ` +
    "Paid API calls are refused once the limit is reached."
  );
}

export function createLimitsCard({ busy, notify }) {
  let currency = "usd";

  function setFieldError(text) {
    const input = $("limits-amount");
    $("limits-error").textContent = text || "";
    $("limits-error").hidden = !text;
    if (text) {
      input.setAttribute("aria-invalid", "true");
    } else {
      input.removeAttribute("aria-invalid");
    }
  }

  function renderBar(spent, cap) {
    const bar = $("limits-bar");
    const fill = $("limits-bar-fill");
    if (cap === null || spent === null) {
      bar.hidden = true;
      return;
    }
    const percent = percentOf(spent, cap);
    fill.style.width = `${Math.min(percent, 100)}%`;
    fill.className = `spend-fill${percent >= 100 ? " over" : percent >= 80 ? " high" : ""}`;
    bar.setAttribute("aria-valuenow", String(Math.min(percent, 100)));
    bar.setAttribute(
      "aria-valuetext",
      `${formatMoney(spent, currency)} of ${formatMoney(cap, currency)} (${percent}%)`,
    );
    bar.hidden = false;
  }

  function renderBanner(limits, spent, cap) {
    const banner = $("spend-banner");
    const threshold = crossedThreshold(spent, cap, limits.alert_thresholds);
    if (threshold === null) {
      banner.hidden = true;
      banner.textContent = "";
      delete banner.dataset.threshold;
      return;
    }
    banner.textContent = bannerText(
      threshold,
      formatMoney(spent, currency),
      formatMoney(cap, currency),
    );
    banner.className = `banner ${threshold >= 100 ? "error" : "warn"}`;
    banner.dataset.threshold = String(threshold);
    banner.hidden = false;
  }

  function render(limits) {
    const capMoney = limits.monthly_spend_cap;
    const spentMoney = limits.spent_this_period;
    currency = (spentMoney && spentMoney.currency) || (capMoney && capMoney.currency) || currency;
    const cap = capMoney ? Number(capMoney.amount) : null;
    const spent = spentMoney ? Number(spentMoney.amount) : null;

    $("limits-cap").textContent = cap === null ? "No limit" : formatMoney(cap, currency);
    $("limits-spent").textContent =
      spent === null ? "Unavailable right now" : formatMoney(spent, currency);
    $("limits-rate").textContent = limits.rate_limit ? String(limits.rate_limit) : "No rate limit";
    let summary = "";
    if (cap !== null && spent !== null) {
      summary = `${formatMoney(spent, currency)} of ${formatMoney(cap, currency)} spent (${percentOf(spent, cap)}%).`;
    } else if (cap === null) {
      summary = "No spending limit: paid calls are never refused because of spend.";
    }
    $("limits-summary").textContent = summary;
    const warning = $("limits-warning");
    warning.textContent = limits.warning ? String(limits.warning) : "";
    warning.hidden = !limits.warning;
    renderBar(spent, cap);
    renderBanner(limits, spent, cap);

    const editable = limits.can_change !== false;
    $("limits-form").hidden = !editable;
    $("limits-readonly").hidden = editable;
    $("limits-currency").textContent = String(currency).toUpperCase();
    $("limits-save").textContent = cap === null ? "Set limit" : "Change limit";
    $("limits-clear").hidden = cap === null;
  }

  async function load() {
    const limits = await busy(null, () => api.limits());
    if (limits) render(limits);
  }

  async function save(event) {
    event.preventDefault();
    const parsed = parseAmount($("limits-amount").value, currency);
    if (parsed.error) {
      setFieldError(parsed.error);
      $("limits-amount").focus();
      return;
    }
    setFieldError("");
    const saved = await busy(event.submitter, () => api.setSpendCap(parsed.amount));
    if (!saved) return;
    $("limits-amount").value = "";
    render(saved);
    const capText = formatMoney(parsed.amount, currency);
    notify(
      parsed.amount === 0
        ? `Spending limit set to ${capText}: paid calls are refused until you raise it.`
        : `Spending limit set to ${capText} a month.`,
      "success",
    );
  }

  async function clear(event) {
    setFieldError("");
    const saved = await busy(event.currentTarget, () => api.setSpendCap(null));
    if (!saved) return;
    render(saved);
    notify("Spending limit removed: your spend is not capped.", "success");
    $("limits-amount").focus(); // the focused button just disappeared
  }

  function reset() {
    setFieldError("");
    $("limits-amount").value = "";
    $("spend-banner").hidden = true;
  }

  $("limits-form").addEventListener("submit", save);
  $("limits-clear").addEventListener("click", clear);
  $("limits-amount").addEventListener("input", () => setFieldError(""));

  return { load, reset };
}
