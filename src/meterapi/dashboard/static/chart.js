// The per-day usage chart: plain DOM bars (they reflow at any width, text stays readable),
// with a table of the same numbers for screen readers.

const DAY_MS = 24 * 60 * 60 * 1000;
const MAX_DAYS = 62;

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

/** Every UTC day of the period, with its units (0 where there was none; days after today are
 * marked `future`, so the chart shows how far into the period we are). */
export function daysOfPeriod(period, byDay, now = new Date()) {
  const units = new Map(byDay.map((d) => [String(d.date), Number(d.units) || 0]));
  const start = new Date(period.start);
  const end = new Date(new Date(period.end).getTime() - 1);
  const today = isoDay(now);
  const days = [];
  if (!Number.isNaN(start.getTime()) && !Number.isNaN(end.getTime())) {
    let day = Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), start.getUTCDate());
    while (day <= end.getTime() && days.length < MAX_DAYS) {
      const key = isoDay(new Date(day));
      days.push({ date: key, units: units.get(key) || 0, future: key > today });
      units.delete(key);
      day += DAY_MS;
    }
  }
  // Days the server knows of but the period arithmetic missed still show.
  for (const [date, n] of units) {
    days.push({ date, units: n });
  }
  days.sort((a, b) => (a.date < b.date ? -1 : a.date > b.date ? 1 : 0));
  return days;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const tickFormat = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  timeZone: "UTC",
});

function shortDate(iso) {
  return tickFormat.format(new Date(`${iso}T00:00:00Z`));
}

/** Draw `days` ([{date, units}]) into `container`, replacing what was there. */
export function renderChart(container, days, formatNumber) {
  container.replaceChildren();
  if (days.length === 0) {
    container.append(el("p", "hint", "No usage yet this period."));
    return;
  }
  const max = Math.max(1, ...days.map((d) => d.units));
  const total = days.reduce((sum, d) => sum + d.units, 0);
  const elapsed = days.filter((d) => !d.future).length;
  const peak = days.reduce((best, d) => (d.units > best.units ? d : best), days[0]);

  const figure = el("figure", "chart-figure");
  const plot = el("div", "bars");
  plot.setAttribute("role", "img");
  plot.setAttribute(
    "aria-label",
    `Bar chart: ${formatNumber(total)} units over the first ${elapsed} of ${days.length} days ` +
      (total ? `of the period; most on ${peak.date} (${formatNumber(peak.units)}).` : "of the period."),
  );
  const scale = el("span", "scale", `${formatNumber(max)}`);
  scale.setAttribute("aria-hidden", "true");
  plot.append(scale);
  const labelEvery = days.length > 8 ? Math.ceil(days.length / 6) : 1;
  days.forEach((d, i) => {
    const column = el("div", "bar-col");
    column.title = `${d.date}: ${formatNumber(d.units)} units`;
    const bar = el("div", d.units > 0 ? "bar" : d.future ? "bar empty future" : "bar empty");
    bar.style.height = d.units > 0 ? `${Math.max(2, (d.units / max) * 100)}%` : "";
    column.append(bar);
    // The end ticks align to the plot's edges so that narrow screens do not clip them.
    const edge = i === 0 ? " first" : i === days.length - 1 ? " last" : "";
    const tick = el("span", `tick${edge}`, i % labelEvery === 0 ? shortDate(d.date) : "");
    column.append(tick);
    plot.append(column);
  });
  figure.append(plot);

  const table = el("table", "visually-hidden");
  table.append(el("caption", "", "Units per day (UTC)"));
  const head = el("tr");
  head.append(el("th", "", "Date"), el("th", "", "Units"));
  table.append(head);
  for (const d of days.filter((day) => !day.future)) {
    const row = el("tr");
    row.append(el("td", "", d.date), el("td", "", formatNumber(d.units)));
    table.append(row);
  }
  figure.append(table);
  container.append(figure);
}
