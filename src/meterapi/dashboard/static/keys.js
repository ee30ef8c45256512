// The "API keys" card: the customer's keys in a table, and creating, rotating and revoking them
// (CONTRACT §3). A new or replacement key is handed to `showNewKey`, shown once; revoking the
// key this tab uses signs the tab out.

import { api, keyStore } from "./api.js";

const $ = (id) => document.getElementById(id);
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {
  dateStyle: "medium",
  timeStyle: "short",
});

function formatDateTime(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : dateTimeFormat.format(date);
}

function isCurrentKey(key) {
  const stored = keyStore.get() || "";
  return stored.startsWith(key.prefix) && stored.endsWith(key.last4);
}

function keyStatus(key) {
  if (key.revoked_at) return { text: "Revoked", usable: false };
  if (key.expires_at) {
    const expires = new Date(key.expires_at);
    if (expires.getTime() <= Date.now()) return { text: "Expired", usable: false };
    return { text: `Active until ${formatDateTime(key.expires_at)}`, usable: true };
  }
  return { text: "Active", usable: true };
}

function cell(text, className, column) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  if (column) td.dataset.label = column; // shown before the value on narrow screens
  return td;
}

function actionButton(label, description, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "small secondary";
  button.textContent = label;
  button.setAttribute("aria-label", `${label} ${description}`);
  button.addEventListener("click", () => onClick(button));
  return button;
}

export function createKeysCard({ busy, notify, showNewKey, signOut }) {
  function render(keys) {
    const rows = keys.map((key) => {
      const row = document.createElement("tr");
      const label = `${key.prefix}…${key.last4}`;
      const status = keyStatus(key);
      const current = isCurrentKey(key) && status.usable;
      const name = cell(key.name || "Unnamed", "key-name");
      if (current) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = "this tab";
        name.append(" ", badge);
      }
      row.append(
        name,
        cell(label, "mono", "Key"),
        cell(formatDateTime(key.created_at), "", "Created"),
        cell(key.last_used_at ? formatDateTime(key.last_used_at) : "Never", "", "Last used"),
        cell(status.text, status.usable ? "" : "muted", "Status"),
      );
      const actions = document.createElement("td");
      actions.className = "actions";
      if (status.usable) {
        const description = `key ${key.name || ""} ${label}`.replace(/\s+/g, " ");
        actions.append(
          actionButton("Rotate", description, (b) => rotate(key, label, b)),
          actionButton("Revoke", description, (b) => revoke(key, label, b)),
        );
      }
      row.append(actions);
      return row;
    });
    $("keys-body").replaceChildren(...rows);
  }

  async function load() {
    const listing = await busy(null, () => api.listKeys());
    if (listing) render(listing.data || []);
  }

  async function create(event) {
    event.preventDefault();
    const input = $("create-key-name");
    const created = await busy(event.submitter, () => api.createKey(input.value.trim()));
    if (!created) return;
    input.value = "";
    showNewKey(created.api_key, `New key "${created.key.name}" created.`);
    await load();
  }

  async function rotate(key, label, button) {
    const grace = Number($("rotate-grace").value);
    const when = $("rotate-grace").selectedOptions[0].textContent;
    if (!window.confirm(`Rotate key ${label}? The old key stops working ${when}.`)) return;
    const wasCurrent = isCurrentKey(key);
    const rotated = await busy(button, () => api.rotateKey(key.id, grace));
    if (!rotated) return;
    if (wasCurrent) keyStore.set(rotated.api_key); // this tab keeps working with the new key
    showNewKey(rotated.api_key, `Key ${label} rotated; here is its replacement.`);
    await load();
  }

  async function revoke(key, label, button) {
    if (!window.confirm(`Revoke key ${label} now? Requests with it are refused at once.`)) return;
    const wasCurrent = isCurrentKey(key);
    const done = await busy(button, () => api.revokeKey(key.id));
    if (done === undefined) return;
    if (wasCurrent) {
      signOut(); // this tab's own key: nothing more can be done with it
      notify(`Key ${label} revoked. It was the key this tab used, so you are signed out.`, "info");
      return;
    }
    notify(`Key ${label} revoked.`, "success");
    await load();
  }

  function reset() {
    $("keys-body").replaceChildren();
  }

  $("create-key-form").addEventListener("submit", create);

  return { load, render, reset };
}
