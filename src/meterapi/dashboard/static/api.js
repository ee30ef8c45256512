// A small client for the meterapi HTTP API (CONTRACT §3) and the one place the key is kept.
//
// The key lives in sessionStorage only: it is gone when the tab closes, it is never put in a URL
// or in local storage, and it is never logged.

const KEY_STORAGE = "meterapi.api_key";
// The checkout this tab started: its session id and claim token, kept across Stripe's redirect.
const CLAIM_STORAGE = "meterapi.checkout";

// A dashboard hosted on another origin names the API with
// <meta name="meterapi-api-base" content="https://api.example.com"> (and the API lists that
// origin in METERAPI_CORS_ORIGINS). By default the API is this page's own origin.
const baseMeta = document.querySelector('meta[name="meterapi-api-base"]');
const API_BASE = baseMeta ? baseMeta.content.replace(/\/+$/, "") : "";

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export const keyStore = {
  get() {
    try {
      return window.sessionStorage.getItem(KEY_STORAGE);
    } catch {
      return null; // storage disabled: the customer signs in again on each visit
    }
  },
  set(key) {
    window.sessionStorage.setItem(KEY_STORAGE, key);
  },
  clear() {
    try {
      window.sessionStorage.removeItem(KEY_STORAGE);
    } catch {
      /* nothing stored */
    }
  },
};

// What POST /v1/checkout answered, for POST /v1/keys/claim after the buyer pays. Like the key,
// the claim token lives in this tab's sessionStorage only, never in a URL.
export const claimStore = {
  get(checkoutSessionId) {
    try {
      const saved = JSON.parse(window.sessionStorage.getItem(CLAIM_STORAGE) || "null");
      if (saved && saved.id === checkoutSessionId) return saved.claim_token || null;
    } catch {
      /* storage disabled or unreadable: the claim goes without a token and is refused */
    }
    return null;
  },
  set(checkoutSessionId, claimToken) {
    try {
      window.sessionStorage.setItem(
        CLAIM_STORAGE,
        JSON.stringify({ id: checkoutSessionId, claim_token: claimToken }),
      );
    } catch {
      /* storage disabled: the key cannot be claimed in this browser */
    }
  },
  clear() {
    try {
      window.sessionStorage.removeItem(CLAIM_STORAGE);
    } catch {
      /* nothing stored */
    }
  },
};

async function readError(response) {
  let code = "http_error";
  let message = `The service answered ${response.status}.`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = String(body.error.code || code);
      message = String(body.error.message || message);
    }
  } catch {
    /* not JSON: keep the generic message */
  }
  if (response.status >= 500 && code === "http_error") {
    code = "internal_error";
  }
  return new ApiError(response.status, code, message, response.headers.get("Retry-After"));
}

/** Call the API; resolves to the parsed JSON body (or null for 204), rejects with ApiError. */
export async function request(method, path, { body, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  if (auth) {
    const key = keyStore.get();
    if (!key) {
      throw new ApiError(401, "missing_api_key", "No API key.");
    }
    headers["X-API-Key"] = key;
  }
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(API_BASE + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
  } catch {
    throw new ApiError(0, "network_error", "The service could not be reached.");
  }
  if (!response.ok) {
    throw await readError(response);
  }
  if (response.status === 204) {
    return null;
  }
  return response.json();
}

export const api = {
  checkout: (email) =>
    request("POST", "/v1/checkout", { body: email ? { email } : {}, auth: false }),
  claim: (checkoutSessionId, claimToken) =>
    request("POST", "/v1/keys/claim", {
      body: { checkout_session_id: checkoutSessionId, claim_token: claimToken },
      auth: false,
    }),
  listKeys: () => request("GET", "/v1/keys"),
  createKey: (name) => request("POST", "/v1/keys", { body: name ? { name } : {} }),
  rotateKey: (id, graceSeconds) =>
    request("POST", `/v1/keys/${encodeURIComponent(id)}/rotate`, {
      body: { grace_seconds: graceSeconds },
    }),
  revokeKey: (id) => request("DELETE", `/v1/keys/${encodeURIComponent(id)}`),
  usage: () => request("GET", "/v1/usage"),
  limits: () => request("GET", "/v1/limits"),
  // `amount` in the price's minor units, or null for no cap.
  setSpendCap: (amount) =>
    request("PUT", "/v1/limits", {
      body: { monthly_spend_cap: amount === null ? null : { amount } },
    }),
  portal: () => request("POST", "/v1/billing/portal", { body: {} }),
};
