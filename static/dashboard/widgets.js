// The dashboard's widgets. Each keeps the latest result it was given and
// renders it at most once per animation frame, touching only the elements
// whose content changed: a burst of pushes costs one render, and a push that
// adds one reading moves a couple of rows, not the whole table.

import uPlot from "../vendor/uplot-1.6.32/uPlot.esm.js";

export const MAX_TABLE_ROWS = 500;
export const MAX_ALERTS_SHOWN = 50;
export const MAX_SERIES_POINTS = 2000; // the most `metric-series` returns
const PX_PER_POINT = 2; // one bucket per two pixels of plot width

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const compactFormat = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 2 });
const countFormat = new Intl.NumberFormat(undefined);
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

export function formatNumber(value) {
  return typeof value === "number" ? numberFormat.format(value) : "–";
}

/** Fewer decimals as numbers grow, for the tiles' small figures. */
export function formatShort(value) {
  if (typeof value !== "number") return "–";
  const size = Math.abs(value);
  const digits = size >= 1000 ? 0 : size >= 100 ? 1 : 2;
  return value.toLocaleString(undefined, { maximumFractionDigits: digits });
}

export function formatCount(value) {
  return typeof value === "number" ? countFormat.format(value) : "–";
}

export function formatTime(ms) {
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? "" : timeFormat.format(date);
}

/** A duration in its largest whole unit: "500 ms", "10 s", "5 min", "1 h", "7 d". */
function formatDuration(ms) {
  for (const [size, unit] of [[DAY, "d"], [HOUR, "h"], [MINUTE, "min"], [SECOND, "s"]]) {
    if (ms >= size) return `${formatNumber(ms / size)} ${unit}`;
  }
  return `${formatNumber(ms)} ms`;
}

// --- units: bytes and bytes per second get binary prefixes ---------------------

const BYTE_UNITS = new Map([["B", ""], ["bytes", ""], ["B/s", "/s"], ["bytes/s", "/s"]]);
const BINARY_PREFIXES = ["B", "KiB", "MiB", "GiB", "TiB"];

function isBytes(unit) {
  return BYTE_UNITS.has(unit);
}

/** The power of 1024 that suits a size of `bytes`: 0 (B) to 4 (TiB). */
function bytePower(bytes) {
  let power = 0;
  while (power < BINARY_PREFIXES.length - 1 && Math.abs(bytes) >= 1024 ** (power + 1)) power += 1;
  return power;
}

function byteUnit(unit, power) {
  return BINARY_PREFIXES[power] + BYTE_UNITS.get(unit);
}

/** `value` in `unit` as shown: bytes scaled to KiB, MiB, ...; any other unit as it is. */
function scaled(value, unit) {
  if (!isBytes(unit) || typeof value !== "number") return { value, unit };
  const power = bytePower(value);
  return { value: value / 1024 ** power, unit: byteUnit(unit, power) };
}

/** "1.5 KiB", "40.4 %", "12": a value with its (scaled) unit. */
export function formatValue(value, unit, format = formatNumber) {
  const shown = scaled(value, unit);
  return shown.unit ? `${format(shown.value)} ${shown.unit}` : format(shown.value);
}

function isoTime(ms) {
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}

// Bright enough on the dark background for a wall screen; a name keeps its
// colour across reloads.
const PALETTE = ["#38bdf8", "#a3e635", "#f472b6", "#fbbf24", "#c084fc", "#34d399", "#fb923c", "#f87171"];

