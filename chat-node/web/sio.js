// A small Socket.IO v4 client written for Switchyard: Engine.IO v4 (WebSocket first,
// HTTP long-polling when the WebSocket cannot open; no upgrade from polling), Socket.IO
// protocol v5 on the main namespace "/" (CONNECT with auth, EVENT, ACK, CONNECT_ERROR,
// DISCONNECT), reconnection with exponential backoff and jitter, and connection-state
// recovery (the server replays what was missed when we come back with `pid` and `offset`).
// Binary packets are not supported: the chat API is JSON only.

const EIO_OPEN = "0";
const EIO_CLOSE = "1";
const EIO_PING = "2";
const EIO_PONG = "3";
const EIO_MESSAGE = "4";
const EIO_NOOP = "6";
const RECORD_SEPARATOR = "\x1e";

/** How long a WebSocket failure (with working polling) sends reconnects to polling. */
const POLLING_MEMORY_MS = 60000;

const SIO_CONNECT = 0;
const SIO_DISCONNECT = 1;
const SIO_EVENT = 2;
const SIO_ACK = 3;
const SIO_CONNECT_ERROR = 4;

/** A tiny event emitter: `on`, `off`, and `fire` (kept apart from Socket.IO's `emit`). */
class Emitter {
  constructor() {
    this.listeners = new Map();
  }

  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return this;
  }

  off(name, fn) {
    this.listeners.get(name)?.delete(fn);
    return this;
  }

  fire(name, ...args) {
    for (const fn of [...(this.listeners.get(name) ?? [])]) {
      try {
        fn(...args);
      } catch (error) {
        // A failing listener must not break the connection's state machine.
        console.error(`sio: listener for ${name} failed`, error);
      }
    }
  }
}

/** The Engine.IO endpoint for `transport` (absolute URL, scheme matching the page). */
function endpoint(base, transport, sid) {
  const url = new URL(base.path, base.origin);
  if (transport === "websocket") url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("EIO", "4");
  url.searchParams.set("transport", transport);
  if (sid) url.searchParams.set("sid", sid);
  if (transport === "polling") url.searchParams.set("t", Math.random().toString(36).slice(2));
  return url.toString();
}

/**
 * Engine.IO over one WebSocket. Handlers: `packet(text)` for every text frame, `close(reason)`
 * once when the socket closes or fails (`opened` tells whether it ever opened).
 */
class WebSocketTransport {
  constructor(base, handlers) {
    this.name = "websocket";
    this.handlers = handlers;
    this.closed = false;
    this.opened = false;
    this.ws = new WebSocket(endpoint(base, "websocket"));
    this.ws.onopen = () => {
      this.opened = true;
    };
    this.ws.onmessage = (event) => {
      if (typeof event.data === "string") this.handlers.packet(event.data);
    };
    this.ws.onerror = () => this.finish("websocket error");
    this.ws.onclose = () => this.finish("websocket closed");
  }

  finish(reason) {
    if (this.closed) return;
    this.closed = true;
    this.handlers.close(reason, this.opened);
  }

  send(packets) {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) return;
    for (const packet of packets) this.ws.send(packet);
  }

  close() {
    this.closed = true;
    try {
      this.ws.close();
    } catch {
      // Closing a socket that never opened can throw; it is gone either way.
    }
  }
}

/**
 * Engine.IO over HTTP long-polling: one GET in flight at a time, one POST at a time (packets
 * queued meanwhile are sent together, separated by the record separator).
 */
class PollingTransport {
  constructor(base, handlers) {
    this.name = "polling";
    this.base = base;
    this.handlers = handlers;
    this.sid = null;
    this.closed = false;
    this.opened = false;
    this.queue = [];
    this.writing = false;
    this.aborter = new AbortController();
    this.poll();
  }

