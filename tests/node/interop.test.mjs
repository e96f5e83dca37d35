// Interop of a Switchyard Socket.IO server with the official `socket.io-client` (pinned in
// package-lock.json). Run by tests/tests/socketio_interop.rs against the `conformance` binary
// (`--suite socket.io`), directly and through the proxy; by hand:
//
//   target/debug/conformance --suite socket.io --listen 127.0.0.1:3000 &
//   SIO_URL=http://127.0.0.1:3000 node --test tests/node/interop.test.mjs
//
// The server under test: path /socket.io/, pingInterval 300, pingTimeout 200; on `/` it emits
// "auth" with the CONNECT payload, answers "message" with "message-back" and
// "message-with-ack" with an ack, both with the same arguments; on `/custom` it emits "auth".

import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { waitEvent as waitFor } from "./wait.mjs";
import { io, Manager } from "socket.io-client";

const URL = process.env.SIO_URL;
if (!URL) {
  throw new Error("set SIO_URL to the server's base URL, e.g. http://127.0.0.1:3000");
}

/** Bound for one step (a connect, one round trip, an ack). */
const STEP_MS = 5000;
/** Bound for one whole test. */
const TEST_MS = 30000;
/** The server's pingInterval. */
const PING_INTERVAL_MS = 300;

/** Every socket and manager made here; whatever a test leaves open is closed at the end. */
const opened = new Set();

after(() => {
  for (const s of opened) {
    if (s instanceof Manager) {
      s._close?.();
    } else {
      s.disconnect();
    }
  }
});

/** A new socket on its own connection (no reconnection: a drop must fail the test). */
function open(nsp = "/", opts = {}) {
  const socket = io(URL + nsp, {
    forceNew: true,
    reconnection: false,
    timeout: STEP_MS,
    ...opts,
  });
  opened.add(socket);
  return socket;
}

/** A manager (one Engine.IO connection) for several namespaces. */
function manager(opts = {}) {
  const m = new Manager(URL, {
    reconnection: false,
    timeout: STEP_MS,
    autoConnect: false,
    ...opts,
  });
  opened.add(m);
  return m;
}

function waitEvent(emitter, event, ms = STEP_MS) {
  return waitFor(emitter, event, ms);
}

/** Resolves with the next `n` arguments lists of `event`; rejects after `ms`. */
function collect(emitter, event, n, ms = STEP_MS) {
  return new Promise((resolve, reject) => {
    const got = [];
    const on = (...args) => {
      got.push(args);
      if (got.length === n) {
        clearTimeout(timer);
        emitter.off(event, on);
        resolve(got);
      }
    };
    const timer = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`timed out after ${ms} ms: ${got.length} of ${n} "${event}" events`));
    }, ms);
    emitter.on(event, on);
  });
}

/** Resolves once `socket` is connected; rejects on connect_error or after `ms`. */
function connected(socket, ms = STEP_MS) {
  if (socket.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("connect", onConnect);
      socket.off("connect_error", onError);
    };
    const onConnect = () => {
      cleanup();
      resolve();
    };
    const onError = (err) => {
      cleanup();
      reject(new Error(`connect_error: ${err?.message ?? err}`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`not connected within ${ms} ms`));
    }, ms);
    socket.on("connect", onConnect);
    socket.on("connect_error", onError);
  });
}