export function colourFor(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

const LONG_WORD = 16; // characters: a run without separators longer than this...
const WORD_PIECE = 10; // ...may break every this many

/**
 * Sets a metric name that may wrap after its separators (`host.disk.read_bytes`
 * breaks as `host.disk.` / `read_bytes`), never cut short: two long names that
 * share a beginning stay told apart on a phone. A very long run without
 * separators may break inside; a word like `temperature` stays whole.
 */
function setName(node, name) {
  if (node.textContent === name) return;
  const pieces = [];
  for (const part of name.split(/(?<=[._/:-])/)) {
    if (part.length <= LONG_WORD) pieces.push(part);
    else for (let i = 0; i < part.length; i += WORD_PIECE) pieces.push(part.slice(i, i + WORD_PIECE));
  }
  const children = [];
  pieces.forEach((piece, i) => {
    if (i > 0) children.push(document.createElement("wbr"));
    children.push(piece);
  });
  node.replaceChildren(...children);
  node.title = name;
}

/**
 * Makes `container`'s children the elements for `items`, in order, keeping
 * the element of every key that stays: `create(item)` makes one, `update(node,
 * item)` refreshes it. Returns the keys that were added.
 */
export function reconcile(container, nodes, items, keyOf, create, update) {
  const added = [];
  const wanted = new Set();
  for (const item of items) wanted.add(keyOf(item));
  for (const [key, node] of nodes) {
    if (!wanted.has(key)) {
      node.remove();
      nodes.delete(key);
    }
  }
  let cursor = container.firstElementChild;
  for (const item of items) {
    const key = keyOf(item);
    let node = nodes.get(key);
    if (node === undefined) {
      node = create(item);
      nodes.set(key, node);
      added.push(key);
    } else {
      update(node, item);
    }
    if (node !== cursor) container.insertBefore(node, cursor);
    else cursor = cursor.nextElementSibling;
  }
  return added;
}

/** Base: keeps the newest data and renders once per animation frame. */
class Widget {
  constructor() {
    this._data = undefined;
    this._frame = 0;
    this.renders = 0;
  }

  set(data) {
    this._data = data;
    if (!this._frame) {
      this._frame = requestAnimationFrame(() => {
        this._frame = 0;
        this.renders += 1;
        this.render(this._data);
      });
    }
  }

  render() {}
}

export class Counter extends Widget {
  constructor(node) {
    super();
    this.node = node;
  }

  render(count) {
    setText(this.node, formatCount(count));
    this.node.dataset.value = String(count);
  }
}

/** Summary tiles (the `metric-stats` result), one per metric name. */
export class StatsTiles extends Widget {
  constructor(container, { onToggleChart, isCharted, onRender }) {
    super();
    this.container = container;
    this.nodes = new Map();
    this.onToggleChart = onToggleChart;
    this.isCharted = isCharted;
    this.onRender = onRender;
    this.stats = [];
    this.alerts = new Map(); // metric name -> its alert-status entries
  }

  /** Marks the tiles of metrics whose alerts fire (`byMetric` from alertsByMetric()). */
  setAlerts(byMetric) {
    // Only tiles with alerts, now or before, can change: not every tile on every push.
    const names = new Set([...this.alerts.keys(), ...byMetric.keys()]);
    this.alerts = byMetric;
    for (const name of names) {
      const node = this.nodes.get(name);
      if (node) this._mark(node, name);
    }
  }

  _mark(node, name) {
    markFiring(node, node.querySelector(".alert-badge"), this.alerts.get(name) || []);
  }

  render(stats) {
    this.stats = stats;
    reconcile(this.container, this.nodes, stats, (s) => s.name, (s) => this._create(s), (node, s) => this._update(node, s));
    this.container.dataset.count = String(stats.length);
    this.refreshToggles();
    this.onRender(stats);
  }

  refreshToggles() {
    for (const [name, node] of this.nodes) {
      const toggle = node.querySelector(".chart-toggle");
      const pressed = String(this.isCharted(name));
      if (toggle.getAttribute("aria-pressed") !== pressed) toggle.setAttribute("aria-pressed", pressed);
    }
  }

  _create(s) {
    const figures = el("dl", { class: "tile-figures" });
    for (const field of ["min", "max", "avg", "count"]) {
      figures.append(el("div", {}, el("dt", { text: field }), el("dd", { "data-field": field })));
    }
    const toggle = el("button", {
      type: "button",
      class: "chart-toggle",
      "aria-pressed": String(this.isCharted(s.name)),
      "aria-label": `Chart ${s.name}`,
      text: "Chart",
    });
    toggle.addEventListener("click", () => this.onToggleChart(s.name));
    const node = el(
      "article",
      { class: "tile", "data-name": s.name, style: `--series: ${colourFor(s.name)}` },
      // The button first: it floats right, and a long name flows around it.
      el("div", { class: "tile-head" }, toggle, el("h3", { class: "tile-name" })),
      el("p", { class: "alert-badge", hidden: "" }),
      el("p", { class: "tile-last" }, el("span", { class: "tile-value", "data-field": "last" }), " ", el("span", { class: "tile-unit", "data-field": "unit" })),
      figures,
    );
    setName(node.querySelector(".tile-name"), s.name);
    this._update(node, s);
    this._mark(node, s.name);
    return node;
  }

  _update(node, s) {
    const last = scaled(s.last, s.unit);
    setText(node.querySelector('[data-field="last"]'), formatNumber(last.value));
    setText(node.querySelector('[data-field="unit"]'), last.unit);
    // Bytes scale each figure on its own, so each carries its unit.
    const figure = isBytes(s.unit) ? (v) => formatValue(v, s.unit, formatShort) : formatShort;
    for (const field of ["min", "max", "avg"]) setText(node.querySelector(`[data-field="${field}"]`), figure(s[field]));
    setText(node.querySelector('[data-field="count"]'), formatCount(s.count));
  }
}

/** The newest readings (`latest-metrics`), newest first. */
export class LatestTable extends Widget {
  constructor(tbody) {
    super();
    this.tbody = tbody;
    this.nodes = new Map();
    this.primed = false;
  }

  render(records) {
    const newestFirst = records.slice(-MAX_TABLE_ROWS).reverse();
    const added = reconcile(this.tbody, this.nodes, newestFirst, (r) => r.id, (r) => this._create(r), (node, r) => this._update(node, r));
    // Flash rows that arrived live (not the first fill).
    if (this.primed) for (const key of added) this.nodes.get(key).classList.add("arrived");
    this.primed = true;
    this.tbody.dataset.rows = String(newestFirst.length);
  }

  reset() {
    this.primed = false;
  }

  _create(r) {
    const row = el(
      "tr",
      { "data-id": r.id },
      el("td", { class: "time" }, el("time")),
      el("th", { scope: "row", class: "name" }),
      el("td", { class: "num value" }),
      el("td", { class: "unit" }),
    );
    this._update(row, r);
    return row;
  }

  _update(row, r) {
    if (row.dataset.version === String(r._version)) return;
    row.dataset.version = String(r._version);
    const time = row.querySelector("time");
    setText(time, formatTime(r.timestamp));
    time.setAttribute("datetime", isoTime(r.timestamp));
    setName(row.querySelector(".name"), r.name);
    const shown = scaled(r.value, r.unit);
    setText(row.querySelector(".value"), formatNumber(shown.value));
    setText(row.querySelector(".unit"), shown.unit);
  }
}

// --- alerts: `alert-status` and `alert-events` ------------------------------------

const STATE_ORDER = { firing: 0, "no-data": 1, ok: 2 };
const SEVERITY_ORDER = { high: 0, medium: 1, low: 2 };
const STATE_WORDS = { firing: "firing", "no-data": "no data", ok: "ok" };
// The canvas's colours for each severity, matching the list's edges in dashboard.css.
export const SEVERITY_COLOURS = { high: "#ef4444", medium: "#f59e0b", low: "#38bdf8" };

/** "10:01:05 PM", with the date when it is not today. */
function formatMoment(ms) {
  const sameDay = new Date(ms).toDateString() === new Date().toDateString();
  return rangeFormat(!sameDay, true).format(ms);
}

/**
 * The `alert-status` entries in the order the list shows them: firing first
 * (the most severe first, then the one that started last), then no-data,
 * then ok (the most severe first, then the newest alert).
 */
export function alertOrder(alerts) {
  const indexed = alerts.map((alert, index) => ({ alert, index }));
  indexed.sort((x, y) => {
    const [a, b] = [x.alert, y.alert];
    return (
      (STATE_ORDER[a.state] ?? 3) - (STATE_ORDER[b.state] ?? 3) ||
      (SEVERITY_ORDER[a.severity] ?? 3) - (SEVERITY_ORDER[b.severity] ?? 3) ||
      (a.state === "firing" ? (b.since ?? 0) - (a.since ?? 0) : 0) ||
      y.index - x.index
    );
  });
  return indexed.map(({ alert }) => alert);
}

/** The `alert-status` entries by metric name, and the most severe firing one of each. */
export function alertsByMetric(alerts) {
  const byMetric = new Map();
  for (const alert of alertOrder(alerts)) {
    if (!byMetric.has(alert.metric)) byMetric.set(alert.metric, []);
    byMetric.get(alert.metric).push(alert);
  }
  return byMetric;
}

/** The alert that marks a tile or chart: the first firing one (alertOrder puts the most severe first). */
function firingOf(alerts) {
  return alerts.find((a) => a.state === "firing") || null;
}

/**
 * Marks `node` (a tile or a chart card) while an alert on its metric fires:
 * `data-alert="firing"` and `data-severity` for the stylesheet's coloured
 * border, and a badge saying which alert.
 */
function markFiring(node, badge, alerts) {
  const firing = firingOf(alerts);
  if (firing === null) {
    delete node.dataset.alert;
    delete node.dataset.severity;
    badge.hidden = true;
    setText(badge, "");
    return;
  }
  node.dataset.alert = "firing";
  node.dataset.severity = firing.severity;
  const more = alerts.filter((a) => a.state === "firing").length - 1;
  setText(badge, `${firing.severity} · above ${formatNumber(firing.threshold)}${more > 0 ? ` (+${more})` : ""}`);
  badge.title = `Alert firing since ${formatMoment(firing.since)}`;
  badge.hidden = false;
}

/** Alerts with their state (`alert-status`): firing first, in their severity's colour. */
export class AlertsList extends Widget {
  constructor(list, summary) {
    super();
    this.list = list;
    this.summary = summary;
    this.nodes = new Map();
  }

  render(alerts) {
    const ordered = alertOrder(alerts);
    const shown = ordered.slice(0, MAX_ALERTS_SHOWN);
    reconcile(this.list, this.nodes, shown, (a) => a.id, (a) => this._create(a), (node, a) => this._update(node, a));
    const counts = { firing: 0, "no-data": 0, ok: 0 };
    for (const a of alerts) counts[a.state] = (counts[a.state] || 0) + 1;
    let text = "No alerts.";
    if (alerts.length > 0) {
      text = Object.entries(counts).map(([state, n]) => `${formatCount(n)} ${STATE_WORDS[state] || state}`).join(" · ");
      if (shown.length < alerts.length) text += ` (first ${shown.length} shown)`;
    }
    setText(this.summary, text);
    Object.assign(this.list.dataset, { count: String(alerts.length), firing: String(counts.firing) });
  }

  _create(a) {
    const node = el(
      "li",
      { class: "alert", "data-id": a.id },
      el("span", { class: "severity" }),
      el("span", { class: "alert-text" }, el("span", { class: "alert-rule" }), el("span", { class: "alert-value" })),
      el("span", { class: "alert-when" }, el("span", { class: "alert-state" }), el("time")),
    );
    this._update(node, a);
    return node;
  }

  _update(node, a) {
    Object.assign(node.dataset, { severity: a.severity, state: a.state, metric: a.metric });
    setText(node.querySelector(".severity"), a.severity);
    setText(node.querySelector(".alert-rule"), `${a.metric} above ${formatNumber(a.threshold)}`);
    setText(node.querySelector(".alert-value"), a.value === null || a.value === undefined ? "" : `now ${formatNumber(a.value)}`);
    const word = STATE_WORDS[a.state] || a.state;
    setText(node.querySelector(".alert-state"), a.since === null || a.since === undefined ? word : `${word} since`);
    const time = node.querySelector("time");
    if (a.since === null || a.since === undefined) {
      setText(time, "");
      time.removeAttribute("datetime");
      delete node.dataset.since;
    } else {
      setText(time, formatMoment(a.since));
      time.setAttribute("datetime", isoTime(a.since));
      node.dataset.since = String(a.since);
    }
  }
}

// A transition never changes once recorded: its id, else what it is made of, names it.
const eventKey = (e) => String(e.id ?? `${e.alert && e.alert.id} ${e.at} ${e.from} ${e.to}`);

/** The newest changes of state (`alert-events`, oldest first), shown newest first. */
export class AlertEvents extends Widget {
  constructor(list) {
    super();
    this.list = list;
    this.nodes = new Map();
  }

  render(events) {
    const newestFirst = events.slice().reverse();
    reconcile(this.list, this.nodes, newestFirst, eventKey, (e) => this._create(e), () => {});
    this.list.dataset.count = String(events.length);
  }

  _create(e) {
    const alert = e.alert || {};
    const value = e.value === null || e.value === undefined ? "" : ` (${formatNumber(e.value)})`;
    return el(
      "li",
      { class: "alert-event", "data-key": eventKey(e), "data-to": e.to, "data-severity": alert.severity || "" },
      el("time", { datetime: isoTime(e.at), text: formatMoment(e.at) }),
      el("span", { text: `${alert.metric} above ${formatNumber(alert.threshold)}: ` }),
      el("span", { class: "event-change", text: `${STATE_WORDS[e.from] || e.from} → ${STATE_WORDS[e.to] || e.to}${value}` }),
    );
  }
}

// --- charts ------------------------------------------------------------------

const AXIS_FONT = "13px system-ui, sans-serif";
const AXIS = {
  stroke: "#c9d4e3",
  font: AXIS_FONT,
  labelFont: "bold 13px system-ui, sans-serif",
  grid: { stroke: "rgba(201, 212, 227, 0.14)", width: 1 },
  ticks: { stroke: "rgba(201, 212, 227, 0.3)", width: 1 },
};
const LABEL_GAP = 14; // px between two time labels, at the least
// The plot's insets in the canvas: the value axis and its label on the left,
// room at the top and on the right ([top, right, bottom, left], uPlot's order).
const VALUE_AXIS_SIZE = 64;
const VALUE_LABEL_SIZE = 22;
const PADDING = [12, 16, 0, 0];
const PLOT_INSET = VALUE_AXIS_SIZE + VALUE_LABEL_SIZE + PADDING[1] + PADDING[3];

const measurer = document.createElement("canvas").getContext("2d");
measurer.font = AXIS_FONT;
const textWidth = (text) => measurer.measureText(text).width;

// Tick spacings the time axis may use, in seconds (uPlot's time unit).
const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200]
  .concat([1, 2, 3, 7, 14].map((days) => days * 86400));