  async poll() {
    while (!this.closed) {
      let body;
      try {
        const response = await fetch(endpoint(this.base, "polling", this.sid), {
          cache: "no-store",
          credentials: "same-origin",
          signal: this.aborter.signal,
        });
        if (!response.ok) throw new Error(`poll answered ${response.status}`);
        body = await response.text();
      } catch (error) {
        this.finish(`polling error: ${error.message ?? error}`);
        return;
      }
      if (this.closed) return;
      this.opened = true;
      for (const packet of body.split(RECORD_SEPARATOR)) {
        if (packet.length > 0) this.handlers.packet(packet);
        if (this.closed) return;
      }
    }
  }

  /** Called by the engine once the handshake named the session. */
  setSid(sid) {
    this.sid = sid;
  }

  send(packets) {
    if (this.closed) return;
    this.queue.push(...packets);
    this.flush();
  }

  async flush() {
    if (this.writing || this.queue.length === 0 || !this.sid) return;
    this.writing = true;
    const batch = this.queue.splice(0, this.queue.length);
    try {
      const response = await fetch(endpoint(this.base, "polling", this.sid), {
        method: "POST",
        body: batch.join(RECORD_SEPARATOR),
        headers: { "Content-Type": "text/plain;charset=UTF-8" },
        cache: "no-store",
        credentials: "same-origin",
        signal: this.aborter.signal,
      });
      if (!response.ok) throw new Error(`post answered ${response.status}`);
    } catch (error) {
      this.finish(`polling error: ${error.message ?? error}`);
      return;
    } finally {
      this.writing = false;
    }
    this.flush();
  }

  finish(reason) {
    if (this.closed) return;
    this.closed = true;
    this.aborter.abort();
    this.handlers.close(reason, this.opened);
  }

  close() {
    if (this.closed) return;
    if (this.sid) {
      // Best effort: tell the server at once instead of letting the session time out.
      fetch(endpoint(this.base, "polling", this.sid), {
        method: "POST",
        body: EIO_CLOSE,
        headers: { "Content-Type": "text/plain;charset=UTF-8" },
        credentials: "same-origin",
        keepalive: true,
      }).catch(() => {});
    }
    this.closed = true;
    this.aborter.abort();
  }
}

/**
 * One Engine.IO session: picks a transport (WebSocket, then polling if the WebSocket does not
 * open), answers pings, and notices a dead connection when pings stop. Fires `open`,
 * `message(text)` and `close(reason)` (once).
 */
class EngineSession extends Emitter {
  constructor(base, transports, openTimeout) {
    super();
    this.base = base;
    this.candidates = [...transports];
    this.openTimeout = openTimeout;
    this.transport = null;
    this.sid = null;
    this.state = "opening";
    this.heartbeat = null;
    this.openTimer = null;
    this.websocketFailed = false;
    this.next();
  }

  /** Tries the next candidate transport, or gives up. */
  next() {
    const name = this.candidates.shift();
    if (!name) {
      this.finish(this.lastError ?? "no transport could connect");
      return;
    }
    // Declared first: a transport may report a failure from inside its constructor.
    let transport = null;
    const handlers = {
      packet: (text) => this.onPacket(transport, text),
      close: (reason, opened) => this.onTransportClose(transport, reason, opened),
    };
    transport =
      name === "websocket" ? new WebSocketTransport(this.base, handlers) : new PollingTransport(this.base, handlers);
    this.transport = transport;
    clearTimeout(this.openTimer);
    this.openTimer = setTimeout(() => {
      if (this.state === "opening" && this.transport === transport) {
        transport.close();
        this.onTransportClose(transport, `${name}: no handshake within ${this.openTimeout} ms`, false);
      }
    }, this.openTimeout);
  }

  onTransportClose(transport, reason, _opened) {
    if (transport === null || transport !== this.transport || this.state === "closed") return;
    if (this.state === "opening") {
      // Before the handshake: fall back to the next transport.
      if (transport.name === "websocket") this.websocketFailed = true;
      this.lastError = reason;
      this.next();
      return;
    }
    this.finish(reason);
  }

