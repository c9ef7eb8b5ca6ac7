// The dashboard page: logs in over the WebSocket protocol, binds each widget
// to a subscription, and shows admin tools to admins. The server decides what
// a session may do; hiding the tools from viewers is only a courtesy.

import { ProtocolClient } from "./protocol.js";
import {
  AlertEvents,
  AlertsList,
  Counter,
  LatestTable,
  MAX_TABLE_ROWS,
  MetricChart,
  RangePicker,
  StatsTiles,
  alertsByMetric,
  formatCount,
  formatNumber,
  formatTime,
  formatValue,
} from "./widgets.js";

const TOKEN_KEY = "dashboard.token";
const CHARTS_KEY = "dashboard.charts";
const ROWS_KEY = "dashboard.rows";
const RANGE_KEY = "dashboard.range";
const DEFAULT_CHARTS = 4;
const ALERT_EVENTS_SHOWN = 5;
const HOUR = 3600_000;
const DEFAULT_RANGE = { last: HOUR };
// A chart asks again for its series when its width would change the number
// of points by more than this share, after the width has settled this long.
const REPOINT_SHARE = 0.2;
const RESIZE_SETTLE_MS = 300;
const RANGE_SETTLE_MS = 100;

const $ = (id) => document.getElementById(id);

// --- token: a kiosk's #token=… wins, else the one remembered for this tab ----

function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token === null) return null;
  // Out of the address bar (and of what a passer-by can read off the screen).
  history.replaceState(history.state, "", location.pathname + location.search);
  return token.trim() || null;
}

const fragmentToken = takeTokenFromFragment();
if (fragmentToken) sessionStorage.setItem(TOKEN_KEY, fragmentToken);

const wsUrl = new URL(document.body.dataset.wsPath || "/ws/", location.href);
wsUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";
const client = new ProtocolClient(wsUrl.href);

// --- connection state ---------------------------------------------------------

const connection = $("connection");
const connectionText = $("connection-text");
const stale = $("stale");
let serverRestarting = false;
let lostAt = null;

function showConnection({ state, delayMs, attempt }) {
  let text;
  switch (state) {
    case "connecting":
      text = attempt ? "Reconnecting…" : "Connecting…";
      break;
    case "open":
      text = client.token ? "Logging in…" : "Connected";
      break;
    case "live":
      text = "Live";
      serverRestarting = false;
      break;
    case "idle":
      text = "Waiting for a token";
      break;
    case "waiting":
      text = `${serverRestarting ? "Server restarting" : "Disconnected"}: retrying in ${Math.max(1, Math.round(delayMs / 1000))} s`;
      break;
    default:
      text = "Stopped";
  }
  connection.dataset.state = state;
  connection.dataset.connects = String(client.connects);
  connectionText.textContent = text;

  const live = state === "live";
  if (live) lostAt = null;
  else if (lostAt === null && session) lostAt = Date.now();
  $("dashboard").classList.toggle("is-stale", !live && session !== null);
  stale.hidden = live || lostAt === null;
  if (!stale.hidden) stale.textContent = `Not live since ${formatTime(lostAt)}: showing the last data received.`;
}

let lastState = { state: "idle" };
client.addEventListener("state", (event) => {
  const { state, attempt } = event.detail;
  lastState = { ...event.detail, attempt: state === "connecting" ? lastState.attempt : attempt };
  showConnection(lastState);
});
client.addEventListener("system", (event) => {
  if (event.detail.event === "shutdown") serverRestarting = true;
});

// --- session --------------------------------------------------------------------

let session = null; // the dashboard's view of who is logged in
let widgets = null;

client.addEventListener("session", (event) => {
  const next = event.detail.session;
  if (next) {
    if (session && session.userId !== next.userId) stopWidgets();
    session = next;
    showSession(next);
    if (!widgets) startWidgets();
    syncAdminTools(next.roles.includes("admin"));
  } else if (client.token === null) {
    // Logged out, or the token stopped working. (A dropped connection keeps
    // the token: the client logs in again and the widgets stay.)
    session = null;
    stopWidgets();
    showLogin();
  }
  showConnection(lastState);
});