// The label of a time tick follows the spacing: seconds under a minute,
// hours and minutes under a day (with the date at midnight), else the date.
const tickSeconds = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit", second: "2-digit" });
const tickMinutes = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const tickDate = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

function tickFormats(incr) {
  if (incr < 60) return [tickSeconds];
  if (incr < 86400) return [tickMinutes, tickDate];
  return [tickDate];
}

function tickLabel(seconds, incr) {
  const date = new Date(seconds * 1000);
  const [format] = tickFormats(incr);
  const midnight = date.getHours() === 0 && date.getMinutes() === 0 && date.getSeconds() === 0;
  return format === tickMinutes && midnight ? tickDate.format(date) : format.format(date);
}

// The widest label a spacing can draw (any hour, any month), measured once.
const widest = new Map();
function widestLabel(incr) {
  const formats = tickFormats(incr);
  const key = formats.length === 2 ? "minutes" : formats[0] === tickSeconds ? "seconds" : "date";
  if (!widest.has(key)) {
    let width = 0;
    for (let month = 0; month < 12; month++) {
      for (const hour of [0, 9, 10, 12, 21, 23]) {
        const sample = new Date(2024, month, 28, hour, 58, 58);
        for (const format of formats) width = Math.max(width, textWidth(format.format(sample)));
      }
    }
    widest.set(key, width);
  }
  return widest.get(key);
}

