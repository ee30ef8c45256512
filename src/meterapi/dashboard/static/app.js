// The dashboard: subscribe, receive the key once, then usage, invoice, spending limit, keys
// and billing. The keys card is keys.js, the spending limit card limits.js.
// Everything from the server goes into the page with textContent, never as HTML.

import { api, claimStore, keyStore } from "./api.js";
import { daysOfPeriod, renderChart } from "./chart.js";
import { createKeysCard } from "./keys.js";
import { createLimitsCard } from "./limits.js";
import {
  CHECKOUT_CANCELLED,
  CHECKOUT_EXPIRED,
  CHECKOUT_MESSAGES,
  CLAIM_MESSAGES,
  CLAIM_RETRYABLE,
  describeError,
  INVALID_EMAIL,
  isExpiredCheckout,
  isValidEmail,
} from "./messages.js";
import { formatMoney } from "./money.js";

const $ = (id) => document.getElementById(id);
const numberFormat = new Intl.NumberFormat();
const formatNumber = (n) => numberFormat.format(Number(n) || 0);
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone: "UTC" });
const CLAIM_ATTEMPTS = 4;
const CLAIM_RETRY_MS = 1500;

// -- messages ----------------------------------------------------------------------------------

function notify(text, kind = "info") {
  const notice = $("notice");
  notice.textContent = text;
  notice.className = `notice ${kind}`;
  notice.hidden = !text;
}

function showError(error, overrides) {
  notify(describeError(error, overrides), "error");
  // A key that stopped working (revoked, expired) cannot do anything more here.
  if (error.code === "invalid_api_key" && keyStore.get()) {
    keyStore.clear();
    showSignedIn(false);
  }
}

/** Run `work` with `button` disabled, showing any failure; resolves to its result, or to
 * undefined when it failed (a 204's result is null). */
async function busy(button, work, overrides) {
  if (button) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
  }
  try {
    return await work();
  } catch (error) {
    showError(error, overrides);
    return undefined;
  } finally {
    if (button) {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }
}

// -- the key shown once ------------------------------------------------------------------------

function showNewKey(plaintext, intro) {
  $("new-key-value").textContent = plaintext;
  $("new-key").hidden = false;
  notify(intro, "success");
  $("copy-key").focus();
}

function hideNewKey() {
  $("new-key-value").textContent = "";
  $("new-key").hidden = true;
}

async function copyKey() {
  const text = $("new-key-value").textContent;
  try {
    await navigator.clipboard.writeText(text);
    notify("Key copied to the clipboard.", "success");
    return;
  } catch {
    /* no clipboard API here (e.g. plain http): select it for the customer instead */
  }
  const range = document.createRange();
  range.selectNodeContents($("new-key-value"));
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  const copied = document.execCommand && document.execCommand("copy");
  notify(
    copied ? "Key copied to the clipboard." : "The key is selected: copy it with Ctrl+C or ⌘C.",
    copied ? "success" : "info",
  );
}

// -- views -------------------------------------------------------------------------------------

function showSignedIn(signedIn) {
  $("signed-in").hidden = !signedIn;
  $("signed-out").hidden = signedIn;
  $("sign-out").hidden = !signedIn;
}

// Made in start(), once the page's elements exist.
let keysCard = null;
let limitsCard = null;

async function enterDashboard() {
  showSignedIn(true);
  await Promise.all([loadUsage(), keysCard.load(), limitsCard.load()]);
}

function signOut() {
  keyStore.clear();
  hideNewKey();
  keysCard.reset();
  $("usage-chart").replaceChildren();
  limitsCard.reset();
  showSignedIn(false);
  notify("You are signed out. Your key was removed from this browser tab.", "info");
  $("sign-in-key").focus();
}

// -- usage -------------------------------------------------------------------------------------

function renderUsage(usage) {
  $("usage-units").textContent = formatNumber(usage.units);
  $("usage-pending").textContent = formatNumber(usage.pending_units);
  const invoice = usage.upcoming_invoice;
  $("usage-invoice").textContent = invoice
    ? formatMoney(invoice.amount_due, invoice.currency)
    : "Unavailable right now";
  const period = usage.period || {};
  const start = new Date(period.start);
  const end = new Date(period.end);
  $("usage-period").textContent =
    Number.isNaN(start.getTime()) || Number.isNaN(end.getTime())
      ? ""
      : `Billing period ${dateFormat.format(start)} to ${dateFormat.format(end)} (UTC).`;
  const warning = $("usage-warning");
  warning.textContent = usage.warning ? String(usage.warning) : "";
  warning.hidden = !usage.warning;
  renderChart($("usage-chart"), daysOfPeriod(period, usage.by_day || []), formatNumber);
}

async function loadUsage(button) {
  const usage = await busy(button, () => api.usage());
  if (usage) {
    renderUsage(usage);
    if (button) notify("Usage reloaded.", "info");
  }
}

/** "Reload usage": the figures, and the spend against the limit with its banner. */
async function reloadUsage(button) {
  await Promise.all([loadUsage(button), limitsCard.load()]);
}

// -- subscribing, claiming, signing in, billing ------------------------------------------------

