// What the chat's Node test suites share: a client that records every event it receives,
// with bounded waits on them, and the round trips of the chat API (see docs/chat-api.md).

import { after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";

/** Bound for one step (a connect, one round trip, one event). */
export const STEP_MS = 5000;

/** Every socket opened here; whatever a test leaves open is closed at the end. */
export const opened = new Set();
after(() => {
  for (const s of opened) s.disconnect();
});

/** A fresh unique name part, so tests never see each other's rooms or users. */
export const uniq = () => randomBytes(4).toString("hex");

/** A connected client that records every event it receives. */
export class Client {
  constructor(socket) {
    this.socket = socket;
    this.log = [];
    this.waiters = new Set();
    socket.onAny((event, data) => {
      // Extra trailing arguments (recovery offsets) are ignored, as the contract says.
      const entry = { event, data };
      this.log.push(entry);
      for (const w of this.waiters) {
        if (w.matches(entry)) {
          this.waiters.delete(w);
          w.resolve(entry.data);
        }
      }
    });
  }

  /** How many events it has received: a mark for `waitFor`'s `from`. */
  mark() {
    return this.log.length;
  }

  /** The first `event` (among those received from the `from`-th on, or later) whose
   * payload satisfies `pred`. */
  waitFor(event, pred = () => true, from = 0, ms = STEP_MS) {
    const matches = (e) => e.event === event && pred(e.data);
    const seen = this.log.slice(from).find(matches);
    if (seen) return Promise.resolve(seen.data);
    return new Promise((resolve, reject) => {
      const w = { matches, resolve };
      this.waiters.add(w);
      setTimeout(() => {
        if (this.waiters.delete(w)) {
          reject(new Error(`no ${event} matching ${pred} within ${ms} ms; got ${JSON.stringify(this.log)}`));
        }
      }, ms);
    });
  }

  /** Emits with an ack; the ack's answer. */
  call(event, payload) {
    return this.socket.timeout(STEP_MS).emitWithAck(event, payload);
  }

  /** Like `call`, asserting `{ok:true}`. */
  async ok(event, payload) {
    const answer = await this.call(event, payload);
    assert.equal(answer.ok, true, `${event} ${JSON.stringify(payload)} → ${JSON.stringify(answer)}`);
    return answer;
  }

  /** Like `call`, asserting `{ok:false, error}`. */
  async refused(event, payload, error) {
    const answer = await this.call(event, payload);
    assert.deepEqual(answer, { ok: false, error }, `${event} ${JSON.stringify(payload)}`);
  }

  close() {
    this.socket.disconnect();
  }
}
