// The dashboard's widgets. Each keeps the latest result it was given and
// renders it at most once per animation frame, touching only the elements
// whose content changed: a burst of pushes costs one render, and a push that
// adds one reading moves a couple of rows, not the whole table.

import uPlot from "../vendor/uplot-1.6.32/uPlot.esm.js";

export const CHART_WINDOW = 500; // points per chart: the newest readings of that name
export const MAX_TABLE_ROWS = 500;
export const MAX_ALERTS_SHOWN = 50;

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
const countFormat = new Intl.NumberFormat(undefined);
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const tickMinutes = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const tickSeconds = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit", second: "2-digit" });

// One line per time tick (uPlot's default adds the date on a second line).
function timeTicks(u, splits, axisIndex, space, increment) {
  const format = increment < 60 ? tickSeconds : tickMinutes;
  return splits.map((seconds) => format.format(new Date(seconds * 1000)));
}

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
      figures.append(el("dt", { text: field }), el("dd", { "data-field": field }));
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
      el("div", { class: "tile-head" }, el("h3", { class: "tile-name", text: s.name, title: s.name }), toggle),
      el("p", { class: "tile-last" }, el("span", { class: "tile-value", "data-field": "last" }), " ", el("span", { class: "tile-unit", "data-field": "unit" })),
      figures,
    );
    this._update(node, s);
    return node;
  }

  _update(node, s) {
    setText(node.querySelector('[data-field="last"]'), formatNumber(s.last));
    for (const field of ["min", "max", "avg"]) setText(node.querySelector(`[data-field="${field}"]`), formatShort(s[field]));
    setText(node.querySelector('[data-field="count"]'), formatCount(s.count));
    setText(node.querySelector('[data-field="unit"]'), s.unit);
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
    setText(row.querySelector(".name"), r.name);
    setText(row.querySelector(".value"), formatNumber(r.value));
    setText(row.querySelector(".unit"), r.unit);
  }
}

/** Alerts (`active-alerts`), newest first, with their severity. */
export class AlertsList extends Widget {
  constructor(list, summary) {
    super();
    this.list = list;
    this.summary = summary;
    this.nodes = new Map();
  }

  render(alerts) {
    const shown = alerts.slice(-MAX_ALERTS_SHOWN).reverse();
    reconcile(this.list, this.nodes, shown, (a) => a.id, (a) => this._create(a), (node, a) => this._update(node, a));
    const hidden = alerts.length - shown.length;
    setText(
      this.summary,
      alerts.length === 0 ? "No alerts." : hidden > 0 ? `${alerts.length} alerts, newest ${shown.length} shown.` : "",
    );
    this.list.dataset.count = String(alerts.length);
  }

  _create(a) {
    const node = el(
      "li",
      { class: "alert", "data-id": a.id },
      el("span", { class: "severity" }),
      el("span", { class: "alert-text" }),
      el("time"),
    );
    this._update(node, a);
    return node;
  }

  _update(node, a) {
    if (node.dataset.version === String(a._version)) return;
    node.dataset.version = String(a._version);
    node.dataset.severity = a.severity;
    setText(node.querySelector(".severity"), a.severity);
    setText(node.querySelector(".alert-text"), `${a.metric} above ${formatNumber(a.threshold)}`);
    const time = node.querySelector("time");
    setText(time, formatTime(a.timestamp));
    time.setAttribute("datetime", isoTime(a.timestamp));
  }
}

const AXIS = {
  stroke: "#c9d4e3",
  font: "13px system-ui, sans-serif",
  labelFont: "bold 13px system-ui, sans-serif",
  grid: { stroke: "rgba(201, 212, 227, 0.14)", width: 1 },
  ticks: { stroke: "rgba(201, 212, 227, 0.3)", width: 1 },
};

/**
 * Value over time of one metric name (`latest-metrics-by-name`): the newest
 * CHART_WINDOW readings, by timestamp, with the unit in the y-axis label.
 */
export class MetricChart extends Widget {
  constructor(name) {
    super();
    this.name = name;
    this.unit = null;
    this.plot = null;
    this.summary = el("span", { class: "chart-summary" });
    this.area = el("div", { class: "chart-plot", role: "img" });
    this.node = el(
      "figure",
      { class: "chart-card", "data-name": name, style: `--series: ${colourFor(name)}` },
      el("figcaption", {}, el("span", { class: "chart-title", text: name }), this.summary),
      this.area,
    );
    this.resizer = new ResizeObserver(() => this._resize());
    this.resizer.observe(this.area);
  }

  render(records) {
    const points = records.length > CHART_WINDOW ? records.slice(-CHART_WINDOW) : records.slice();
    // Readings arrive in insertion order; a time axis needs ascending time.
    points.sort((a, b) => a.timestamp - b.timestamp);
    const xs = new Float64Array(points.length);
    const ys = new Float64Array(points.length);
    for (let i = 0; i < points.length; i++) {
      xs[i] = points[i].timestamp / 1000;
      ys[i] = points[i].value;
    }
    const newest = records.length ? records[records.length - 1] : null;
    const unit = newest ? newest.unit : this.unit || "";
    if (this.plot === null || unit !== this.unit) this._build(unit, [xs, ys]);
    else this.plot.setData([xs, ys]);

    const label = this._axisLabel();
    this.area.setAttribute("aria-label", `${this.name} over time, ${label}, ${points.length} newest readings`);
    setText(
      this.summary,
      newest ? `last ${formatNumber(newest.value)} ${unit} · ${formatCount(points.length)} newest points` : "no readings",
    );
    Object.assign(this.node.dataset, {
      points: String(points.length),
      received: String(records.length),
      last: newest ? String(newest.value) : "",
      unit,
      axisLabel: label,
      renders: String(this.renders),
    });
  }

  destroy() {
    cancelAnimationFrame(this._frame);
    this.resizer.disconnect();
    if (this.plot) this.plot.destroy();
    this.node.remove();
  }

  _axisLabel() {
    return this.unit ? `value (${this.unit})` : "value";
  }

  _size() {
    const width = Math.max(200, this.area.clientWidth || 400);
    const height = Math.max(140, this.area.clientHeight || 180);
    return { width, height };
  }

  _build(unit, data) {
    this.unit = unit;
    if (this.plot) this.plot.destroy();
    const colour = colourFor(this.name);
    this.plot = new uPlot(
      {
        ...this._size(),
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        series: [{}, { label: this.name, stroke: colour, width: 2, fill: `${colour}22`, points: { show: false } }],
        axes: [
          { ...AXIS, values: timeTicks, size: 34 },
          { ...AXIS, label: this._axisLabel(), size: 64, labelSize: 22, space: 26 },
        ],
      },
      data,
      this.area,
    );
  }

  _resize() {
    if (this.plot) this.plot.setSize(this._size());
  }
}