/**
 * uPlot's `space` for the time axis: the smallest spacing whose widest label
 * fits between two ticks, given back as (just under) that spacing's pixel
 * distance so that uPlot takes exactly it.
 */
function timeSpace(u, axisIdx, min, max, dim) {
  const span = max - min;
  if (!(span > 0) || !(dim > 0)) return dim || 1;
  for (const incr of TIME_INCRS) {
    const px = (dim * incr) / span;
    if (px >= widestLabel(incr) + LABEL_GAP) return px * 0.999;
  }
  return dim * 2; // not even one spacing fits: no ticks
}

// Nice steps for a value axis (1, 2, 2.5, 5 times a power of ten).
const VALUE_INCRS = [];
for (let exp = -6; exp <= 15; exp++) for (const m of [1, 2, 2.5, 5]) VALUE_INCRS.push(m * 10 ** exp);

function formatTick(value, largest) {
  return Math.abs(largest) >= 1e6 ? compactFormat.format(value) : numberFormat.format(value);
}

const rangeFormats = new Map(); // made once each: the readout formats on every pointer move
function rangeFormat(withDate, withSeconds) {
  const key = `${withDate} ${withSeconds}`;
  if (!rangeFormats.has(key)) {
    const options = { hour: "numeric", minute: "2-digit" };
    if (withDate) Object.assign(options, { month: "short", day: "numeric" });
    if (withSeconds) options.second = "2-digit";
    rangeFormats.set(key, new Intl.DateTimeFormat(undefined, options));
  }
  return rangeFormats.get(key);
}