client.addEventListener("autherror", (event) => {
  sessionStorage.removeItem(TOKEN_KEY);
  session = null;
  stopWidgets();
  showLogin(event.detail.message);
});

function showSession(s) {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("user").hidden = false;
  $("count-badge").hidden = false;
  $("user-name").textContent = s.userId;
  $("user-role").textContent = s.roles.join(", ") || "no role";
}

function showLogin(error = "") {
  $("dashboard").hidden = true;
  $("user").hidden = true;
  $("count-badge").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = error;
  $("token").value = "";
  $("token").focus();
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) {
    $("login-error").textContent = "Enter a token.";
    return;
  }
  $("login-error").textContent = "";
  sessionStorage.setItem(TOKEN_KEY, token);
  client.useToken(token);
  showConnection(lastState);
});

// A kiosk link opened in a tab already on the page changes only the fragment.
window.addEventListener("hashchange", () => {
  const token = takeTokenFromFragment();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  client.useToken(token);
  showConnection(lastState);
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  client.logout();
});

// --- time range: a live window (`{last}`) or a fixed one (`{from, to, back}`) ---------

const presets = [...document.querySelectorAll("#range-picker [data-last]")].map((b) => Number(b.dataset.last));

function loadRange() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(RANGE_KEY));
    if (saved && presets.includes(saved.last)) return { last: saved.last };
    if (saved && Number.isInteger(saved.from) && Number.isInteger(saved.to) && saved.from <= saved.to) {
      return { from: saved.from, to: saved.to, back: presets.includes(saved.back) ? saved.back : DEFAULT_RANGE.last };
    }
  } catch {
    // Not JSON: the default below.
  }
  return DEFAULT_RANGE;
}

let range = loadRange();
const picker = new RangePicker($("range-picker"), $("range-hint"), { onChoose: chooseRange });
picker.show(range);

function chooseRange(next) {
  range = next;
  sessionStorage.setItem(RANGE_KEY, JSON.stringify(next));
  picker.show(next);
  if (widgets) widgets.rangeChanged();
}

/** A fixed range picked by dragging on a chart; "Back to live" returns to the preset left. */
function chooseFixedRange(from, to) {
  chooseRange({ from, to, back: "last" in range ? range.last : range.back });
}

// --- widgets ----------------------------------------------------------------------

function loadCharted() {
  try {
    const names = JSON.parse(sessionStorage.getItem(CHARTS_KEY));
    return Array.isArray(names) ? new Set(names) : null;
  } catch {
    return null;
  }
}

