// The chat API (docs/chat-api.md) through the official `socket.io-client` (pinned in
// package-lock.json), against chat nodes started by tests/tests/chat_semantics.rs: three
// nodes on one Redis, or one node on the embedded store. By hand:
//
//   CHAT_URLS=http://127.0.0.1:9001,http://127.0.0.1:9002,http://127.0.0.1:9003 \
//   CHAT_NODE_IDS=n1,n2,n3 node --test tests/node/chat.test.mjs
//
// The nodes run with `--history-on-join 5 --rate-limit 20/60s --presence-ttl 3s` (the
// values below must match). CHAT_KILL_PID (optional): the pid of the last node, which the
// last test kills to check that its presence expires.

import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { Client, STEP_MS, opened, uniq } from "./chat-client.mjs";

const URLS = (process.env.CHAT_URLS ?? "").split(",").filter(Boolean);
const NODE_IDS = (process.env.CHAT_NODE_IDS ?? "").split(",").filter(Boolean);
if (URLS.length === 0 || URLS.length !== NODE_IDS.length) {
  throw new Error("set CHAT_URLS and CHAT_NODE_IDS (comma-separated, same length)");
}
const KILL_PID = Number(process.env.CHAT_KILL_PID ?? 0);

/** The nodes' settings (see the header). */
const HISTORY_ON_JOIN = 5;
const RATE_BURST = 20;
const PRESENCE_TTL_MS = 3000;
const MAX_TEXT = 2000;

/** Opens a socket to node `i` (modulo the node count) with `auth`. */
function open(i, auth, opts = {}) {
  const socket = io(URLS[i % URLS.length], {
    forceNew: true,
    reconnection: false,
    timeout: STEP_MS,
    auth,
    ...opts,
  });
  opened.add(socket);
  return socket;
}

/** A client on node `i`, past its `welcome` (which it returns too). */
async function connect(i, name, extra = {}, opts = {}) {
  const client = new Client(open(i, { name, ...extra }, opts));
  const welcome = await new Promise((resolve, reject) => {
    client.socket.once("connect_error", (err) => reject(new Error(`connect_error: ${err.message}`)));
    client.waitFor("welcome").then(resolve, reject);
  });
  client.welcome = welcome;
  return client;
}

/** The `connect_error` message for `auth` on node `i`. */
function refusal(i, auth) {
  const socket = open(i, auth);
  return new Promise((resolve, reject) => {
    socket.once("connect", () => reject(new Error("connected")));
    socket.once("connect_error", (err) => resolve(err));
    setTimeout(() => reject(new Error("no connect_error")), STEP_MS);
  });
}

/** The `rooms` entry for `room`, if listed. */
async function listed(client, room) {
  const { rooms } = await client.ok("rooms", {});
  return rooms.find((r) => r.room === room);
}

/** Compares two message ids numerically. */
function cmpId(a, b) {
  const [am, as] = a.split("-").map(BigInt);
  const [bm, bs] = b.split("-").map(BigInt);
  return am === bm ? (as < bs ? -1 : as > bs ? 1 : 0) : am < bm ? -1 : 1;
}