/** Whether times within [from, to] need their date to be told apart (not all today). */
function needsDate(from, to) {
  const today = new Date().toDateString();
  return to - from >= DAY / 2 || new Date(from).toDateString() !== today || new Date(to).toDateString() !== today;
}

/**
 * A time range for people: "Feb 3, 10:01:05 PM – 10:04:30 PM". The date is
 * there when the range `within` it lies in (by default, itself) needs it.
 */
function formatRange(from, to, { seconds = true, within = [from, to] } = {}) {
  const format = rangeFormat(needsDate(...within), seconds);
  return from === to ? format.format(from) : format.formatRange(from, to);
}

/**
 * The chart data for a `metric-series` result: [xs (seconds), avg, min, max],
 * with a null inserted after every bucket that the next one does not follow
 * directly, so that uPlot (spanGaps off) leaves a gap there instead of a line
 * across it. Also returns each entry's bucket start and count of readings,
 * and where the gaps are ([start, end] in ms). A fixed range's first bucket
 * may start before `from` (buckets are step-aligned, the range is not): it
 * holds only readings from `from` on, and is drawn there, inside the chart.
 */
function seriesData(result) {
  const starts = [];
  const xs = [];
  const avg = [];
  const min = [];
  const max = [];
  const counts = [];
  const gaps = [];
  let previous = null;
  for (const point of result.points) {
    if (previous !== null && point.t - previous.t > result.step) {
      const start = previous.t + result.step;
      gaps.push([start, point.t]);
      starts.push(start);
      xs.push(start / 1000);
      avg.push(null);
      min.push(null);
      max.push(null);
      counts.push(0);
    }
    starts.push(point.t);
    xs.push(Math.max(point.t, result.from) / 1000);
    avg.push(point.avg);
    min.push(point.min);
    max.push(point.max);
    counts.push(point.count);
    previous = point;
  }
  return { data: [xs, avg, min, max], starts, counts, gaps };
}

/**
 * One metric name over the page's time range (`metric-series`): the min–max
 * band of each bucket and its average, gaps where no readings landed, and a
 * readout of the bucket under the pointer. Dragging across the plot picks a
 * fixed range (`onSelectRange(fromMs, toMs)`); `onResize()` says that its
 * width changed (see pointsWanted()).
 */
