// Bounded waits shared by the Node suites: every wait rejects after its timeout.

/** Resolves with the arguments of the next `event` on `emitter`; rejects after `ms`. */
export function waitEvent(emitter, event, ms) {
  return new Promise((resolve, reject) => {
    const on = (...args) => {
      clearTimeout(timer);
      emitter.off(event, on);
      resolve(args);
    };
    const timer = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`timed out after ${ms} ms waiting for "${event}"`));
    }, ms);
    emitter.on(event, on);
  });
}
