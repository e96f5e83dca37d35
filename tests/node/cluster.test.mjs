// Sessions across chat nodes with the official `socket.io-client` (pinned in
// package-lock.json): three chat nodes on one real redis-server behind the proxy with
// round_robin and no stickiness. Run by tests/tests/socketio_cluster.rs; by hand:
//
//   SIO_URL=http://127.0.0.1:8080 NODE_PIDS=n1=123,n2=456,n3=789 \
//     node --test tests/node/cluster.test.mjs
//
// The server is the chat application (docs/chat-api.md): auth {name}, `welcome {node}`,
// every socket in room `lobby`, `send {room,text}` broadcasts `message` to the room.
// NODE_PIDS lets the node-kill test kill the node serving a client (SIGKILL); NODE_URLS
// (n1=http://127.0.0.1:port,…) lets a test reach a chosen node directly.

import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { waitEvent as waitFor } from "./wait.mjs";
import { io } from "socket.io-client";

const URL = process.env.SIO_URL;
if (!URL) throw new Error("set SIO_URL to the proxy's base URL");
/** `n1=a,n2=b` as an object. */
function pairs(list) {
  return Object.fromEntries(
    (list ?? "").split(",").filter(Boolean).map((kv) => {
      const at = kv.indexOf("=");
      return [kv.slice(0, at), kv.slice(at + 1)];
    }),
  );
}
const PIDS = pairs(process.env.NODE_PIDS);
const NODE_URLS = pairs(process.env.NODE_URLS);

/** Bound for one step (a connect, one round trip, an ack). */
const STEP_MS = 8000;
const TEST_MS = 60000;

const opened = new Set();
after(() => {
  for (const s of opened) s.disconnect();
});

let names = 0;

/** A client with its own connection (to `url`, the proxy by default); `welcome` is
 * remembered on `socket.welcome`. */
function client(opts = {}, url = URL) {
  const socket = io(url, {
    forceNew: true,
    reconnection: false,
    timeout: STEP_MS,
    auth: { name: `user${++names}` },
    ...opts,
  });
  socket.welcomes = [];
  socket.on("welcome", (w) => socket.welcomes.push(w));
  socket.messages = [];
  socket.on("message", (m) => socket.messages.push(m));
  opened.add(socket);
  return socket;
}

function waitEvent(emitter, event, ms = STEP_MS) {
  return waitFor(emitter, event, ms);
}

/** Resolves once `pred()` holds, checking on every `event`; rejects after `ms`. */
function until(emitter, event, pred, what, ms = STEP_MS) {
  if (pred()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const on = () => {
      if (pred()) {
        clearTimeout(timer);
        emitter.off(event, on);
        resolve();
      }
    };
    const timer = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    emitter.on(event, on);
  });
}

/** The welcome of a fresh connection (which names the node serving it). */
async function connectedClient(opts, url) {
  const socket = client(opts, url);
  const [welcome] = await waitEvent(socket, "welcome");
  return { socket, node: welcome.node };
}

async function send(socket, text, room = "lobby") {
  const reply = await socket.timeout(STEP_MS).emitWithAck("send", { room, text });
  assert.equal(reply.ok, true, `send: ${JSON.stringify(reply)}`);
  return reply.id;
}

/**
 * Many clients exchanging many events through round_robin: every polling request of a
 * session is as likely to land on another node as on its owner. Any `Session ID unknown`
 * (a 400 on a poll) would surface as a transport error and a disconnect.
 */
async function noSessionErrors(transports) {
  const clients = await Promise.all(
    Array.from({ length: 6 }, () => connectedClient(transports ? { transports } : {})),
  );
  const disconnects = [];
  for (const { socket } of clients) {
    socket.on("disconnect", (reason) => disconnects.push(reason));
    socket.io.engine.on("error", (err) => disconnects.push(`engine error: ${err}`));
  }
  const tag = `t${Date.now()}-${Math.random()}`;
  const perClient = 15;
  for (let i = 0; i < perClient; i++) {
    await Promise.all(clients.map(({ socket }, c) => send(socket, `${tag} ${c} ${i}`)));
  }
  const expected = clients.length * perClient;
  for (const { socket } of clients) {
    const mine = () => socket.messages.filter((m) => m.text.startsWith(tag)).length;
    await until(socket, "message", () => mine() >= expected, `${expected} messages`);
    assert.equal(mine(), expected, "every message exactly once");
  }
  assert.deepEqual(disconnects, [], "no transport errors, no disconnects");
  if (transports?.length === 1 && transports[0] === "polling") {
    for (const { socket } of clients) {
      assert.equal(socket.io.engine.transport.name, "polling");
    }
  }
  return new Set(clients.map((c) => c.node));
}