/** Resolves with the error of the next connect_error; rejects on connect or after `ms`. */
function connectError(socket, ms = STEP_MS) {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("connect", onConnect);
      socket.off("connect_error", onError);
    };
    const onConnect = () => {
      cleanup();
      reject(new Error("connected, expected a connect_error"));
    };
    const onError = (err) => {
      cleanup();
      resolve(err);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no connect_error within ${ms} ms`));
    }, ms);
    socket.on("connect", onConnect);
    socket.on("connect_error", onError);
  });
}

/** Polls `cond` every 10 ms until it holds; rejects naming `what` after `ms`. */
async function until(cond, what, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Connects a socket and returns it with the payload of its "auth" event. */
async function openWithAuth(nsp, opts) {
  const socket = open(nsp, opts);
  // "auth" may arrive in the same read as the CONNECT reply: listen before connecting.
  const [, [auth]] = await Promise.all([connected(socket), waitEvent(socket, "auth")]);
  return { socket, auth };
}

/** Closes `socket` from the client side and checks that it is closed. */
async function close(socket) {
  const disconnected = socket.connected ? waitEvent(socket, "disconnect") : null;
  socket.disconnect();
  if (disconnected) {
    const [reason] = await disconnected;
    assert.equal(reason, "io client disconnect");
  }
  assert.equal(socket.connected, false);
  opened.delete(socket);
}

/** Binary values (Buffer, ArrayBuffer, typed arrays) as Buffers, recursively, to compare. */
function norm(v) {
  if (v instanceof ArrayBuffer) return Buffer.from(new Uint8Array(v));
  if (ArrayBuffer.isView(v)) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if (Array.isArray(v)) return v.map(norm);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, norm(x)]));
  }
  return v;
}

function bytes(n, seed) {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

/** Argument lists for the round trips: text, numbers, objects, and binary at any depth. */
const CASES = {
  strings: ["hello", "", "héllo wörld 🌍 ✓", 'quotes " \' \\ / and\nnew\tlines \u001e \u0000'],
  numbers: [0, 1, -1, 42, 1.5, 0.1 + 0.2, Number.MAX_SAFE_INTEGER, -1e21, 5e-324, 1.7976931348623157e308],
  "objects and arrays": [
    { a: 1, b: "two", c: [3, { d: null, e: true, f: false }] },
    [],
    {},
    [[[["deep"]]]],
    { "key with spaces": "v", ünïcode: "✓", "": "empty key" },
    null,
    true,
  ],
  "no arguments": [],
  "one buffer": [Buffer.from([1, 2, 3])],
  "every byte value": [ALL_BYTES],
  "Uint8Array and ArrayBuffer": [new Uint8Array([9, 8, 7, 0, 255]), new Uint8Array([4, 5, 6]).buffer],
  "nested binary": [
    "text first",
    { file: { name: "a.bin", data: bytes(1000, 7), parts: [Buffer.from("x"), { deeper: ALL_BYTES }] } },
    [Buffer.from([0]), 2, Buffer.from([255, 254])],
    7,
  ],
  "empty buffer": [Buffer.alloc(0), "after"],
  "large binary (200 KiB)": [bytes(200 * 1024, 42)],
  "large string (200 KiB)": ["x".repeat(200 * 1024)],
};

/** The checks every transport choice runs. */
function suite(label, transports, expectTransport) {
  describe(`transports ${label}`, () => {
    const opts = transports ? { transports } : {};

    test("connects, gets its auth payload back, ends on the expected transport", { timeout: TEST_MS }, async () => {
      const authIn = { token: "abc-123", user: { name: "ana", n: 7 }, list: [1, "2", null] };
      const { socket, auth } = await openWithAuth("/", { ...opts, auth: authIn });
      assert.deepEqual(auth, authIn);
      assert.ok(socket.id, "socket.id set after connect");
      if (expectTransport === "websocket") {
        await until(() => socket.io.engine?.transport?.name === "websocket", "the transport to be websocket");
      }
      // A round trip on the final transport.
      const back = waitEvent(socket, "message-back");
      socket.emit("message", "after-upgrade");
      assert.deepEqual(await back, ["after-upgrade"]);
      assert.equal(socket.io.engine.transport.name, expectTransport);
      await close(socket);
    });

    test("without auth the server sends {}", { timeout: TEST_MS }, async () => {
      const { socket, auth } = await openWithAuth("/", opts);
      assert.deepEqual(auth, {});
      await close(socket);
    });

    test("message → message-back round trips (text, numbers, objects, binary byte-identical)", { timeout: TEST_MS }, async () => {
      const { socket } = await openWithAuth("/", opts);
      for (const [name, args] of Object.entries(CASES)) {
        const back = waitEvent(socket, "message-back");
        socket.emit("message", ...args);
        const got = await back;
        assert.deepStrictEqual(norm(got), norm(args), `case "${name}"`);
      }
      await close(socket);
    });

    test("many events in a burst arrive complete and in order", { timeout: TEST_MS }, async () => {
      const socket = open("/", opts);
      // Emitted before the connection is up (buffered by the client) and during a possible
      // upgrade from polling to WebSocket: none may be lost or reordered.
      const n = 100;
      const all = collect(socket, "message-back", n);
      for (let i = 0; i < n; i++) {
        socket.emit("message", i, i % 10 === 0 ? Buffer.from([i]) : `m${i}`);
      }
      await connected(socket);
      const got = await all;
      for (let i = 0; i < n; i++) {
        assert.deepStrictEqual(norm(got[i]), norm([i, i % 10 === 0 ? Buffer.from([i]) : `m${i}`]), `event ${i}`);
      }
      await close(socket);
    });

    test("acks: emitWithAck on message-with-ack (text, objects, binary)", { timeout: TEST_MS }, async () => {
      const { socket } = await openWithAuth("/", opts);
      for (const [name, args] of Object.entries(CASES)) {
        if (args.length === 0) continue;
        // emitWithAck resolves with the ack's first argument.
        const first = await socket.timeout(STEP_MS).emitWithAck("message-with-ack", args[0]);
        assert.deepStrictEqual(norm(first), norm(args[0]), `case "${name}" (emitWithAck)`);
        // The callback form gets every argument of the ack.
        const all = await new Promise((resolve, reject) => {
          socket.timeout(STEP_MS).emit("message-with-ack", ...args, (err, ...resp) => (err ? reject(err) : resolve(resp)));
        });
        assert.deepStrictEqual(norm(all), norm(args), `case "${name}" (callback)`);
      }
      // Concurrent acks are matched to their own ids.
      const many = await Promise.all(
        Array.from({ length: 50 }, (_, i) => socket.timeout(STEP_MS).emitWithAck("message-with-ack", { i, bin: Buffer.from([i]) })),
      );
      many.forEach((r, i) => assert.deepStrictEqual(norm(r), { i, bin: Buffer.from([i]) }));
      // An event the server does not handle: the client's ack times out, the socket lives on.
      await assert.rejects(socket.timeout(300).emitWithAck("no-such-event", 1), /operation has timed out/);
      assert.equal(await socket.timeout(STEP_MS).emitWithAck("message-with-ack", "still here"), "still here");
      await close(socket);
    });

    test(`stays connected across heartbeats (pingInterval ${PING_INTERVAL_MS} ms)`, { timeout: TEST_MS }, async () => {
      const { socket } = await openWithAuth("/", opts);
      let dropped = null;
      socket.on("disconnect", (reason) => {
        dropped ??= reason;
      });
      let pings = 0;
      socket.io.on("ping", () => pings++);
      await new Promise((r) => setTimeout(r, 6 * PING_INTERVAL_MS));
      assert.equal(dropped, null, `disconnected: ${dropped}`);
      assert.ok(pings >= 3, `only ${pings} pings in ${6 * PING_INTERVAL_MS} ms`);
      assert.equal(await socket.timeout(STEP_MS).emitWithAck("message-with-ack", "alive"), "alive");
      await close(socket);
    });

    test("custom namespace /custom with its own auth, beside / on one connection", { timeout: TEST_MS }, async () => {
      const m = manager(opts);
      const root = m.socket("/", { auth: { ns: "root" } });
      const custom = m.socket("/custom", { auth: { ns: "custom", n: 2 } });
      opened.add(root);
      opened.add(custom);
      const rootAuth = waitEvent(root, "auth");
      const customAuth = waitEvent(custom, "auth");
      root.connect();
      custom.connect();
      await Promise.all([connected(root), connected(custom)]);
      assert.deepEqual((await rootAuth)[0], { ns: "root" });
      assert.deepEqual((await customAuth)[0], { ns: "custom", n: 2 });
      assert.equal(root.io, custom.io, "both namespaces share one Manager");
      assert.notEqual(root.id, custom.id, "each namespace has its own socket id");
      // /custom has no "message" handler: only / answers.
      let customGot = 0;
      custom.on("message-back", () => customGot++);
      const back = waitEvent(root, "message-back");
      root.emit("message", "on root");
      assert.deepEqual(await back, ["on root"]);
      // Leaving /custom keeps / (and the Engine.IO connection) up.
      await close(custom);
      assert.equal(await root.timeout(STEP_MS).emitWithAck("message-with-ack", "root lives"), "root lives");
      assert.equal(customGot, 0);
      // Leaving the last namespace closes the connection.
      await close(root);
      await until(() => m.engine == null || m.engine.readyState === "closed", "the Engine.IO connection to close");
      opened.delete(m);
    });

    test("CONNECT to an unknown namespace gets connect_error 'Invalid namespace'", { timeout: TEST_MS }, async () => {
      const m = manager(opts);
      const root = m.socket("/");
      const bad = m.socket("/does-not-exist", { auth: { x: 1 } });
      opened.add(root);
      opened.add(bad);
      const rootAuth = waitEvent(root, "auth");
      root.connect();
      await connected(root);
      await rootAuth;
      const err = connectError(bad);
      bad.connect();
      const e = await err;
      assert.equal(e.message, "Invalid namespace");
      assert.equal(bad.connected, false);
      // The refusal does not hurt the other namespace on the same connection.
      assert.equal(await root.timeout(STEP_MS).emitWithAck("message-with-ack", "ok"), "ok");
      bad.disconnect();
      opened.delete(bad);
      await close(root);
      opened.delete(m);
      // Alone on its own connection too.
      const lone = open("/nope", opts);
      const e2 = await connectError(lone);
      assert.equal(e2.message, "Invalid namespace");
      lone.disconnect();
      opened.delete(lone);
    });

    test("disconnect from the client side, then connect again", { timeout: TEST_MS }, async () => {
      const { socket } = await openWithAuth("/", { ...opts, auth: { round: 1 } });
      const firstId = socket.id;
      const engine = socket.io.engine;
      await close(socket);
      await until(() => engine.readyState === "closed", "the Engine.IO connection to close");
      // The same socket connects again: a new session.
      opened.add(socket);
      socket.auth = { round: 2 };
      const auth = waitEvent(socket, "auth");
      socket.connect();
      await connected(socket);
      assert.deepEqual((await auth)[0], { round: 2 });
      assert.notEqual(socket.id, firstId);
      assert.equal(await socket.timeout(STEP_MS).emitWithAck("message-with-ack", 2), 2);
      await close(socket);
    });
  });
}

suite('["polling","websocket"] (default, with upgrade)', ["polling", "websocket"], "websocket");
suite('["polling"]', ["polling"], "polling");
suite('["websocket"]', ["websocket"], "websocket");
