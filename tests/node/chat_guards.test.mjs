// What the chat must refuse, through the official `socket.io-client`, against chat nodes
// started by tests/tests/chat_guards.rs (one node on the embedded store, or two nodes on
// one Redis): connection-state recovery only for the same user and only into rooms it is
// still a member of; `history` at the very first cursor; the rate limits of `join`/`leave`
// and `typing`. By hand:
//
//   CHAT_URLS=http://127.0.0.1:9001,http://127.0.0.1:9002 node --test tests/node/chat_guards.test.mjs
//
// The nodes run with `--join-rate-limit 6/60s --typing-rate-limit 4/60s` (the values below
// must match) and connection-state recovery on (the default).

import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { waitEvent } from "./wait.mjs";
import { Client, STEP_MS, opened, uniq } from "./chat-client.mjs";

const URLS = (process.env.CHAT_URLS ?? "").split(",").filter(Boolean);
if (URLS.length === 0) throw new Error("set CHAT_URLS (comma-separated)");
const LAST = URLS.length - 1;

/** The nodes' settings (see the header). */
const JOIN_BURST = 6;
const TYPING_BURST = 4;

/** The shared client, plus what recovery tests need. */
class GuardClient extends Client {
  /** The texts of the `message`s received in `room` (from the `from`-th event on). */
  texts(room, from = 0) {
    return this.log
      .slice(from)
      .filter((e) => e.event === "message" && e.data.room === room)
      .map((e) => e.data.text);
  }

  /** Cuts the TCP connection under the client (no close frame), as a network drop would,
   * and waits until the client noticed. It does not reconnect by itself. */
  async drop() {
    const gone = waitEvent(this.socket, "disconnect", STEP_MS);
    this.socket.io.engine.transport.ws._socket.destroy();
    await gone;
  }

  /** Reconnects with the same socket (so with its pid and last offset, asking to
   * recover), with `auth`; the `welcome` of the new connection. */
  async reconnect(auth = this.socket.auth) {
    this.socket.auth = auth;
    const from = this.mark();
    const connected = waitEvent(this.socket, "connect", STEP_MS);
    this.socket.connect();
    await connected;
    return this.waitFor("welcome", () => true, from);
  }
}

/** A client on node `i` over WebSocket only (so that its connection can be cut), past its
 * `welcome`; it never reconnects by itself. */
async function connect(i, name, extra = {}) {
  const socket = io(URLS[i % URLS.length], {
    forceNew: true,
    reconnection: false,
    timeout: STEP_MS,
    transports: ["websocket"],
    auth: { name, ...extra },
  });
  opened.add(socket);
  const client = new GuardClient(socket);
  client.welcome = await new Promise((resolve, reject) => {
    socket.once("connect_error", (err) => reject(new Error(`connect_error: ${err.message}`)));
    client.waitFor("welcome").then(resolve, reject);
  });
  return client;
}

/** Sends a lobby message from `sender` and waits until each of `clients` has it: everything
 * broadcast before it has reached them too (one node's broadcasts arrive in order). */
async function barrier(sender, clients) {
  const text = `barrier ${uniq()}`;
  await sender.ok("send", { room: "lobby", text });
  await Promise.all(clients.map((c) => c.waitFor("message", (m) => m.text === text)));
}

/** Alice and a private room she created; its invite. */
async function privateRoom(alice, prefix) {
  const room = `${prefix}-${uniq()}`;
  const { invite } = await alice.ok("create", { room, private: true });
  return { room, invite };
}