test("a connection needs a valid name; the reason is the connect_error message", async () => {
  const cases = [
    [undefined, "name required"],
    [{}, "name required"],
    [{ name: 42 }, "name required"],
    [{ name: "   " }, "name is empty"],
    [{ name: "x".repeat(33) }, "name is longer than 32 characters"],
    [{ name: "al\u200bice" }, "name contains invisible characters"],
    [{ name: "bad\nname" }, "name contains invisible characters"],
    [{ name: "alice\u3164" }, "name contains invisible characters"],
    [{ name: "\u0430lice" }, "name mixes look-alike characters"],
    [{ name: "\uff4c\uff4f\uff42\uff42\uff59" }, "name mixes look-alike characters"],
  ];
  for (const [auth, reason] of cases) {
    const err = await refusal(0, auth);
    assert.equal(err.message, reason, JSON.stringify(auth));
    assert.deepEqual(err.data, { reason });
  }
  // 32 characters (not bytes) after trimming are fine.
  const long = await connect(0, `  ${"é".repeat(32)}  `);
  assert.equal(long.welcome.name, "é".repeat(32));
  // Counted as stored, after runs of spaces become one.
  const spaced = await connect(0, `s${" ".repeat(40)}${uniq()}`);
  assert.match(spaced.welcome.name, /^s [^ ]+$/);
  // A lone UTF-16 surrogate is a replacement character, not a dropped connection.
  const cut = await connect(0, `cut-${uniq()}\ud83d`);
  assert.ok(cut.welcome.name.endsWith("\ufffd"));
});

test("welcome names the node, the user and a secret token that restores the user anywhere", async () => {
  const a = await connect(0, ` ann-${uniq()} `);
  const { node, name, user, token } = a.welcome;
  assert.equal(node, NODE_IDS[0]);
  assert.equal(name, name.trim());
  assert.match(user, /^u[A-Za-z0-9_-]{16}$/);
  assert.match(token, /^[A-Za-z0-9_-]{43}$/);
  a.close();

  const last = URLS.length - 1;
  const again = await connect(last, "renamed", { token });
  assert.deepEqual(again.welcome, { node: NODE_IDS[last], name: "renamed", user, token, maxText: MAX_TEXT });

  // An unknown or malformed token is ignored: a new user, never an error.
  for (const bogus of ["x".repeat(43), "not a token!", user, ""]) {
    const other = await connect(1, "other", { token: bogus });
    assert.notEqual(other.welcome.user, user);
    assert.notEqual(other.welcome.token, token);
    other.close();
  }
});

test("lobby messages reach every node, the sender included, with ordered ids", async () => {
  const tag = uniq();
  const clients = await Promise.all(URLS.map((_, i) => connect(i, `l${i}-${tag}`)));
  const [sender] = clients;
  const first = await sender.ok("send", { room: "lobby", text: `hello ${tag}` });
  const second = await sender.ok("send", { room: "lobby", text: `again ${tag}` });
  assert.match(first.id, /^\d+-\d+$/);
  assert.equal(cmpId(first.id, second.id), -1);
  for (const c of clients) {
    const m = await c.waitFor("message", (m) => m.id === first.id);
    assert.equal(m.room, "lobby");
    assert.equal(m.from, sender.welcome.name);
    assert.equal(m.user, sender.welcome.user);
    assert.equal(m.text, `hello ${tag}`);
    assert.equal(typeof m.ts, "number");
    assert.ok(Math.abs(m.ts - Date.now()) < 60_000);
    await c.waitFor("message", (m) => m.id === second.id);
  }
  // Text is kept as sent: rendering it safely is the client's job.
  const html = `<img src=x onerror=alert(1)> ${tag}`;
  const { id } = await sender.ok("send", { room: "lobby", text: html });
  assert.equal((await clients.at(-1).waitFor("message", (m) => m.id === id)).text, html);
});