  onPacket(transport, text) {
    if (transport !== this.transport || this.state === "closed") return;
    const type = text[0];
    const data = text.slice(1);
    switch (type) {
      case EIO_OPEN: {
        let handshake;
        try {
          handshake = JSON.parse(data);
        } catch {
          this.finish("bad handshake");
          return;
        }
        this.sid = handshake.sid;
        this.pingInterval = Number(handshake.pingInterval) || 25000;
        this.pingTimeout = Number(handshake.pingTimeout) || 20000;
        if (transport.setSid) transport.setSid(this.sid);
        clearTimeout(this.openTimer);
        this.state = "open";
        this.armHeartbeat();
        this.fire("open", transport.name);
        break;
      }
      case EIO_PING:
        this.armHeartbeat();
        transport.send([EIO_PONG + data]);
        break;
      case EIO_MESSAGE:
        if (this.state === "open") this.fire("message", data);
        break;
      case EIO_CLOSE:
        this.finish("server closed the session");
        break;
      case EIO_NOOP:
      case EIO_PONG:
        break;
      default:
        // Binary ("b…") and unknown packets: not used by the chat API.
        break;
    }
  }

  /** The server pings every pingInterval: no ping for pingInterval + pingTimeout → dead. */
  armHeartbeat() {
    clearTimeout(this.heartbeat);
    this.heartbeat = setTimeout(() => this.finish("ping timeout"), this.pingInterval + this.pingTimeout);
  }

  send(text) {
    if (this.state !== "open") return false;
    this.transport.send([EIO_MESSAGE + text]);
    return true;
  }

  finish(reason) {
    if (this.state === "closed") return;
    this.state = "closed";
    clearTimeout(this.heartbeat);
    clearTimeout(this.openTimer);
    this.transport?.close();
    this.fire("close", reason);
  }

  close() {
    this.finish("client closed");
  }
}

/** Parses one Socket.IO packet (text only); `null` when malformed. */
export function decodePacket(text) {
  let i = 0;
  const type = Number(text[i++]);
  if (!Number.isInteger(type) || type < 0 || type > 6) return null;
  if (type === 5 || type === 6) return null;
  let nsp = "/";
  if (text[i] === "/") {
    const comma = text.indexOf(",", i);
    if (comma === -1) {
      nsp = text.slice(i);
      i = text.length;
    } else {
      nsp = text.slice(i, comma);
      i = comma + 1;
    }
  }
  let id = null;
  let digits = "";
  while (i < text.length && text[i] >= "0" && text[i] <= "9") digits += text[i++];
  if (digits) id = Number(digits);
  let data;
  if (i < text.length) {
    try {
      data = JSON.parse(text.slice(i));
    } catch {
      return null;
    }
  }
  return { type, nsp, id, data };
}

/** Encodes a Socket.IO packet on the main namespace. */
export function encodePacket(type, id, data) {
  let out = String(type);
  if (id !== null && id !== undefined) out += String(id);
  if (data !== undefined) out += JSON.stringify(data);
  return out;
}

/**
 * A Socket.IO connection to the main namespace of the page's own server.
 *
 * Options: `auth` (object or function returning one, read at every connect), `transports`
 * (default `["websocket", "polling"]`), `path` (`/socket.io/`), `ackTimeout` (ms),
 * `reconnectDelay`, `reconnectDelayMax` (ms), `randomization` (0..1), `openTimeout` (ms, for
 * the Engine.IO handshake of one transport), `connectTimeout` (ms, for the CONNECT reply).
 *
 * Fires: `state(state)` ("connecting", "connected", "reconnecting", "disconnected",
 * "error"), `connect()`, `disconnect(reason)`, `connect_error(error)`, and every server event
 * with its arguments (a recovery offset already stripped).
 */