function startWidgets() {
  const subscriptions = [];
  const charts = new Map(); // name -> {chart, subscription, params}
  // Until the viewer picks charts, the first few metric names are drawn.
  let chosen = loadCharted();
  const isCharted = (name) => {
    if (chosen) return chosen.has(name);
    return tiles.stats.slice(0, DEFAULT_CHARTS).some((s) => s.name === name);
  };

  const counter = new Counter($("metric-count"));
  const tiles = new StatsTiles($("tiles"), {
    isCharted,
    onRender: (stats) => {
      $("tiles-empty").hidden = stats.length > 0;
      syncCharts();
      const names = $("metric-names");
      if (names) names.replaceChildren(...stats.map((s) => new Option(s.name)));
    },
    onToggleChart: (name) => {
      chosen = new Set(tiles.stats.map((s) => s.name).filter(isCharted));
      if (chosen.has(name)) chosen.delete(name);
      else chosen.add(name);
      sessionStorage.setItem(CHARTS_KEY, JSON.stringify([...chosen]));
      tiles.refreshToggles();
      syncCharts();
    },
  });
  const table = new LatestTable($("latest"));
  const alerts = new AlertsList($("alerts"), $("alerts-summary"));
  const alertEvents = new AlertEvents($("alert-events"));
  // The alert-status entries by metric name: tiles and charts of a metric
  // whose alert fires are marked, and its charts draw the thresholds.
  // Like the widgets, at most once per animation frame: every reading of a
  // metric with an alert changes its `value`, so pushes can come in bursts.
  let alertMarks = new Map();
  let alertList = null;
  let alertFrame = 0;
  const markAlerts = () => {
    alertFrame = 0;
    alertMarks = alertsByMetric(alertList);
    tiles.setAlerts(alertMarks);
    for (const [name, entry] of charts) entry.chart.setAlerts(alertMarks.get(name) || []);
  };
  const showAlerts = (list) => {
    alerts.set(list);
    alertList = list;
    if (!alertFrame) alertFrame = requestAnimationFrame(markAlerts);
  };

  // Each chart subscribes to its name's series over the page's range, in
  // about as many buckets as it has pixels to show them: the server's cost
  // and the push size follow the chart's width, not the history stored.
  function subscribeChart(entry) {
    const { chart } = entry;
    const span = "last" in range ? { last: range.last } : { from: range.from, to: range.to };
    const params = { name: chart.name, points: chart.pointsWanted(), ...span };
    if (entry.subscription) entry.subscription.close();
    entry.params = params;
    chart.subscribed(params);
    entry.subscription = client.subscribe(
      "metric-series",
      params,
      (result) => chart.set(result),
      (error) => chart.fail(error),
    );
  }

  // A chart whose width changed the number of points it wants by much asks again.
  let resizeTimer = 0;
  const onChartResize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const entry of charts.values()) {
        const wanted = entry.chart.pointsWanted();
        if (Math.abs(wanted - entry.params.points) > REPOINT_SHARE * entry.params.points) subscribeChart(entry);
      }
    }, RESIZE_SETTLE_MS);
  };
  let rangeTimer = 0;
  const onRangeChanged = () => {
    clearTimeout(rangeTimer);
    rangeTimer = setTimeout(() => {
      for (const entry of charts.values()) subscribeChart(entry);
    }, RANGE_SETTLE_MS);
  };

  // Charts follow the summary: one per charted name, in the tiles' order.
  function syncCharts() {
    const wanted = tiles.stats.map((s) => s.name).filter(isCharted);
    for (const [name, entry] of charts) {
      if (!wanted.includes(name)) {
        entry.subscription.close();
        entry.chart.destroy();
        charts.delete(name);
      }
    }
    const container = $("charts");
    const added = [];
    let cursor = container.firstElementChild;
    for (const name of wanted) {
      let entry = charts.get(name);
      if (!entry) {
        const chart = new MetricChart(name, { onSelectRange: chooseFixedRange, onResize: onChartResize });
        chart.setAlerts(alertMarks.get(name) || []);
        entry = { chart, subscription: null, params: null };
        charts.set(name, entry);
        added.push(entry);
      }
      if (entry.chart.node !== cursor) container.insertBefore(entry.chart.node, cursor);
      else cursor = cursor.nextElementSibling;
    }
    $("charts-empty").hidden = wanted.length > 0;
    // In the page by now, so their width is known.
    for (const entry of added) subscribeChart(entry);
  }

  subscriptions.push(client.subscribe("metric-count", null, (count) => counter.set(count)));
  subscriptions.push(client.subscribe("metric-stats", null, (stats) => tiles.set(stats)));
  // alert-status carries every alert with its state: active-alerts would only repeat the alerts.
  subscriptions.push(client.subscribe("alert-status", null, showAlerts));
  subscriptions.push(client.subscribe("alert-events", { n: ALERT_EVENTS_SHOWN }, (list) => alertEvents.set(list)));

  const rowsInput = $("latest-n");
  rowsInput.value = sessionStorage.getItem(ROWS_KEY) || rowsInput.value;
  let latest = null;
  let latestN = 0;
  function subscribeLatest() {
    const n = Math.min(MAX_TABLE_ROWS, Math.max(1, Math.floor(Number(rowsInput.value)) || 1));
    if (n === latestN) return;
    latestN = n;
    sessionStorage.setItem(ROWS_KEY, String(n));
    if (latest) latest.close();
    table.reset();
    latest = client.subscribe("latest-metrics", { n }, (records) => table.set(records));
  }
  let rowsTimer = 0;
  const onRows = () => {
    clearTimeout(rowsTimer);
    rowsTimer = setTimeout(subscribeLatest, 250);
  };
  // Show the n actually used once the field is left (it is kept within 1..MAX_TABLE_ROWS).
  const onRowsChange = () => {
    clearTimeout(rowsTimer);
    subscribeLatest();
    rowsInput.value = String(latestN);
  };
  rowsInput.addEventListener("input", onRows);
  rowsInput.addEventListener("change", onRowsChange);
  subscribeLatest();

  widgets = {
    rangeChanged: onRangeChanged,
    stop() {
      cancelAnimationFrame(alertFrame);
      clearTimeout(rowsTimer);
      clearTimeout(resizeTimer);
      clearTimeout(rangeTimer);
      rowsInput.removeEventListener("input", onRows);
      rowsInput.removeEventListener("change", onRowsChange);
      for (const subscription of subscriptions) subscription.close();
      if (latest) latest.close();
      for (const { chart, subscription } of charts.values()) {
        subscription.close();
        chart.destroy();
      }
      charts.clear();
      for (const id of ["tiles", "charts", "alerts", "alert-events", "latest"]) $(id).replaceChildren();
      $("metric-count").textContent = "–";
      $("alerts-summary").textContent = "";
    },
  };
}