test("create, rooms with counts across nodes, join, system notices, presence, leave", async () => {
  const tag = uniq();
  const room = `pub ${tag}`;
  const a = await connect(0, `a-${tag}`);
  const b = await connect(1, `b-${tag}`);
  const c = await connect(2, `c-${tag}`);

  assert.deepEqual(await a.ok("create", { room: `  ${room} ` }), { ok: true, room });
  await a.waitFor("presence", (p) => p.room === room && p.members.join() === a.welcome.name);
  await a.refused("create", { room }, "room exists");
  await a.refused("create", { room: "lobby" }, "room exists");
  // One room per look, across nodes and scripts: Cyrillic "рор" beside Latin "pop" (the
  // same digits), "1obby" beside "lobby".
  const digits = String(parseInt(tag, 16));
  await a.ok("create", { room: `pop ${digits}`, private: true });
  await b.refused("create", { room: `\u0440\u043e\u0440 ${digits}` }, "room looks like another");
  await b.refused("create", { room: "1obby" }, "room looks like another");
  for (const bad of ["", "a/b", "x".repeat(65), "<b>", 7, "l\u043ebby", "lobby\u3164", "a  b"]) {
    await a.refused("create", { room: bad }, bad === 7 ? "invalid request" : "invalid room name");
  }
  await a.refused("create", "not an object", "invalid request");

  assert.deepEqual(await listed(c, room), { room, private: false, members: 1 });
  const lobby = await listed(c, "lobby");
  assert.equal(lobby.private, false);
  assert.ok(lobby.members >= 3, JSON.stringify(lobby));
  assert.equal((await c.ok("rooms", {})).rooms[0].room, "lobby", "lobby first");

  const joined = await b.ok("join", { room });
  assert.equal(joined.room, room);
  assert.deepEqual(joined.history, []);
  assert.deepEqual(joined.members, [a.welcome.name, b.welcome.name].sort());
  const notice = await a.waitFor("system", (s) => s.room === room && s.text === `${b.welcome.name} joined`);
  assert.equal(typeof notice.ts, "number");
  await a.waitFor("presence", (p) => p.room === room && p.members.length === 2);
  assert.equal((await listed(c, room)).members, 2);

  // Messages stay in their room.
  const { id } = await a.ok("send", { room, text: "in the room" });
  await b.waitFor("message", (m) => m.id === id && m.room === room);
  await c.refused("send", { room, text: "outsider" }, "not a member");
  await c.refused("history", { room }, "not a member");
  await c.refused("typing", { room, typing: true }, "not a member");

  const beforeLeave = a.mark();
  await b.ok("leave", { room });
  await a.waitFor("system", (s) => s.room === room && s.text === `${b.welcome.name} left`);
  await a.waitFor("presence", (p) => p.room === room && p.members.join() === a.welcome.name, beforeLeave);
  await b.refused("send", { room, text: "gone" }, "not a member");
  await b.ok("leave", { room }); // not a member any more: still fine
  await b.refused("leave", { room: "lobby" }, "cannot leave lobby");
  await b.refused("join", { room: `nope ${tag}` }, "no such room");
  await b.refused("send", { room: `nope ${tag}`, text: "x" }, "no such room");
  await b.refused("join", { room: "a:b" }, "invalid room name");
  assert.ok(!c.log.some((e) => e.data?.room === room), "c never joined the room");
});

test("typing goes to the others in the room, on every node", async () => {
  const tag = uniq();
  const room = `typing ${tag}`;
  const a = await connect(0, `ta-${tag}`);
  const b = await connect(1, `tb-${tag}`);
  await a.ok("create", { room });
  await b.ok("join", { room });
  await a.ok("typing", { room, typing: true });
  assert.deepEqual(await b.waitFor("typing", (t) => t.room === room), {
    room,
    name: a.welcome.name,
    typing: true,
  });
  await a.ok("typing", { room, typing: false });
  await b.waitFor("typing", (t) => t.room === room && t.typing === false);
  // A lobby message after the typing notices: by then a would have had its own.
  const { id } = await a.ok("send", { room, text: "sync" });
  await a.waitFor("message", (m) => m.id === id);
  assert.ok(!a.log.some((e) => e.event === "typing"), "no echo of one's own typing");
  await a.refused("typing", { room, typing: "yes" }, "invalid request");
});

