// Unit tests of the page's Socket.IO client (sio.js) without a network: the packet codec,
// the recovery bookkeeping (pid, offsets, the CONNECT payload), acknowledgements and the
// reconnection delays. Run: `node --test chat-node/web/sio.test.mjs` (tests/tests/browser.rs
// runs it). The browser tests cover the transports against real servers.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

// sio.js is a browser module next to this file; loaded from its source so that Node needs no
// package.json or flags to treat it as one.
const source = readFileSync(new URL("./sio.js", import.meta.url), "utf8");
const { SioClient, decodePacket, encodePacket } = await import(
  `data:text/javascript;base64,${Buffer.from(source).toString("base64")}`
);

/** A client wired to a fake Engine.IO session that records what it sends. */
function client(options = {}) {
  const sio = new SioClient({ origin: "http://chat.test", auth: { name: "ann" }, ...options });
  const sent = [];
  sio.engine = { send: (text) => sent.push(text) > 0, close() {} };
  sio.wantConnected = true;
  return { sio, sent };
}

/** Every call of `event` on `sio`, as argument lists. */
function record(sio, event) {
  const calls = [];
  sio.on(event, (...args) => calls.push(args));
  return calls;
}

test("packets decode with namespaces, ack ids and payloads; garbage is refused", () => {
  assert.deepEqual(decodePacket('0{"sid":"a","pid":"p"}'), {
    type: 0,
    nsp: "/",
    id: null,
    data: { sid: "a", pid: "p" },
  });
  assert.deepEqual(decodePacket('212["ev",1]'), { type: 2, nsp: "/", id: 12, data: ["ev", 1] });
  assert.deepEqual(decodePacket("3/admin,5[1]"), { type: 3, nsp: "/admin", id: 5, data: [1] });
  assert.deepEqual(decodePacket("1"), { type: 1, nsp: "/", id: null, data: undefined });
  assert.deepEqual(decodePacket('4{"message":"name is empty"}').data, { message: "name is empty" });
  for (const bad of ["", "9[]", "x", '2["ev"', "51-[]", "6"]) {
    assert.equal(decodePacket(bad), null, JSON.stringify(bad));
  }
});

test("packets encode as the server expects", () => {
  assert.equal(encodePacket(2, 7, ["send", { room: "lobby", text: "hi" }]), '27["send",{"room":"lobby","text":"hi"}]');
  assert.equal(encodePacket(0, null, { name: "ann" }), '0{"name":"ann"}');
  assert.equal(encodePacket(1), "1");
});

test("broadcast offsets are stripped and remembered, and sent back on reconnect", () => {
  const { sio } = client();
  const messages = record(sio, "message");
  sio.onPacket('0{"sid":"s1","pid":"p1"}');
  assert.equal(sio.connected, true);
  assert.equal(sio.recovered, false, "the first connection recovers nothing");
  sio.onPacket('2["message",{"text":"hello"},"off-1"]');
  assert.deepEqual(messages, [[{ text: "hello" }]]);
  assert.equal(sio.offset, "off-1");
  // Not an offset: an event the server wants acknowledged keeps all its arguments.
  const asks = record(sio, "question");
  sio.onPacket('23["question","a string"]');
  assert.equal(asks[0][0], "a string");
  assert.equal(typeof asks[0][1], "function");
  assert.equal(sio.offset, "off-1");

  // The connection drops; the next CONNECT asks for what came after off-1.
  sio.lost("transport close");
  assert.deepEqual(sio.connectPayload(), { name: "ann", pid: "p1", offset: "off-1" });
  // A recovering server replays before its CONNECT reply: those events count too.
  sio.onPacket('2["message",{"text":"missed"},"off-2"]');
  sio.onPacket('0{"sid":"s1","pid":"p1"}');
  assert.equal(sio.recovered, true, "same pid: recovered");
  assert.deepEqual(messages.at(-1), [{ text: "missed" }]);
  assert.equal(sio.offset, "off-2");

  sio.lost("transport close");
  sio.onPacket('0{"sid":"s2","pid":"p2"}');
  assert.equal(sio.recovered, false, "new pid: a new session");
  assert.deepEqual(sio.connectPayload(), { name: "ann", pid: "p2" }, "the old offset is dropped");
});