function stopWidgets() {
  if (widgets) widgets.stop();
  widgets = null;
  syncAdminTools(false);
}

// --- admin tools ------------------------------------------------------------------

function syncAdminTools(isAdmin) {
  const present = $("admin-panel");
  if (!isAdmin) {
    if (present) present.remove();
    return;
  }
  if (present) return;
  $("admin-slot").append($("admin-tools").content.cloneNode(true));
  const status = $("admin-status");
  const report = (text, ok = true) => {
    status.textContent = text;
    status.dataset.ok = String(ok);
  };

  async function run(form, request, done) {
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      done(await request());
    } catch (error) {
      report(error.code ? `${error.code}: ${error.message}` : error.message, false);
    } finally {
      button.disabled = false;
    }
  }

  $("push-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const data = {
      name: form.elements.name.value.trim(),
      value: Number(form.elements.value.value),
      unit: form.elements.unit.value.trim(),
      timestamp: Date.now(),
    };
    run(form, () => client.request("store.insert", { bucket: "metrics", data }), (record) => {
      report(`Pushed ${record.name} = ${formatValue(record.value, record.unit)}`);
      form.elements.value.value = "";
      form.elements.value.focus();
    });
  });

  $("alert-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const data = {
      metric: form.elements.metric.value.trim(),
      threshold: Number(form.elements.threshold.value),
      severity: form.elements.severity.value,
      timestamp: Date.now(),
    };
    run(form, () => client.request("store.insert", { bucket: "alerts", data }), (alert) => {
      report(`Created a ${alert.severity} alert: ${alert.metric} above ${formatNumber(alert.threshold)}`);
    });
  });

  $("clear-metrics").addEventListener("click", async (event) => {
    const count = Number($("metric-count").dataset.value);
    if (!confirm(`Delete ${Number.isNaN(count) ? "all" : formatCount(count)} metrics for everyone watching?`)) return;
    const button = event.currentTarget;
    button.disabled = true;
    try {
      await client.request("store.clear", { bucket: "metrics" });
      report("Cleared the metrics.");
    } catch (error) {
      report(error.code ? `${error.code}: ${error.message}` : error.message, false);
    } finally {
      button.disabled = false;
    }
  });
}

// --- start ------------------------------------------------------------------------

const remembered = sessionStorage.getItem(TOKEN_KEY);
if (remembered) client.useToken(remembered);
else showLogin();
client.start();