test("history: the last messages on join, then pages backwards to the start", async () => {
  const tag = uniq();
  const room = `hist ${tag}`;
  const a = await connect(0, `ha-${tag}`);
  const b = await connect(1, `hb-${tag}`);
  await a.ok("create", { room });
  const sent = [];
  for (let i = 0; i < 12; i++) {
    sent.push((await a.ok("send", { room, text: `m${i}` })).id);
  }
  for (let i = 1; i < sent.length; i++) assert.equal(cmpId(sent[i - 1], sent[i]), -1);

  const joined = await b.ok("join", { room });
  assert.equal(joined.history.length, HISTORY_ON_JOIN);
  assert.deepEqual(joined.history.map((m) => m.id), sent.slice(-HISTORY_ON_JOIN));
  assert.deepEqual(joined.history.map((m) => m.text), ["m7", "m8", "m9", "m10", "m11"]);
  for (const m of joined.history) {
    assert.equal(m.room, room);
    assert.equal(m.from, a.welcome.name);
  }

  // Page backwards 4 at a time from the oldest message we have.
  let cursor = joined.history[0].id;
  const older = [];
  for (;;) {
    const { messages } = await b.ok("history", { room, before: cursor, limit: 4 });
    if (messages.length === 0) break;
    assert.ok(messages.length <= 4);
    older.unshift(...messages);
    cursor = messages[0].id;
  }
  assert.deepEqual([...older, ...joined.history].map((m) => m.id), sent);

  const newest = await b.ok("history", { room });
  assert.deepEqual(newest.messages.map((m) => m.id), sent, "default limit 50 covers all 12");
  const huge = await b.ok("history", { room, limit: 100000 });
  assert.equal(huge.messages.length, 12, "the limit is clamped, not refused");
  const one = await b.ok("history", { room, limit: 0 });
  assert.deepEqual(one.messages.map((m) => m.id), sent.slice(-1));
  // Any number is brought into range: negative, past 64 bits, fractional.
  for (const [limit, count] of [[-1, 1], [1e20, 12], [2.5, 2]]) {
    const { messages } = await b.ok("history", { room, limit });
    assert.deepEqual(messages.map((m) => m.id), sent.slice(-count), `limit ${limit}`);
  }
  const { rooms } = await b.ok("rooms", { limit: -1 });
  assert.equal(rooms.length, 1, "rooms' limit too");
  assert.ok((await b.ok("rooms", { limit: 1e20 })).rooms.some((r) => r.room === room));
  await b.refused("history", { room, before: "abc" }, "invalid cursor");
  await b.refused("history", { room, before: "(1-0" }, "invalid cursor");
  await b.refused("history", { room: `none ${tag}` }, "no such room");
});

test("the rate limit answers 'rate limited' past the burst", async () => {
  const a = await connect(0, `rl-${uniq()}`);
  const answers = await Promise.all(
    Array.from({ length: RATE_BURST + 5 }, (_, i) => a.call("send", { room: "lobby", text: `r${i}` })),
  );
  const ok = answers.filter((r) => r.ok).length;
  const limited = answers.filter((r) => !r.ok);
  assert.ok(ok >= RATE_BURST && ok <= RATE_BURST + 2, `${ok} admitted`);
  assert.ok(limited.length >= 3);
  for (const r of limited) assert.deepEqual(r, { ok: false, error: "rate limited" });
  // The limit is per user: someone else still gets through.
  const b = await connect(1, `rl2-${uniq()}`);
  await b.ok("send", { room: "lobby", text: "not limited" });
});

test("text must be 1 to 2000 characters and not only white space", async () => {
  const a = await connect(0, `tx-${uniq()}`);
  await a.refused("send", { room: "lobby", text: "" }, "empty text");
  await a.refused("send", { room: "lobby", text: " \n\t " }, "empty text");
  await a.refused("send", { room: "lobby", text: "x".repeat(MAX_TEXT + 1) }, "text too long");
  await a.refused("send", { room: "lobby" }, "invalid request");
  await a.refused("send", { room: "lobby", text: 5 }, "invalid request");
  const long = "é".repeat(MAX_TEXT);
  const { id } = await a.ok("send", { room: "lobby", text: long });
  assert.equal((await a.waitFor("message", (m) => m.id === id)).text, long);
  // Half an emoji (a lone UTF-16 surrogate, which JSON.stringify escapes) arrives as
  // U+FFFD, and the connection stays up.
  const cut = await a.ok("send", { room: "lobby", text: "cut \ud83d" });
  assert.equal((await a.waitFor("message", (m) => m.id === cut.id)).text, "cut \ufffd");
});

