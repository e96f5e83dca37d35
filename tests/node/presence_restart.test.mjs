// A chat node restarted with the same `--node-id` does not keep its previous process's
// sockets online, against nodes started by tests/tests/chat_guards.rs on one Redis. Two
// phases (CHAT_PHASE), the node being restarted in between:
//
// - `before`: a user ("the ghost", GHOST_NAME) connects to node 1 and shows in the lobby's
//   presence seen from node 2; then node 1 is killed (CHAT_KILL_PID), leaving its entry.
// - `after`: node 1 runs again under the same id; a user connects to it; the lobby's
//   presence, seen from node 2, lists that user and not the ghost.
//
// CHAT_URLS: node 1, node 2.

import { after, test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { waitEvent } from "./wait.mjs";

const URLS = (process.env.CHAT_URLS ?? "").split(",").filter(Boolean);
const PHASE = process.env.CHAT_PHASE;
const GHOST = process.env.GHOST_NAME;
const KILL_PID = Number(process.env.CHAT_KILL_PID ?? 0);
if (URLS.length !== 2 || !GHOST || !["before", "after"].includes(PHASE)) {
  throw new Error("set CHAT_URLS (node 1, node 2), GHOST_NAME and CHAT_PHASE (before|after)");
}
const STEP_MS = 5000;

const opened = new Set();
after(() => {
  for (const s of opened) s.disconnect();
});

/** A connected socket on `url` that records the lobby's `presence` events. */
async function connect(url, name) {
  const socket = io(url, { forceNew: true, reconnection: false, timeout: STEP_MS, auth: { name } });
  opened.add(socket);
  socket.presence = [];
  socket.on("presence", (p) => {
    if (p.room === "lobby") socket.presence.push(p);
  });
  await waitEvent(socket, "welcome", STEP_MS);
  return socket;
}

/** The first lobby `presence` (past or future) whose members satisfy `pred`. */
function presenceWhere(socket, pred, what) {
  const seen = socket.presence.find((p) => pred(p.members));
  if (seen) return Promise.resolve(seen);
  return new Promise((resolve, reject) => {
    const on = (p) => {
      if (p.room === "lobby" && pred(p.members)) {
        clearTimeout(timer);
        socket.off("presence", on);
        resolve(p);
      }
    };
    const timer = setTimeout(() => {
      socket.off("presence", on);
      reject(new Error(`no lobby presence with ${what} within ${STEP_MS} ms: ${JSON.stringify(socket.presence)}`));
    }, STEP_MS);
    socket.on("presence", on);
  });
}

test("before: the ghost is online on node 1, then node 1 is killed", { skip: PHASE !== "before" }, async () => {
  assert.ok(KILL_PID > 0, "CHAT_KILL_PID");
  const watcher = await connect(URLS[1], "watcher");
  const ghost = await connect(URLS[0], GHOST);
  await presenceWhere(watcher, (m) => m.includes(GHOST), GHOST);
  const gone = waitEvent(ghost, "disconnect", STEP_MS);
  process.kill(KILL_PID, "SIGKILL");
  await gone;
});

test("after: node 1 restarted under its id does not count the ghost", { skip: PHASE !== "after" }, async () => {
  const watcher = await connect(URLS[1], "watcher");
  const newcomer = `newcomer-${process.pid}`;
  await connect(URLS[0], newcomer);
  // The presence broadcast that follows the newcomer reads node 1's entries as they are
  // now; with the previous process's entries kept, the ghost would be listed forever.
  const p = await presenceWhere(watcher, (m) => m.includes(newcomer), newcomer);
  assert.ok(!p.members.includes(GHOST), `the ghost is gone: ${JSON.stringify(p)}`);
});