export class SioClient extends Emitter {
  constructor(options = {}) {
    super();
    this.options = {
      path: "/socket.io/",
      transports: ["websocket", "polling"],
      ackTimeout: 10000,
      reconnectDelay: 500,
      reconnectDelayMax: 8000,
      randomization: 0.5,
      openTimeout: 8000,
      connectTimeout: 20000,
      ...options,
    };
    this.base = { origin: options.origin ?? window.location.origin, path: this.options.path };
    this.state = "disconnected";
    this.engine = null;
    this.connected = false;
    this.recovered = false;
    this.id = null;
    this.pid = null;
    this.offset = null;
    this.transport = null;
    this.attempts = 0;
    this.reconnectTimer = null;
    this.connectTimer = null;
    this.nextAckId = 0;
    this.acks = new Map();
    // Until when reconnects skip the WebSocket (see `connect`).
    this.pollingUntil = 0;
    this.wantConnected = false;
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.fire("state", state);
  }

  /** Connects (again), if not connected or connecting. */
  connect() {
    this.wantConnected = true;
    if (this.engine) return this;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.setState(this.attempts > 0 ? "reconnecting" : "connecting");
    let transports = this.options.transports;
    // A WebSocket that failed while polling worked may be blocked on the way: reconnects in
    // the next minute go straight to polling instead of waiting for it to fail again. Not
    // for ever: it may as well have been one dead server behind a balancer.
    if (Date.now() < this.pollingUntil && transports.includes("polling")) transports = ["polling"];
    const engine = new EngineSession(this.base, transports, this.options.openTimeout);
    this.engine = engine;
    engine.on("open", (transport) => {
      if (engine.websocketFailed && transport === "polling") {
        this.pollingUntil = Date.now() + POLLING_MEMORY_MS;
      }
      this.transport = transport;
      this.fire("transport", transport);
      engine.send(encodePacket(SIO_CONNECT, null, this.connectPayload()));
      // A server that keeps the transport up but never answers CONNECT: start over.
      clearTimeout(this.connectTimer);
      this.connectTimer = setTimeout(() => {
        if (this.engine === engine && !this.connected) engine.finish("no CONNECT reply");
      }, this.options.connectTimeout);
    });
    engine.on("message", (text) => this.onPacket(text));
    engine.on("close", (reason) => this.onEngineClose(engine, reason));
    return this;
  }

  /** After a refusal the server may lift (it is unavailable): try again with backoff. */
  retryLater() {
    if (this.engine || this.reconnectTimer !== null) return;
    this.wantConnected = true;
    this.scheduleReconnect();
  }

  /** Skips the rest of a reconnection delay (for example when the browser comes online). */
  reconnectNow() {
    if (this.reconnectTimer === null || !this.wantConnected) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.connect();
  }

  /**
   * The CONNECT payload: the application's auth, plus what recovers the previous session
   * (`pid` from the last CONNECT reply, `offset` of the last event received).
   */
  connectPayload() {
    const auth = typeof this.options.auth === "function" ? this.options.auth() : this.options.auth;
    const payload = { ...(auth ?? {}) };
    if (this.pid) {
      payload.pid = this.pid;
      if (this.offset !== null) payload.offset = this.offset;
    }
    return payload;
  }

  /** Disconnects on purpose: no reconnection until `connect()`. */
  disconnect() {
    this.wantConnected = false;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const engine = this.engine;
    if (engine) {
      if (this.connected) engine.send(encodePacket(SIO_DISCONNECT));
      this.engine = null;
      engine.close();
    }
    this.lost("client disconnect");
    this.attempts = 0;
    this.setState("disconnected");
    return this;
  }

  onEngineClose(engine, reason) {
    if (engine !== this.engine) return;
    this.engine = null;
    this.lost(reason);
    if (this.wantConnected) this.scheduleReconnect();
    else this.setState("disconnected");
  }

  /** The connection is gone: pending acks fail, listeners hear `disconnect`. */
  lost(reason) {
    clearTimeout(this.connectTimer);
    const wasConnected = this.connected;
    this.connected = false;
    this.transport = null;
    for (const [, pending] of this.acks) {
      clearTimeout(pending.timer);
      pending.reject(new Error("disconnected"));
    }
    this.acks.clear();
    if (wasConnected) this.fire("disconnect", reason);
  }