test("a recovered tab is not back in a room its user left from another tab meanwhile", async () => {
  const alice = await connect(0, "alice");
  const left = await privateRoom(alice, "left");
  const kept = await privateRoom(alice, "kept");
  const first = await connect(LAST, "bob");
  const { token, user } = first.welcome;
  first.close();
  const tab1 = await connect(LAST, "bob", { token });
  const tab2 = await connect(0, "bob", { token });
  await tab1.ok("join", left);
  await tab1.ok("join", kept);
  // Tab 1 has seen an offset (a broadcast): it asks to recover from there.
  await barrier(alice, [tab1]);

  await tab1.drop();
  await tab2.ok("leave", { room: left.room });
  await alice.ok("send", { room: left.room, text: "missed in left" });
  await alice.ok("send", { room: kept.room, text: "missed in kept" });

  const welcome = await tab1.reconnect();
  assert.equal(tab1.socket.recovered, true, "the same user recovers");
  assert.equal(welcome.user, user);
  // The replay holds what was missed in the rooms still joined, nothing of the one left.
  await tab1.waitFor("message", (m) => m.text === "missed in kept");
  const from = tab1.mark();
  await alice.ok("send", { room: left.room, text: "live in left" });
  await alice.ok("send", { room: kept.room, text: "live in kept" });
  await barrier(alice, [tab1]);
  assert.deepEqual(tab1.texts(left.room), [], "nothing of the room left");
  assert.deepEqual(tab1.texts(kept.room, from), ["live in kept"]);
});

test("a reconnect without the token is a new user, and gets nothing of the old socket's rooms", async () => {
  const alice = await connect(0, "alice");
  const { room, invite } = await privateRoom(alice, "notoken");
  const bob = await connect(LAST, "bob");
  await bob.ok("join", { room, invite });
  await barrier(alice, [bob]);

  await bob.drop();
  await alice.ok("send", { room, text: "missed" });
  // Same auth as the first time: no token, so a new user.
  const welcome = await bob.reconnect({ name: "bob" });
  assert.notEqual(welcome.user, bob.welcome.user, "a new user");
  assert.equal(bob.socket.recovered, false, "not recovered");
  await alice.ok("send", { room, text: "live" });
  await barrier(alice, [bob]);
  assert.deepEqual(bob.texts(room), [], "nothing of the private room");
  assert.deepEqual(await bob.call("history", { room }), { ok: false, error: "not a member" });
});

test("a recovery pid is no credential: someone else presenting it gets a fresh socket", async () => {
  const alice = await connect(0, "alice");
  const { room, invite } = await privateRoom(alice, "pid");
  const mallory = await connect(0, "mallory");
  // Without a token, then with one of another user: refused both ways.
  for (const auth of [{}, { token: mallory.welcome.token }]) {
    const bob = await connect(LAST, "bob");
    await bob.ok("join", { room, invite });
    await barrier(alice, [bob]);
    const { _pid: pid, _lastOffset: offset, id: sid } = bob.socket;
    assert.ok(pid && offset, "recovery is on: the client has a pid and an offset");
    await bob.drop();
    await alice.ok("send", { room, text: "missed" });

    const thief = await connect(0, "thief", { ...auth, pid, offset });
    assert.equal(thief.socket.recovered, false, `not recovered with ${JSON.stringify(auth)}`);
    assert.notEqual(thief.socket.id, sid, "not the victim's socket");
    assert.notEqual(thief.welcome.user, bob.welcome.user);
    await alice.ok("send", { room, text: "live" });
    await barrier(alice, [thief]);
    assert.deepEqual(thief.texts(room), [], `nothing of the private room with ${JSON.stringify(auth)}`);
    thief.close();

    // The refused attempt did not use up the state: its owner still recovers it all.
    const welcome = await bob.reconnect({ name: "bob", token: bob.welcome.token });
    assert.equal(bob.socket.recovered, true, "the owner recovers after a refused attempt");
    assert.equal(welcome.user, bob.welcome.user);
    await bob.waitFor("message", (m) => m.room === room && m.text === "live");
    assert.deepEqual(bob.texts(room), ["missed", "live"]);
    bob.close();
  }
});