/** Start a Checkout Session and go there; its claim token waits in this tab for the return. */
async function startCheckout(button) {
  hideClaimActions();
  const input = $("subscribe-email");
  const email = input.value.trim();
  if (email && !isValidEmail(email)) {
    notify(INVALID_EMAIL, "error");
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  input.removeAttribute("aria-invalid");
  const session = await busy(button, () => api.checkout(email), CHECKOUT_MESSAGES);
  if (session && session.url) {
    claimStore.set(session.id, session.claim_token);
    notify("Taking you to checkout…", "info");
    window.location.assign(session.url);
  }
}

function subscribe(event) {
  event.preventDefault();
  return startCheckout(event.submitter);
}

// After a failed claim: "Try again" (same session, same token) or "Start a new checkout".
let pendingClaim = null;

function showClaimActions({ retry, restart }) {
  $("claim-retry").hidden = !retry;
  $("claim-restart").hidden = !restart;
  $("claim-actions").hidden = !(retry || restart);
  (retry ? $("claim-retry") : $("claim-restart")).focus();
}

function hideClaimActions() {
  $("claim-actions").hidden = true;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function claim(checkoutSessionId) {
  hideClaimActions();
  pendingClaim = null;
  notify("Payment received. Getting your API key…", "info");
  const claimToken = claimStore.get(checkoutSessionId);
  for (let attempt = 1; ; attempt++) {
    try {
      const claimed = await api.claim(checkoutSessionId, claimToken);
      claimStore.clear();
      keyStore.set(claimed.api_key);
      showNewKey(claimed.api_key, "Welcome! Your subscription is active and your key is ready.");
      await enterDashboard();
      return;
    } catch (error) {
      const expired = isExpiredCheckout(error);
      // Stripe's webhook can trail the redirect back here by a moment.
      if (error.code === "checkout_incomplete" && !expired && attempt < CLAIM_ATTEMPTS) {
        await sleep(CLAIM_RETRY_MS);
        continue;
      }
      if (expired) {
        claimStore.clear();
        notify(CHECKOUT_EXPIRED, "error");
        if (!keyStore.get()) showClaimActions({ restart: true });
      } else if (CLAIM_RETRYABLE.has(error.code)) {
        pendingClaim = checkoutSessionId; // kept here and in sessionStorage with its token
        showError(error, CLAIM_MESSAGES);
        showClaimActions({ retry: true });
      } else {
        claimStore.clear(); // unknown, or already claimed: trying again cannot help
        showError(error, CLAIM_MESSAGES);
      }
      if (keyStore.get()) await enterDashboard(); // already signed in in this tab
      return;
    }
  }
}

async function retryClaim(event) {
  const button = event.currentTarget;
  if (!pendingClaim) return;
  button.disabled = true;
  try {
    await claim(pendingClaim);
  } finally {
    button.disabled = false;
  }
}

async function signIn(event) {
  event.preventDefault();
  const input = $("sign-in-key");
  const key = input.value.trim();
  if (!key) {
    notify("Paste your API key to sign in.", "error");
    input.focus();
    return;
  }
  keyStore.set(key);
  input.value = "";
  const listing = await busy(event.submitter, () => api.listKeys());
  if (!listing) {
    keyStore.clear();
    showSignedIn(false);
    input.focus();
    return;
  }
  notify("Signed in.", "success");
  showSignedIn(true);
  keysCard.render(listing.data || []);
  await Promise.all([loadUsage(), limitsCard.load()]);
}

async function openPortal(event) {
  const portal = await busy(event.currentTarget, () => api.portal());
  if (portal && portal.url) {
    notify("Opening the billing portal…", "info");
    window.location.assign(portal.url);
  }
}

async function start() {
  $("subscribe-form").addEventListener("submit", subscribe);
  $("sign-in-form").addEventListener("submit", signIn);
  keysCard = createKeysCard({ busy, notify, showNewKey, signOut });
  $("sign-out").addEventListener("click", signOut);
  $("copy-key").addEventListener("click", copyKey);
  $("dismiss-key").addEventListener("click", () => {
    hideNewKey();
    notify("", "info");
    $("main").focus(); // the focused button just disappeared: keep keyboard users in place
  });
  $("refresh-usage").addEventListener("click", (e) => reloadUsage(e.currentTarget));
  limitsCard = createLimitsCard({ busy, notify });
  $("open-portal").addEventListener("click", openPortal);

  $("claim-retry").addEventListener("click", retryClaim);
  $("claim-restart").addEventListener("click", (e) => startCheckout(e.currentTarget));

  const url = new URL(window.location.href);
  const checkoutSessionId = url.searchParams.get("session_id");
  const cancelled = url.searchParams.get("checkout") === "cancelled";
  if (checkoutSessionId || cancelled) {
    // Out of the address bar and history at once: a reload must not try to claim again.
    url.searchParams.delete("session_id");
    url.searchParams.delete("checkout");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  if (checkoutSessionId) {
    await claim(checkoutSessionId);
    return;
  }
  if (cancelled) {
    claimStore.clear();
    notify(CHECKOUT_CANCELLED, "info");
  }
  if (keyStore.get()) {
    await enterDashboard();
  } else {
    showSignedIn(false);
  }
}

start();