  /** Exponential backoff with jitter, bounded by `reconnectDelayMax`. */
  reconnectDelay() {
    const { reconnectDelay, reconnectDelayMax, randomization } = this.options;
    const exp = Math.min(reconnectDelayMax, reconnectDelay * 2 ** Math.min(this.attempts, 16));
    const jitter = exp * randomization * (Math.random() * 2 - 1);
    return Math.max(0, Math.min(reconnectDelayMax, Math.round(exp + jitter)));
  }

  scheduleReconnect() {
    const delay = this.reconnectDelay();
    this.attempts += 1;
    this.setState("reconnecting");
    this.fire("reconnect_scheduled", delay);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.wantConnected) this.connect();
    }, delay);
  }

  onPacket(text) {
    const packet = decodePacket(text);
    if (!packet) {
      console.warn("sio: dropping a malformed packet");
      return;
    }
    if (packet.nsp !== "/") return;
    switch (packet.type) {
      case SIO_CONNECT: {
        const data = packet.data ?? {};
        const pid = typeof data.pid === "string" ? data.pid : null;
        this.recovered = Boolean(pid && this.pid === pid);
        if (!this.recovered) this.offset = null;
        this.pid = pid;
        this.id = data.sid ?? null;
        clearTimeout(this.connectTimer);
        this.connected = true;
        this.attempts = 0;
        this.setState("connected");
        this.fire("connect");
        break;
      }
      case SIO_CONNECT_ERROR: {
        const message = packet.data?.message ?? "connection refused";
        const error = new Error(message);
        error.data = packet.data?.data;
        // Like socket.io-client: a refusal is final until the application connects again
        // (with another name, or later: see `retryLater`).
        this.wantConnected = false;
        const engine = this.engine;
        this.engine = null;
        engine?.close();
        this.lost("connect error");
        this.setState("error");
        this.fire("connect_error", error);
        break;
      }
      case SIO_DISCONNECT: {
        // The server ended the session on purpose: do not come back on our own.
        this.wantConnected = false;
        const engine = this.engine;
        this.engine = null;
        engine?.close();
        this.lost("io server disconnect");
        this.setState("disconnected");
        break;
      }
      case SIO_EVENT: {
        // Events may precede the CONNECT reply: a recovering server replays first.
        if (!Array.isArray(packet.data)) return;
        const args = [...packet.data];
        const name = args.shift();
        if (typeof name !== "string") return;
        if (packet.id === null && this.pid && args.length > 0 && typeof args[args.length - 1] === "string") {
          // Connection-state recovery: the server appends the event's offset.
          this.offset = args.pop();
        }
        if (packet.id !== null) {
          let answered = false;
          args.push((...reply) => {
            if (answered) return;
            answered = true;
            this.engine?.send(encodePacket(SIO_ACK, packet.id, reply));
          });
        }
        this.fire(name, ...args);
        break;
      }
      case SIO_ACK: {
        const pending = this.acks.get(packet.id);
        if (!pending) return;
        this.acks.delete(packet.id);
        clearTimeout(pending.timer);
        pending.resolve(Array.isArray(packet.data) ? packet.data : []);
        break;
      }
      default:
        break;
    }
  }

  /** Sends an event without an acknowledgement; dropped while disconnected. */
  emit(event, ...args) {
    if (!this.connected || !this.engine) return false;
    return this.engine.send(encodePacket(SIO_EVENT, null, [event, ...args]));
  }

  /**
   * Sends an event and resolves with the first argument of the server's acknowledgement;
   * rejects when not connected, on disconnection, or after `timeout` ms.
   */
  request(event, data, timeout = this.options.ackTimeout) {
    return new Promise((resolve, reject) => {
      if (!this.connected || !this.engine) {
        reject(new Error("not connected"));
        return;
      }
      const id = this.nextAckId++;
      const timer = setTimeout(() => {
        this.acks.delete(id);
        reject(new Error(`no answer to ${event} within ${timeout} ms`));
      }, timeout);
      this.acks.set(id, { resolve: (args) => resolve(args[0]), reject, timer });
      this.engine.send(encodePacket(SIO_EVENT, id, [event, data]));
    });
  }
}