test("a user with two tabs counts once; presence follows connections", async () => {
  const tag = uniq();
  const room = `tabs ${tag}`;
  const a1 = await connect(0, `pa-${tag}`);
  const a2 = await connect(1, `pa-${tag}`, { token: a1.welcome.token });
  const b = await connect(2, `pb-${tag}`);
  const { invite } = await a1.ok("create", { room, private: true });
  // a2 is the same user: a member already, no invite needed.
  const again = await a2.ok("join", { room });
  assert.deepEqual(again.members, [a1.welcome.name]);
  assert.equal((await listed(a2, room)).members, 1);
  await b.ok("join", { room, invite });
  assert.equal((await listed(a1, room)).members, 2);
  const both = [a1.welcome.name, b.welcome.name].sort();
  await a2.waitFor("presence", (p) => p.room === room && p.members.join() === both.join());

  const beforeClose = b.mark();
  a1.close();
  // a2 is still there: a's name stays.
  const { id } = await b.ok("send", { room, text: "still there?" });
  await a2.waitFor("message", (m) => m.id === id);
  assert.equal((await listed(b, room)).members, 2);
  a2.close();
  await b.waitFor("presence", (p) => p.room === room && p.members.join() === b.welcome.name, beforeClose);
  assert.equal((await listed(b, room)).members, 1);
});

test("memberships survive a reconnect to another node with the token", async () => {
  const tag = uniq();
  const room = `keep ${tag}`;
  const g = await connect(0, `g-${tag}`);
  const h = await connect(1, `h-${tag}`);
  const { invite } = await g.ok("create", { room, private: true });
  await h.ok("join", { room, invite });
  g.close();

  const last = URLS.length - 1;
  const back = await connect(last, `g2-${tag}`, { token: g.welcome.token });
  assert.equal(back.welcome.node, NODE_IDS[last]);
  assert.equal(back.welcome.user, g.welcome.user);
  // Without joining again, the room is listed and its messages arrive.
  assert.deepEqual(await listed(back, room), { room, private: true, members: 2 });
  await back.waitFor("presence", (p) => p.room === room);
  const { id } = await h.ok("send", { room, text: "welcome back" });
  assert.equal((await back.waitFor("message", (m) => m.id === id)).text, "welcome back");
  await back.ok("send", { room, text: "thanks" });
  const { messages } = await back.ok("history", { room });
  assert.deepEqual(messages.map((m) => m.text), ["welcome back", "thanks"]);
});

