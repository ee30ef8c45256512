// What the dashboard says for each error code of the API (CONTRACT §3). Unknown codes fall back
// to the server's own message, which is always meant for humans.

export const MESSAGES = {
  missing_api_key: "Please sign in with your API key first.",
  invalid_api_key:
    "That API key is not valid. It may be mistyped, revoked or expired. " +
    "Check it and sign in again.",
  api_key_in_query:
    "API keys must never be put in a URL. Send the key in the X-API-Key header instead.",
  subscription_inactive:
    "Your subscription is not active, so API access is paused. " +
    "Open the billing portal to update your payment method or resume your plan.",
  rate_limited: "Too many requests right now. Please wait a moment and try again.",
  spend_cap_reached:
    "Your monthly spending limit is reached, so paid calls are refused until the next " +
    "billing period or a higher limit.",
  ambiguous_api_key:
    "Two different API keys were sent with one request. Send only one key.",
  validation_error: "Some of what you entered is not valid.",
  not_found: "That was not found. It may have been removed, or it belongs to another account.",
  method_not_allowed: "The dashboard asked for something the service does not allow.",
  payload_too_large: "What you sent is too large. Please send less.",
  checkout_incomplete:
    "Your payment is not complete yet, so there is no key to show. " +
    "If you just paid, try again in a few seconds.",
  already_claimed:
    "The key for this purchase was already shown once and cannot be shown again. " +
    "Sign in with it, or, if you lost it, sign in with another of your keys and create a new one.",
  key_rotated:
    "You are signed in with a key that was rotated: until it expires it can call the API " +
    "and show your keys and usage, but not change them. Sign in with its replacement.",
  last_active_key:
    "You cannot revoke your only active key. Create another key first, " +
    "or rotate this one with \"immediately\" to replace it.",
  stripe_unavailable:
    "Our payment provider cannot be reached right now. Please try again in a minute.",
  stripe_error: "Our payment provider refused the request. Please try again, or contact us.",
  billing_not_configured:
    "Subscriptions are not set up on this service yet. Please contact the operator.",
  internal_error: "Something went wrong on our side. Please try again in a moment.",
  network_error: "Could not reach the service. Check your connection and try again.",
};

export const CLAIM_MESSAGES = {
  not_found:
    "This checkout is not known here, so there is no key to show. " +
    "If you already have a key, sign in with it; otherwise subscribe again.",
};

export const CHECKOUT_EXPIRED =
  "This checkout expired before it was paid, so there is no key to show and nothing was " +
  "charged. Start a new checkout to subscribe.";

export const CHECKOUT_CANCELLED =
  "Checkout cancelled. Nothing was charged; you can subscribe whenever you like.";

export const INVALID_EMAIL = "Enter a valid email address, or leave the field empty.";

export const CHECKOUT_MESSAGES = { validation_error: INVALID_EMAIL };

// Claim failures that can succeed a moment later: the page offers "Try again".
export const CLAIM_RETRYABLE = new Set([
  "checkout_incomplete",
  "rate_limited",
  "stripe_unavailable",
  "stripe_error",
  "internal_error",
  "network_error",
  "usage_unavailable",
]);

/** The service words an expired session's 402 (same code as an open one) so it says so. */
export function isExpiredCheckout(error) {
  return error.code === "checkout_incomplete" && /expired/i.test(error.message || "");
}

// Mirrors the service's check of the email (POST /v1/checkout): one @, a dot after it, no spaces.
const EMAIL = /^[^@\s]+@[^@\s]+\.[^@\s]+$/;

export function isValidEmail(text) {
  return EMAIL.test(text);
}

// Codes whose server message adds useful detail (which field is invalid, for instance).
const WITH_DETAIL = new Set(["validation_error"]);

/** A sentence for the person using the dashboard, from an ApiError (see api.js); `overrides`
 * words a code for one situation (a 404 while claiming is about the checkout, not a key). */
export function describeError(error, overrides = {}) {
  const override = overrides[error.code];
  const known = override || MESSAGES[error.code];
  if (!known) {
    return error.message || "Something went wrong. Please try again.";
  }
  let text = known;
  if (!override && WITH_DETAIL.has(error.code) && error.message) {
    text += ` (${error.message})`;
  }
  if (error.code === "rate_limited" && error.retryAfter) {
    text += ` You can try again in ${error.retryAfter} seconds.`;
  }
  return text;
}
