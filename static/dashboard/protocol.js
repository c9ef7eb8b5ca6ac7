// A client of the dashboard's WebSocket protocol (docs/protocol.md), as any
// other client of it: numbered requests, replies matched by id, pushes routed
// by subscription id, pongs for the server's pings. It keeps itself connected:
// after a drop it reconnects with exponential backoff and jitter, logs in
// again with the remembered token and subscribes again to every live
// subscription, whose callback then gets the fresh initial result.

export class ProtocolError extends Error {
  constructor(code, message, details) {
    super(message);
    this.name = "ProtocolError";
    this.code = code;
    this.details = details;
  }
}

const CLOSE_SESSION_REVOKED = 4002;
// The server closes connections that do not log in within its deadline:
// without a token there is nothing to reconnect for until one is given.
const CLOSE_LOGIN_TIMEOUT = 4004;

export class ProtocolClient extends EventTarget {
  /**
   * @param {string} url  ws:// or wss:// address of the endpoint
   * @param {{minDelayMs?: number, maxDelayMs?: number, requestTimeoutMs?: number}} options
   */
  constructor(url, { minDelayMs = 250, maxDelayMs = 15000, requestTimeoutMs = 15000 } = {}) {
    super();
    this.url = url;
    this.minDelayMs = minDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.requestTimeoutMs = requestTimeoutMs;
    this.state = "idle"; // idle | connecting | open | live | waiting | stopped
    this.session = null; // {userId, roles, expiresAt} once logged in
    this.token = null;
    this.connects = 0; // successful connections so far (shown for diagnosis)
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> {resolve, reject, timer, onResult}
    this._subscriptions = new Set();
    this._bySid = new Map(); // subscriptionId -> subscription, this connection only
    this._attempt = 0;
    this._retryTimer = null;
    this._watchdog = null;
    this._pingGapMs = null;
    this._lastPingAt = null;
  }

  /** Connects, and keeps reconnecting until stop(). */
  start() {
    if (this.state === "idle" || this.state === "stopped") this._connect();
  }

  stop() {
    this._setState("stopped");
    clearTimeout(this._retryTimer);
    clearTimeout(this._watchdog);
    if (this._ws) this._ws.close(1000, "client_stopped");
  }

  /**
   * Logs in with `token` now if connected, else as soon as the connection is
   * up, and again after every reconnect. The outcome comes as a "session"
   * event, or an "autherror" event (after which the token is forgotten).
   */
  useToken(token) {
    this.token = token;
    if (this.state === "open" || this.state === "live") this._login();
    else if (this.state === "idle") this._connect();
  }

  /** Ends the session and forgets the token; subscriptions wait for the next login. */
  logout() {
    this.token = null;
    const connected = this.state === "open" || this.state === "live";
    for (const sub of this._subscriptions) {
      if (sub.sid && connected) this.request("store.unsubscribe", { subscriptionId: sub.sid }).catch(() => {});
      sub.sid = null;
    }
    this._bySid.clear();
    if (connected) this.request("auth.logout", {}).catch(() => {});
    this._setSession(null);
  }

  /**
   * Sends one request; resolves with the result's data, rejects with a
   * ProtocolError for an error frame, or an Error when the connection is lost.
   */
  request(type, fields = {}) {
    return new Promise((resolve, reject) => this._send(type, fields, { resolve, reject }));
  }

  /**
   * Subscribes to a reactive query while logged in, across reconnects.
   * `onData(data)` gets the initial result and every push; `onError(error)`
   * a refused subscribe. Returns a handle whose close() ends it.
   */
  subscribe(query, params, onData, onError = () => {}) {
    const sub = { query, params, onData, onError, sid: null, inFlight: false, closed: false };
    this._subscriptions.add(sub);
    if (this.session) this._sendSubscribe(sub);
    return { close: () => this._unsubscribe(sub) };
  }

  // --- connection ---------------------------------------------------------

  _connect() {
    clearTimeout(this._retryTimer);
    this._setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (error) {
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    ws.onmessage = (event) => this._onFrame(ws, event.data);
    ws.onclose = (event) => this._onClose(ws, event);
    // onerror is always followed by onclose, which does the work.
  }

  _onClose(ws, event) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearTimeout(this._watchdog);
    this._pingGapMs = this._lastPingAt = null;
    for (const [, pending] of this._pending) {
      clearTimeout(pending.timer);
      pending.reject(new Error("Connection lost"));
    }
    this._pending.clear();
    // Subscription ids belong to the connection: all of them are gone.
    this._bySid.clear();
    for (const sub of this._subscriptions) {
      sub.sid = null;
      sub.inFlight = false;
    }
    if (event.code === CLOSE_LOGIN_TIMEOUT && !this.token && this.state !== "stopped") {
      this._setState("idle");
    } else if (this.state !== "stopped") {
      this._scheduleReconnect(event.code);
    }
    this._setSession(null);
    if (event.code === CLOSE_SESSION_REVOKED) {
      this.token = null;
      this._emit("autherror", { message: "Your session was revoked: log in again.", code: "REVOKED" });
    }
  }