export class MetricChart extends Widget {
  constructor(name, { onSelectRange = () => {}, onResize = () => {} } = {}) {
    super();
    this.name = name;
    this.onSelectRange = onSelectRange;
    this.onResize = onResize;
    this.result = null;
    this.unit = null;
    this.power = 0; // of 1024, for a unit in bytes
    this.plot = null;
    this.data = null;
    this.starts = [];
    this.counts = [];
    this.range = [0, 1]; // the x scale, seconds
    this.ticks = []; // time labels drawn: [{value, text}]
    this.sparse = false;
    this.isolated = null;
    this.alerts = []; // alert-status entries on this name: their thresholds are drawn
    this.alertsKey = "[]";
    this.drawn = null; // the data last given to uPlot
    this.description = "";
    this.badge = el("span", { class: "alert-badge", hidden: "" });
    this.summary = el("span", { class: "chart-summary" });
    this.area = el("div", { class: "chart-plot", role: "img" });
    this.readout = el("p", { class: "chart-readout" }, el("time"), el("span", { class: "readout-value" }));
    const title = el("span", { class: "chart-title" });
    setName(title, name);
    this.node = el(
      "figure",
      { class: "chart-card", "data-name": name, "data-query": "metric-series", style: `--series: ${colourFor(name)}` },
      el("figcaption", {}, title, this.badge, this.summary),
      this.area,
      this.readout,
    );
    this.resizer = new ResizeObserver(() => this._resize());
    this.resizer.observe(this.area);
  }

  /** How many buckets to ask for: about one per two pixels of plot width. */
  pointsWanted() {
    const width = this.plot ? this.plot.bbox.width / uPlot.pxRatio : this._size().width - PLOT_INSET;
    return Math.min(MAX_SERIES_POINTS, Math.max(1, Math.round(width / PX_PER_POINT)));
  }

  /**
   * The alerts on this name (`alert-status` entries): marks the chart while
   * one fires, and draws each threshold as a line (solid while firing, dashed
   * otherwise), inside the value axis's range.
   */
  setAlerts(alerts) {
    markFiring(this.node, this.badge, alerts);
    // A push that changed only a reading's value leaves the lines as they are.
    const key = JSON.stringify(alerts.map((a) => [a.id, a.threshold, a.severity, a.state]));
    this.alerts = alerts;
    if (key === this.alertsKey) return;
    this.alertsKey = key;
    this._describe();
    // setData recomputes the value axis's range (which holds the thresholds) and redraws.
    if (this.plot && this.drawn) this.plot.setData(this.drawn);
  }

  /** Records the params of the subscription that will feed this chart. */
  subscribed(params) {
    this.node.dataset.params = JSON.stringify(params);
    delete this.node.dataset.error;
  }

  /** A refused subscription: says why instead of drawing. */
  fail(error) {
    this.node.dataset.error = error.code || "ERROR";
    setText(this.summary, error.code ? `${error.code}: ${error.message}` : error.message);
  }

  render(result) {
    this.result = result;
    const { data, starts, counts, gaps } = seriesData(result);
    this.data = data;
    this.starts = starts;
    this.counts = counts;
    // A fixed range of one instant still gets a time axis: a second each side.
    const pad = result.from === result.to ? 1 : 0;
    this.range = [result.from / 1000 - pad, result.to / 1000 + pad];
    const values = [];
    for (const p of result.points) values.push(Math.abs(p.min), Math.abs(p.max));
    const power = isBytes(result.unit) ? bytePower(Math.max(0, ...values)) : 0;

    // A bucket between two gaps (or a lone reading) would draw nothing as a
    // line: it is drawn as a point, and so is every bucket of a sparse chart.
    const [, avg] = data;
    const isolated = [];
    for (let i = 0; i < avg.length; i++) {
      if (avg[i] !== null && (i === 0 || avg[i - 1] === null) && (i === avg.length - 1 || avg[i + 1] === null)) {
        isolated.push(i);
      }
    }
    this.isolated = isolated.length ? isolated : null;
    this.sparse = result.points.length <= this._size().width / 12;

    // An empty range still gets its time axis.
    const drawn = avg.length ? data : [[...this.range], [null, null], [null, null], [null, null]];
    this.drawn = drawn;
    if (this.plot === null || result.unit !== this.unit || power !== this.power) {
      this.unit = result.unit;
      this.power = power;
      this._build(drawn);
    } else {
      this.plot.setData(drawn);
    }

    let readings = 0;
    for (const p of result.points) readings += p.count;
    const label = this._axisLabel();
    const span = formatRange(result.from, result.to, { seconds: result.step < MINUTE });
    this.description = `${this.name} from ${span}, ${label}, ${formatCount(readings)} readings`;
    this._describe();
    setText(this.summary, `${formatCount(readings)} reading${readings === 1 ? "" : "s"} · ${formatDuration(result.step)} steps`);
    Object.assign(this.node.dataset, {
      from: String(result.from),
      to: String(result.to),
      step: String(result.step),
      points: String(result.points.length),
      readings: String(readings),
      gaps: JSON.stringify(gaps),
      nulls: String(avg.filter((v) => v === null).length),
      marked: String(this.sparse ? result.points.length : isolated.length), // buckets drawn as points
      unit: result.unit,
      axisLabel: label,
      renders: String(this.renders),
    });
    // Keep reading out the bucket under a pointer that stays on the chart.
    this._showReadout(this.plot.cursor.left >= 0 ? this.plot.cursor.idx : null);
  }