test("history before the first possible id is an empty page", async () => {
  const alice = await connect(0, "alice");
  const room = `hist-${uniq()}`;
  await alice.ok("create", { room, private: false });
  const sent = [];
  for (const text of ["one", "two"]) sent.push((await alice.ok("send", { room, text })).id);
  for (const before of ["0-0", "0-1", "1-0"]) {
    assert.deepEqual(await alice.call("history", { room, before }), { ok: true, messages: [] }, before);
  }
  // The largest cursor there is: everything.
  const max = "18446744073709551615-18446744073709551615";
  const all = await alice.ok("history", { room, before: max });
  assert.deepEqual(all.messages.map((m) => m.id), sent);
  // Just after the first message: the first message.
  const [ms, seq] = sent[0].split("-");
  const next = `${ms}-${BigInt(seq) + 1n}`;
  const first = await alice.ok("history", { room, before: next });
  assert.deepEqual(first.messages.map((m) => m.text), ["one"]);
});

test("join and leave are rate limited per user; the room hears only the admitted ones", async () => {
  const alice = await connect(0, "alice");
  const room = `churn-${uniq()}`;
  await alice.ok("create", { room, private: false });
  const from = alice.mark();
  const bob = await connect(LAST, `bob-${uniq()}`);
  const answers = [];
  for (let i = 0; i < JOIN_BURST + 6; i++) {
    answers.push(await bob.call(i % 2 === 0 ? "join" : "leave", { room }));
  }
  const admitted = answers.filter((a) => a.ok).length;
  assert.equal(admitted, JOIN_BURST, JSON.stringify(answers));
  for (const a of answers.slice(JOIN_BURST)) assert.deepEqual(a, { ok: false, error: "rate limited" });
  // The notices of the admitted ones only (the first join announces, every leave too).
  const marker = `after churn ${uniq()}`;
  await alice.ok("send", { room, text: marker });
  await alice.waitFor("message", (m) => m.text === marker, from);
  const notices = alice.log.slice(from).filter((e) => e.event === "system" && e.data.room === room);
  assert.equal(notices.length, JOIN_BURST, JSON.stringify(notices));
});

test("typing beyond its rate limit is dropped, answered ok", async () => {
  const alice = await connect(0, "alice");
  const room = `typing-${uniq()}`;
  await alice.ok("create", { room, private: false });
  const carol = await connect(LAST, `carol-${uniq()}`);
  await carol.ok("join", { room });
  const from = alice.mark();
  for (let i = 0; i < TYPING_BURST + 10; i++) {
    await carol.ok("typing", { room, typing: i % 2 === 0 });
  }
  const marker = `after typing ${uniq()}`;
  await carol.ok("send", { room, text: marker });
  await alice.waitFor("message", (m) => m.text === marker, from);
  const typing = alice.log.slice(from).filter((e) => e.event === "typing" && e.data.room === room);
  assert.equal(typing.length, TYPING_BURST, JSON.stringify(typing));
});

test("a room named like a socket's id is not that socket's own room", async () => {
  const victim = await connect(0, "victim");
  const mallory = await connect(0, "mallory");
  // Socket.IO keeps a room per socket, named by its id; a chat room of the same name must
  // not be it (the victim would get the room's messages, mallory what is the victim's).
  const room = victim.socket.id;
  await mallory.ok("create", { room });
  await mallory.ok("send", { room, text: "to the id room" });
  await barrier(mallory, [victim]);
  assert.deepEqual(victim.texts(room), [], "the victim got a room it never joined");
  assert.deepEqual(
    victim.log.filter((e) => e.event === "presence" && e.data.room === room),
    [],
    "the victim got the presence of a room it never joined",
  );
});

test("an event the chat does not have is answered when an answer is awaited", async () => {
  const alice = await connect(0, "alice");
  assert.deepEqual(await alice.call("nope", {}), { ok: false, error: "unknown event" });
  // Without an ack it is dropped, and the connection goes on.
  alice.socket.emit("nope", {});
  await alice.ok("rooms", {});
});