describe("sessions without stickiness, through round_robin over three nodes", { timeout: TEST_MS }, () => {
  test('transports ["polling"]: no "Session ID unknown"', async () => {
    const nodes = await noSessionErrors(["polling"]);
    assert.ok(nodes.size >= 2, `handshakes spread over nodes: ${[...nodes]}`);
  });

  test("default transports (polling, then the upgrade): no errors", async () => {
    await noSessionErrors(undefined);
  });

  test('transports ["websocket"]: no errors', async () => {
    await noSessionErrors(["websocket"]);
  });

  test("a room broadcast reaches a client on another node", async () => {
    const a = await connectedClient({ transports: ["polling"] });
    // Straight to another node: through round_robin, where a handshake lands depends on
    // how many requests came in between, which can keep it on a's node.
    const other = Object.keys(NODE_URLS).find((id) => id !== a.node);
    assert.ok(other, `NODE_URLS names a node besides ${a.node}`);
    const b = await connectedClient({ transports: ["polling"] }, NODE_URLS[other]);
    assert.equal(b.node, other, "two clients on two nodes");
    const text = `cross ${Math.random()}`;
    await send(a.socket, text);
    await until(b.socket, "message", () => b.socket.messages.some((m) => m.text === text), text);
  });
});

/** A client that reconnects quickly and tracks what it receives, and whether it recovered.
 * It reconnects with the token of its last `welcome`, as a real client does: only the same
 * user recovers its socket. */
async function recoveringClient(opts = {}) {
  const connected = await connectedClient({
    reconnection: true,
    reconnectionDelay: 300,
    reconnectionDelayMax: 300,
    randomizationFactor: 0,
    ...opts,
  });
  const { socket } = connected;
  const remember = (w) => {
    socket.auth = { ...socket.auth, token: w.token };
  };
  remember(socket.welcomes[0]);
  socket.on("welcome", remember);
  return connected;
}

/** `tag`-prefixed texts of `socket`'s messages, in arrival order. */
function texts(socket, tag) {
  return socket.messages.filter((m) => m.text.startsWith(tag)).map((m) => m.text);
}

describe("connection state recovery", { timeout: TEST_MS }, () => {
  test("after the client's connection is cut, it recovers every missed message", async () => {
    const a = await recoveringClient({ transports: ["websocket"] });
    const b = await connectedClient({ transports: ["websocket"] });
    const tag = `cut${Math.random()}`;
    await send(b.socket, `${tag} before`);
    await until(a.socket, "message", () => texts(a.socket, tag).length === 1, "the first message");
    assert.ok(a.socket._lastOffset, "broadcasts carry an offset");

    // Cut the TCP connection under the client: no close frame, no goodbye.
    const reconnected = waitEvent(a.socket, "connect", STEP_MS * 2);
    a.socket.io.engine.transport.ws._socket.destroy();
    for (let i = 1; i <= 3; i++) await send(b.socket, `${tag} missed ${i}`);
    await reconnected;
    assert.equal(a.socket.recovered, true, "socket.recovered");
    await until(a.socket, "message", () => texts(a.socket, tag).length >= 4, "4 messages");
    assert.deepEqual(texts(a.socket, tag), [
      `${tag} before`,
      `${tag} missed 1`,
      `${tag} missed 2`,
      `${tag} missed 3`,
    ]);
  });

  test("after its node is killed, the client recovers on another node", async () => {
    const a = await recoveringClient();
    // The sender on WebSocket only, straight to another node: its session lives there.
    // (After an upgrade that landed elsewhere, a session is bridged through a second node,
    // and losing either node drops it.)
    const other = Object.keys(NODE_URLS).find((id) => id !== a.node);
    assert.ok(other, `NODE_URLS names a node besides ${a.node}`);
    const b = await connectedClient({ transports: ["websocket"] }, NODE_URLS[other]);
    assert.equal(b.node, other, "the sender is on another node");
    const pid = Number(PIDS[a.node]);
    assert.ok(pid > 0, `NODE_PIDS has ${a.node}`);
    const tag = `kill${Math.random()}`;
    await send(b.socket, `${tag} before`);
    await until(a.socket, "message", () => texts(a.socket, tag).length === 1, "the first message");

    const reconnected = waitEvent(a.socket, "connect", STEP_MS * 3);
    const welcomed = a.socket.welcomes.length;
    process.kill(pid, "SIGKILL");
    for (let i = 1; i <= 3; i++) await send(b.socket, `${tag} missed ${i}`);
    await reconnected;
    assert.equal(a.socket.recovered, true, "socket.recovered");
    // The new node's welcome follows the connect.
    await until(a.socket, "welcome", () => a.socket.welcomes.length > welcomed, "a new welcome");
    const now = a.socket.welcomes.at(-1).node;
    assert.notEqual(now, a.node, "served by another node now");
    await until(a.socket, "message", () => texts(a.socket, tag).length >= 4, "4 messages");
    assert.deepEqual(texts(a.socket, tag), [
      `${tag} before`,
      `${tag} missed 1`,
      `${tag} missed 2`,
      `${tag} missed 3`,
    ]);
  });
});