  destroy() {
    cancelAnimationFrame(this._frame);
    this.resizer.disconnect();
    if (this.plot) this.plot.destroy();
    this.node.remove();
  }

  _describe() {
    const lines = this.alerts.map((a) => `${a.severity} alert above ${formatNumber(a.threshold)}, ${STATE_WORDS[a.state] || a.state}`);
    this.area.setAttribute("aria-label", [this.description, ...lines].filter(Boolean).join("; "));
  }

  // The value axis: uPlot's own default range, widened to hold every threshold.
  _valueRange(dataMin, dataMax) {
    let [min, max] = [dataMin, dataMax];
    for (const { threshold } of this.alerts) {
      if (typeof threshold !== "number") continue;
      min = min === null ? threshold : Math.min(min, threshold);
      max = max === null ? threshold : Math.max(max, threshold);
    }
    return min === null ? [null, null] : uPlot.rangeNum(min, max, 0.1, true);
  }

  // Each alert's threshold across the plot, with its severity and value at the
  // right end; recorded for checks as [{threshold, severity, state, y}] (y in
  // canvas pixels from the canvas's top, where the line's lower half lies).
  _drawThresholds(u) {
    const ratio = uPlot.pxRatio;
    const { left, top, width, height } = u.bbox;
    const { ctx } = u;
    const lines = [];
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    ctx.font = `600 ${Math.round(12 * ratio)}px system-ui, sans-serif`;
    ctx.textAlign = "right";
    for (const a of this.alerts) {
      if (typeof a.threshold !== "number") continue;
      const y = Math.round(u.valToPos(a.threshold, "y", true));
      const colour = SEVERITY_COLOURS[a.severity] || AXIS.stroke;
      const firing = a.state === "firing";
      ctx.strokeStyle = colour;
      ctx.fillStyle = colour;
      ctx.lineWidth = 2 * ratio;
      ctx.setLineDash(firing ? [] : [6 * ratio, 4 * ratio]);
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + width, y);
      ctx.stroke();
      // The label above the line, or below it when the line runs along the top.
      const above = y - top > 18 * ratio;
      ctx.textBaseline = above ? "bottom" : "top";
      ctx.fillText(`${a.severity} ${formatNumber(a.threshold)}`, left + width - 4 * ratio, above ? y - 3 * ratio : y + 3 * ratio);
      lines.push({ threshold: a.threshold, severity: a.severity, state: a.state, y });
    }
    ctx.restore();
    this.node.dataset.thresholds = JSON.stringify(lines);
    // The value axis and the plot in canvas pixels, to check where the lines went.
    this.node.dataset.valueScale = JSON.stringify({ min: u.scales.y.min, max: u.scales.y.max, top, height });
  }

  _axisLabel() {
    const unit = isBytes(this.unit) ? byteUnit(this.unit, this.power) : this.unit;
    return unit ? `value (${unit})` : "value";
  }

  _size() {
    const width = Math.max(200, this.area.clientWidth || 400);
    const height = Math.max(140, this.area.clientHeight || 180);
    return { width, height };
  }

  _build(data) {
    if (this.plot) this.plot.destroy();
    const colour = colourFor(this.name);
    const scale = 1024 ** this.power;
    // A lone bucket has no band to fill: its min and max show as small marks.
    const edge = {
      stroke: `${colour}66`,
      width: 1,
      spanGaps: false,
      points: { show: false, filter: () => this.isolated, size: 5, fill: `${colour}aa` },
    };
    this.plot = new uPlot(
      {
        ...this._size(),
        padding: PADDING,
        legend: { show: false },
        cursor: { drag: { x: true, y: false, setScale: false, dist: 6 } },
        scales: {
          x: { time: true, range: () => this.range },
          y: { range: (u, dataMin, dataMax) => this._valueRange(dataMin, dataMax) },
        },
        series: [
          {},
          {
            label: "avg",
            stroke: colour,
            width: 2,
            spanGaps: false,
            points: {
              show: () => this.sparse,
              filter: (u, seriesIdx, show) => (show ? null : this.isolated),
              size: 7,
              fill: colour,
            },
          },
          { label: "min", ...edge },
          { label: "max", ...edge },
        ],
        bands: [{ series: [3, 2], fill: `${colour}33` }],
        axes: [
          { ...AXIS, size: 34, space: timeSpace, incrs: TIME_INCRS, values: (u, splits, i, space, incr) => this._timeLabels(u, splits, incr) },
          {
            ...AXIS,
            label: () => this._axisLabel(),
            size: VALUE_AXIS_SIZE,
            labelSize: VALUE_LABEL_SIZE,
            space: 26,
            incrs: () => VALUE_INCRS.map((incr) => incr * scale),
            values: (u, splits) => {
              const largest = Math.max(...splits.map(Math.abs)) / scale;
              return splits.map((v) => formatTick(v / scale, largest));
            },
          },
        ],
        hooks: {
          draw: [(u) => this._recordTicks(u), (u) => this._drawThresholds(u)],
          setCursor: [(u) => this._showReadout(u.cursor.idx)],
          setSelect: [(u) => this._select(u)],
        },
      },
      data,
      this.area,
    );
  }

  // Labels for the time ticks; one that would stick out of the canvas at
  // either end is left out rather than cut.
  _timeLabels(u, splits, incr) {
    const left = u.bbox.left / uPlot.pxRatio;
    this.ticks = [];
    return splits.map((value) => {
      const text = tickLabel(value, incr);
      const centre = left + u.valToPos(value, "x");
      const half = textWidth(text) / 2;
      if (centre - half < 0 || centre + half > u.width) return null;
      this.ticks.push({ value, text });
      return text;
    });
  }

  // Where each time label was drawn, for checks: [{text, left, right}] in CSS
  // pixels from the canvas's left edge.
  _recordTicks(u) {
    const left = u.bbox.left / uPlot.pxRatio;
    const boxes = this.ticks.map(({ value, text }) => {
      const centre = left + u.valToPos(value, "x");
      const half = textWidth(text) / 2;
      return { text, left: Math.round((centre - half) * 10) / 10, right: Math.round((centre + half) * 10) / 10 };
    });
    this.node.dataset.xTicks = JSON.stringify(boxes);
    this.node.dataset.canvasWidth = String(u.width);
    this.node.dataset.xMin = String(Math.round(u.scales.x.min * 1000));
    this.node.dataset.xMax = String(Math.round(u.scales.x.max * 1000));
  }

  // The bucket under the pointer, else the newest one.
  _showReadout(idx) {
    const hover = idx !== null && idx !== undefined && this.data !== null && idx < this.data[0].length;
    let i = hover ? idx : -1;
    if (!hover && this.data) {
      for (i = this.data[1].length - 1; i >= 0 && this.data[1][i] === null; i--);
    }
    const time = this.readout.querySelector("time");
    const value = this.readout.querySelector(".readout-value");
    this.readout.dataset.hover = String(hover);
    if (i < 0 || !this.result) {
      setText(time, "");
      time.removeAttribute("datetime");
      setText(value, this.result ? "no readings in this range" : "");
      return;
    }
    const [, avg, min, max] = this.data;
    const t = this.starts[i];
    const { step, unit, from, to } = this.result;
    setText(time, formatRange(t, t + step, { seconds: step < MINUTE, within: [from, to] }));
    time.setAttribute("datetime", isoTime(t));
    if (avg[i] === null) {
      setText(value, " no readings");
      return;
    }
    const count = this.counts[i];
    const readings = ` · ${formatCount(count)} reading${count === 1 ? "" : "s"}`;
    setText(
      value,
      ` avg ${formatValue(avg[i], unit)} (min ${formatValue(min[i], unit)}, max ${formatValue(max[i], unit)})${readings}`,
    );
  }

  _select(u) {
    const { left, width } = u.select;
    if (width <= 0) return;
    const from = Math.round(u.posToVal(left, "x") * 1000);
    const to = Math.round(u.posToVal(left + width, "x") * 1000);
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (to > from) this.onSelectRange(from, to);
  }

  _resize() {
    if (!this.plot) return;
    this.plot.setSize(this._size());
    this.onResize();
  }
}