  _scheduleReconnect(code) {
    // Exponential backoff with "equal jitter": half the delay is fixed, half
    // random, so a restarted server is not met by every screen at once.
    const ceiling = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** this._attempt);
    const delayMs = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this._attempt += 1;
    this._setState("waiting", { delayMs, attempt: this._attempt, code });
    this._retryTimer = setTimeout(() => this._connect(), delayMs);
  }

  _onWelcome() {
    this.connects += 1;
    this._setState("open");
    if (this.token) this._login();
    else this._attempt = 0;
  }

  _login() {
    const token = this.token;
    this.request("auth.login", { token }).then(
      (session) => {
        if (token !== this.token) return; // another token was given meanwhile
        this._attempt = 0;
        this._setSession(session);
        this._resubscribe();
      },
      (error) => {
        if (token !== this.token || !(error instanceof ProtocolError)) return; // lost: retried on reconnect
        if (error.code === "UNAUTHORIZED" || error.code === "VALIDATION_ERROR") {
          // A wrong, expired or revoked token: ask for a new one.
          this.token = null;
          this._emit("autherror", { message: error.message, code: error.code });
        } else if (this._ws) {
          // The server could not log us in just now (rate limit, a failure
          // while it restarts): a wall screen keeps its token and tries
          // again on a new connection, after the next backoff delay.
          this._ws.close(4000, "login_retry");
        }
      },
    );
  }

  _armWatchdog() {
    // A connection that silently died (a wall screen's network dropped) gives
    // no close event for minutes. Once two pings have shown the server's
    // interval, silence for two and a half intervals means it is gone.
    clearTimeout(this._watchdog);
    if (!this._pingGapMs) return;
    const ws = this._ws;
    this._watchdog = setTimeout(() => {
      if (ws === this._ws && ws) ws.close(4000, "no_heartbeat");
    }, this._pingGapMs * 2.5);
  }

  // --- frames --------------------------------------------------------------

  _send(type, fields, pending) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this.state === "connecting") {
      pending.reject(new Error("Not connected"));
      return;
    }
    const id = this._nextId++;
    pending.timer = setTimeout(() => {
      this._pending.delete(id);
      pending.reject(new Error(`No reply to ${type} within ${this.requestTimeoutMs} ms`));
    }, this.requestTimeoutMs);
    this._pending.set(id, pending);
    ws.send(JSON.stringify({ id, type, ...fields }));
  }

  _onFrame(ws, text) {
    if (ws !== this._ws) return;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      console.warn("dashboard: ignoring a frame that is not JSON", error);
      return;
    }
    this._armWatchdog();
    switch (frame.type) {
      case "push": {
        const sub = this._bySid.get(frame.subscriptionId);
        if (sub && !sub.closed) sub.onData(frame.data);
        return;
      }
      case "result":
      case "error": {
        const pending = this._pending.get(frame.id);
        if (!pending) return;
        this._pending.delete(frame.id);
        clearTimeout(pending.timer);
        if (frame.type === "result") {
          // Runs before the next frame is handled, so a subscription's id is
          // known before its first push arrives.
          if (pending.onResult) pending.onResult(frame.data);
          pending.resolve(frame.data);
        } else {
          const error = new ProtocolError(frame.code, frame.message, frame.details);
          if (error.code === "UNAUTHORIZED" && this.session && /expired/i.test(error.message)) {
            this.token = null;
            this._setSession(null);
            this._emit("autherror", { message: error.message, code: error.code });
          }
          pending.reject(error);
        }
        return;
      }
      case "ping":
        ws.send(JSON.stringify({ type: "pong", timestamp: frame.timestamp }));
        if (this._lastPingAt !== null) this._pingGapMs = Date.now() - this._lastPingAt;
        this._lastPingAt = Date.now();
        this._armWatchdog();
        return;
      case "welcome":
        this._onWelcome();
        return;
      case "system":
        this._emit("system", frame);
        return;
      default:
        return;
    }
  }

  // --- subscriptions ---------------------------------------------------------

  _resubscribe() {
    for (const sub of this._subscriptions) {
      if (!sub.sid && !sub.inFlight) this._sendSubscribe(sub);
    }
  }

  _sendSubscribe(sub) {
    const fields = sub.params == null ? { query: sub.query } : { query: sub.query, params: sub.params };
    sub.inFlight = true;
    this._send("store.subscribe", fields, {
      onResult: (data) => {
        sub.inFlight = false;
        if (sub.closed) {
          this.request("store.unsubscribe", { subscriptionId: data.subscriptionId }).catch(() => {});
          return;
        }
        sub.sid = data.subscriptionId;
        this._bySid.set(sub.sid, sub);
        sub.onData(data.data);
      },
      resolve: () => {},
      reject: (error) => {
        sub.inFlight = false;
        if (!sub.closed && error instanceof ProtocolError) sub.onError(error);
      },
    });
  }

  _unsubscribe(sub) {
    if (sub.closed) return;
    sub.closed = true;
    this._subscriptions.delete(sub);
    if (sub.sid) {
      this._bySid.delete(sub.sid);
      this.request("store.unsubscribe", { subscriptionId: sub.sid }).catch(() => {});
      sub.sid = null;
    }
  }

  // --- events ----------------------------------------------------------------

  _setState(state, detail = {}) {
    this.state = state;
    this._emit("state", { state, ...detail });
  }

  _setSession(session) {
    const changed = session !== this.session;
    this.session = session;
    if (session) this._setState("live");
    else if (this.state === "live") this._setState("open");
    if (changed) this._emit("session", { session });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