test("private rooms: a non-member on any node never gets in, and never hears anything", async () => {
  const tag = uniq();
  const room = `secret ${tag}`;
  const secretText = `classified-${tag}`;
  const owner = await connect(0, `owner-${tag}`);
  const member = await connect(1 % URLS.length, `member-${tag}`);
  const { invite } = await owner.ok("create", { room, private: true });
  assert.match(invite, /^[A-Za-z0-9_-]{43}$/, "≥ 128 bits");
  await member.ok("join", { room, invite });
  const other = await owner.ok("create", { room: `other ${tag}`, private: true });

  // Eavesdroppers on every node, one of them claiming the member's display name and one
  // presenting the member's public user id as a token.
  const spies = await Promise.all([
    ...URLS.map((_, i) => connect(i, member.welcome.name)),
    connect(URLS.length - 1, `spy-${tag}`, { token: member.welcome.user }),
  ]);
  for (const spy of spies) {
    assert.notEqual(spy.welcome.user, member.welcome.user);
    await spy.refused("join", { room }, "invalid invite");
    await spy.refused("join", { room, invite: "A".repeat(43) }, "invalid invite");
    await spy.refused("join", { room, invite: other.invite }, "invalid invite");
    await spy.refused("join", { room, invite: invite.slice(0, -1) }, "invalid invite");
    await spy.refused("join", { room, invite: 12 }, "invalid request");
    await spy.refused("send", { room, text: "let me in" }, "not a member");
    await spy.refused("typing", { room, typing: true }, "not a member");
    await spy.refused("history", { room }, "not a member");
    await spy.refused("history", { room, before: "99999999999999-0" }, "not a member");
    await spy.ok("leave", { room });
    await spy.refused("send", { room, text: "still not" }, "not a member");
    const { rooms } = await spy.ok("rooms", {});
    assert.ok(!rooms.some((r) => r.room === room || r.room === other.room), JSON.stringify(rooms));
  }

  // Life in the room: messages, typing, a member leaving and coming back, a new tab.
  const { id } = await owner.ok("send", { room, text: secretText });
  await member.waitFor("message", (m) => m.id === id);
  await member.ok("typing", { room, typing: true });
  await owner.waitFor("typing", (t) => t.room === room);
  await member.ok("leave", { room });
  await owner.waitFor("system", (s) => s.room === room && s.text.endsWith("left"));
  const beforeRejoin = owner.mark();
  await member.ok("join", { room, invite });
  await owner.waitFor("system", (s) => s.room === room && s.text.endsWith("joined"), beforeRejoin);
  const tab = await connect(2 % URLS.length, "tab", { token: owner.welcome.token });
  await member.waitFor("presence", (p) => p.room === room && p.members.includes("tab"));
  const beforeTabClose = member.mark();
  tab.close();
  await member.waitFor("presence", (p) => p.room === room && !p.members.includes("tab"), beforeTabClose);
  await member.ok("send", { room, text: `${secretText} 2` });
  await owner.waitFor("message", (m) => m.text === `${secretText} 2`);

  // Barriers: everything above was broadcast before the members saw it. Then one lobby
  // message from every node: broadcasts from one node arrive in order, so a spy that has
  // all the barriers would have had any leak by now.
  const barriers = [];
  for (const spy of spies.slice(0, URLS.length)) {
    barriers.push((await spy.ok("send", { room: "lobby", text: `barrier ${tag}` })).id);
  }
  for (const spy of spies) {
    for (const id of barriers) await spy.waitFor("message", (m) => m.id === id);
    const leaks = spy.log.filter(
      (e) => e.data?.room === room || JSON.stringify(e).includes(secretText) || JSON.stringify(e).includes(invite),
    );
    assert.deepEqual(leaks, [], `spy ${spy.welcome.name} on ${spy.welcome.node}`);
  }
});

test("a killed node's users stop counting once its presence expires", { skip: !KILL_PID }, async () => {
  const tag = uniq();
  const room = `crash ${tag}`;
  const last = URLS.length - 1;
  const doomed = await connect(last, `doomed-${tag}`);
  const survivor = await connect(0, `survivor-${tag}`);
  await doomed.ok("create", { room });
  await survivor.ok("join", { room });
  assert.equal((await listed(survivor, room)).members, 2);
  process.kill(KILL_PID, "SIGKILL");
  const deadline = Date.now() + PRESENCE_TTL_MS + 2 * STEP_MS;
  let members;
  do {
    await new Promise((r) => setTimeout(r, 200));
    members = (await listed(survivor, room)).members;
  } while (members !== 1 && Date.now() < deadline);
  assert.equal(members, 1, "the dead node's user expired");
  // The survivor's own entry stays, refreshed by its node's heartbeat.
  await new Promise((r) => setTimeout(r, PRESENCE_TTL_MS));
  assert.equal((await listed(survivor, room)).members, 1);
});