/**
 * The time range buttons: live presets (a window ending now that slides) and
 * the way back to live from a fixed range. `show(range)` reflects the range
 * the page uses; `onChoose(range)` gets the viewer's choice.
 */
export class RangePicker {
  constructor(group, hint, { onChoose }) {
    this.group = group;
    this.hint = hint;
    this.live = group.querySelector("[data-live]");
    this.presets = [...group.querySelectorAll("[data-last]")];
    for (const button of this.presets) {
      button.addEventListener("click", () => onChoose({ last: Number(button.dataset.last) }));
    }
    this.live.addEventListener("click", () => onChoose({ last: this.back }));
    this.back = null;
  }

  show(range) {
    const fixed = !("last" in range);
    this.back = fixed ? range.back : range.last;
    for (const button of this.presets) {
      const pressed = String(!fixed && Number(button.dataset.last) === range.last);
      if (button.getAttribute("aria-pressed") !== pressed) button.setAttribute("aria-pressed", pressed);
    }
    this.live.hidden = !fixed;
    this.group.dataset.range = fixed ? "fixed" : "live";
    const preset = this.presets.find((b) => Number(b.dataset.last) === this.back);
    this.live.textContent = `Back to live${preset ? ` (${preset.textContent})` : ""}`;
    setText(this.hint, fixed ? `(${formatRange(range.from, range.to)}, fixed)` : `(last ${formatDuration(range.last)}, live)`);
  }
}