test("without recovery (no pid) a trailing string is an ordinary argument", () => {
  const { sio } = client();
  const notes = record(sio, "note");
  sio.onPacket('0{"sid":"s1"}');
  sio.onPacket('2["note","just text"]');
  assert.deepEqual(notes, [["just text"]]);
  assert.deepEqual(sio.connectPayload(), { name: "ann" });
});

test("the auth is read at every connect", () => {
  let name = "ann";
  const { sio } = client({ auth: () => ({ name, token: "t" }) });
  assert.deepEqual(sio.connectPayload(), { name: "ann", token: "t" });
  name = "bea";
  assert.deepEqual(sio.connectPayload(), { name: "bea", token: "t" });
});

test("acknowledgements resolve requests; silence and disconnection reject them", async () => {
  const { sio, sent } = client();
  await assert.rejects(sio.request("rooms", {}), /not connected/);
  sio.onPacket('0{"sid":"s1"}');
  const answered = sio.request("rooms", {});
  assert.equal(sent.at(-1), '20["rooms",{}]');
  sio.onPacket('30[{"ok":true,"rooms":[]}]');
  assert.deepEqual(await answered, { ok: true, rooms: [] });

  await assert.rejects(sio.request("rooms", {}, 20), /no answer to rooms within 20 ms/);
  const pending = sio.request("send", { room: "lobby", text: "x" });
  const disconnects = record(sio, "disconnect");
  sio.lost("transport closed");
  await assert.rejects(pending, /disconnected/);
  assert.deepEqual(disconnects, [["transport closed"]]);
});

test("a server's request is acknowledged once", () => {
  const { sio, sent } = client();
  sio.onPacket('0{"sid":"s1"}');
  sio.on("ping-me", (n, ack) => {
    ack({ ok: true, n });
    ack("twice");
  });
  sio.onPacket('29["ping-me",4]');
  assert.deepEqual(sent, ['39[{"ok":true,"n":4}]']);
});

test("a refusal stops reconnecting and says why; a server DISCONNECT too", () => {
  const { sio } = client();
  const errors = record(sio, "connect_error");
  sio.onPacket('4{"message":"name is empty","data":{"reason":"name is empty"}}');
  assert.equal(errors[0][0].message, "name is empty");
  assert.equal(sio.state, "error");
  assert.equal(sio.wantConnected, false);
  assert.equal(sio.reconnectTimer, null);

  const other = client().sio;
  other.onPacket('0{"sid":"s1"}');
  other.onPacket("1");
  assert.equal(other.state, "disconnected");
  assert.equal(other.wantConnected, false);
});

test("reconnection delays grow exponentially with jitter, within bounds", () => {
  const exact = client({ randomization: 0, reconnectDelay: 500, reconnectDelayMax: 8000 }).sio;
  const delays = [];
  for (let attempt = 0; attempt < 7; attempt += 1) {
    exact.attempts = attempt;
    delays.push(exact.reconnectDelay());
  }
  assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 8000, 8000]);

  const jittered = client({ randomization: 0.5, reconnectDelay: 500, reconnectDelayMax: 8000 }).sio;
  const seen = new Set();
  for (let i = 0; i < 200; i += 1) {
    jittered.attempts = 2; // 2000 ms ± 50 %
    const delay = jittered.reconnectDelay();
    assert.ok(delay >= 1000 && delay <= 3000, `${delay}`);
    seen.add(delay);
  }
  assert.ok(seen.size > 10, "jitter spreads the delays");
  jittered.attempts = 1000;
  assert.ok(jittered.reconnectDelay() <= 8000);
});
