// Money as the API speaks it: integer amounts in the currency's minor unit (cents for USD, yen
// for JPY), shown and typed by people in major units (dollars).

// The largest cap the service accepts, in minor units (metering.limits.MAX_SPEND_CAP).
export const MAX_MINOR = 10n ** 15n;

/** How many decimals `currency` has (2 for USD, 0 for JPY). */
export function fractionDigits(currency) {
  try {
    const format = new Intl.NumberFormat("en", {
      style: "currency",
      currency: String(currency || "usd").toUpperCase(),
    });
    return format.resolvedOptions().maximumFractionDigits;
  } catch {
    return 2;
  }
}

/** An amount in minor units, formatted for people: 1250 usd → "$12.50". */
export function formatMoney(amount, currency) {
  const code = String(currency || "usd").toUpperCase();
  try {
    const format = new Intl.NumberFormat(undefined, { style: "currency", currency: code });
    const digits = format.resolvedOptions().maximumFractionDigits;
    return format.format(Number(amount) / 10 ** digits);
  } catch {
    return `${(Number(amount) / 100).toFixed(2)} ${code}`;
  }
}

// Digits, optionally grouped by commas in threes, then an optional decimal part.
const AMOUNT = /^(\d+|\d{1,3}(?:,\d{3})+)(?:\.(\d*))?$/;

/**
 * What a person typed ("25", "25.50", "1,000") in major units, as minor units:
 * `{ amount }`, or `{ error }` with a sentence saying what to fix. Exact: no floating point.
 */
export function parseAmount(text, currency) {
  const digits = fractionDigits(currency);
  const code = String(currency || "usd").toUpperCase();
  const example = digits > 0 ? `25 or 25.${"5".padEnd(digits, "0")}` : "2500";
  const typed = String(text || "").trim().replace(/^[$€£¥]\s*/, "");
  if (!typed) {
    return { error: `Enter the cap in ${code}, for example ${example}.` };
  }
  if (/^-/.test(typed)) {
    return { error: "The cap cannot be negative. Enter 0 or more, or remove the cap." };
  }
  const match = AMOUNT.exec(typed);
  if (!match) {
    return { error: `"${typed.slice(0, 20)}" is not an amount. Enter a number, for example ${example}.` };
  }
  const fraction = match[2] || "";
  if (fraction.length > digits) {
    return {
      error:
        digits > 0
          ? `Use at most ${digits} decimal places: the cap is counted in whole cents.`
          : `Enter a whole amount: ${code} has no smaller unit.`,
    };
  }
  const whole = BigInt(match[1].replace(/,/g, ""));
  const minor = whole * 10n ** BigInt(digits) + BigInt(fraction.padEnd(digits, "0") || "0");
  if (minor > MAX_MINOR) {
    return { error: "That cap is larger than the service accepts. Enter a smaller amount." };
  }
  return { amount: Number(minor) };
}
