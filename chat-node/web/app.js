// The Switchyard chat page: nickname, rooms (public and private with invite links),
// messages, members, typing, and a status bar naming the node that serves this tab.
// Every piece of text that comes from the server or another user is rendered with
// textContent, never parsed as HTML. The chat API is docs/chat-api.md.

import { SioClient } from "./sio.js";

const NAME_KEY = "switchyard.name";
const TOKEN_KEY = "switchyard.token";
const INVITES_KEY = "switchyard.invites";
const LOBBY = "lobby";
const ROOMS_REFRESH_MS = 10000;
const TYPING_SEND_EVERY_MS = 2000;
const TYPING_IDLE_MS = 3000;
const TYPING_SHOW_MS = 6000;

const $ = (id) => document.getElementById(id);

/** localStorage that never throws (private mode, disabled storage). */
const store = {
  get(key) {
    try {
      return window.localStorage.getItem(key);
    } catch {
      return null;
    }
  },
  set(key, value) {
    try {
      if (value === null || value === undefined) window.localStorage.removeItem(key);
      else window.localStorage.setItem(key, value);
    } catch {
      // Not remembered; the page still works for this visit.
    }
  },
  /** The invites this browser knows, room -> token (a Map: room names are user data). */
  invites() {
    try {
      const entries = JSON.parse(this.get(INVITES_KEY) ?? "[]");
      return new Map(
        Array.isArray(entries)
          ? entries.filter((e) => Array.isArray(e) && typeof e[0] === "string" && typeof e[1] === "string")
          : [],
      );
    } catch {
      return new Map();
    }
  },
  rememberInvite(room, invite) {
    const invites = this.invites();
    invites.set(room, invite);
    this.set(INVITES_KEY, JSON.stringify([...invites]));
  },
};

const state = {
  name: store.get(NAME_KEY),
  user: null, // our public user id, from `welcome`
  current: LOBBY,
  rooms: new Map(), // room -> {room, private, members}
  messages: new Map(), // room -> Map(key -> entry), entry: {kind, id?, from?, text, ts}
  members: new Map(), // room -> [names]
  typing: new Map(), // room -> Map(name -> expiry ms)
  unread: new Map(), // room -> count
  loaded: new Set(), // rooms whose history this tab has
  started: new Set(), // rooms whose history this tab has from the first message kept
  loadingOlder: null, // the room whose earlier messages are being fetched
  leaving: null, // the room this tab is leaving
  pendingInvite: null, // {room, invite} from the URL fragment, joined once connected
  sending: 0, // sends awaiting their ack
  typingSentAt: 0,
  typingRoom: null, // the room the typing notice was sent to
  typingIdle: null,
  noticeTimer: null,
  systemSeq: 0,
};

// -------------------------------------------------------------------------------------------
// Connection

const params = new URLSearchParams(window.location.search);
const forced = params.get("transport");
const transports =
  forced === "polling" ? ["polling"] : forced === "websocket" ? ["websocket"] : ["websocket", "polling"];

const client = new SioClient({
  transports,
  auth: () => {
    const auth = { name: state.name ?? "" };
    const token = store.get(TOKEN_KEY);
    if (token) auth.token = token;
    return auth;
  },
});

client.on("state", (s) => {
  const el = $("status-state");
  el.textContent = s;
  el.className = s;
  const online = s === "connected";
  // Only sending waits for the connection: a disabled box would drop the keyboard focus at
  // every reconnect and stop the person from writing on meanwhile.
  $("message-input").placeholder = online ? "Message" : "Offline: reconnecting…";
  $("send-button").disabled = !online;
  if (!online) {
    $("status-transport").textContent = client.transport ?? "none";
  }
});

client.on("transport", (name) => {
  $("status-transport").textContent = name;
});

client.on("connect", () => {
  $("status-transport").textContent = client.transport ?? "none";
  $("name-dialog").hidden = true;
  afterConnect().catch((error) => notice(error.message));
});

client.on("connect_error", (error) => {
  // Refusals about the name need the person; anything else (the server's store is
  // unavailable) may pass: retry with backoff.
  if (error.message.startsWith("name")) {
    askName(error.message);
  } else {
    notice(`cannot connect: ${error.message}; retrying`);
    client.retryLater();
  }
});

client.on("welcome", (welcome) => {
  if (!welcome || typeof welcome !== "object") return;
  if (typeof welcome.node === "string") $("status-node").textContent = welcome.node;
  if (typeof welcome.name === "string") {
    $("status-name").textContent = welcome.name;
  }
  if (typeof welcome.user === "string") state.user = welcome.user;
  if (typeof welcome.token === "string" && welcome.token) store.set(TOKEN_KEY, welcome.token);
  // The server's limit (--max-text), not the page's guess; maxLength counts UTF-16 units,
  // so the page is at most stricter than the server, never looser.
  if (Number.isInteger(welcome.maxText) && welcome.maxText > 0) {
    $("message-input").maxLength = welcome.maxText;
  }
});

client.on("message", (message) => {
  if (!message || typeof message.room !== "string") return;
  addEntry(message.room, {
    kind: "message",
    id: String(message.id ?? ""),
    from: String(message.from ?? ""),
    user: String(message.user ?? ""),
    text: String(message.text ?? ""),
    ts: Number(message.ts) || Date.now(),
  });
  if (message.room !== state.current) {
    state.unread.set(message.room, (state.unread.get(message.room) ?? 0) + 1);
    renderRooms();
  } else {
    announce(`${String(message.from ?? "")}: ${String(message.text ?? "")}`);
  }
  clearTyping(message.room, message.from);
});

client.on("system", (event) => {
  if (!event || typeof event.room !== "string") return;
  state.systemSeq += 1;
  addEntry(event.room, {
    kind: "system",
    id: `system-${state.systemSeq}`,
    text: String(event.text ?? ""),
    ts: Number(event.ts) || Date.now(),
  });
  refreshRoomsSoon();
});

client.on("presence", (event) => {
  if (!event || typeof event.room !== "string" || !Array.isArray(event.members)) return;
  state.members.set(event.room, event.members.map(String));
  const known = state.rooms.get(event.room);
  if (known) {
    // `members` lists names, each once and at most 100: two users may share one.
    known.members = Number.isFinite(event.count) ? event.count : event.members.length;
    renderRooms();
  }
  if (event.room === state.current) renderMembers();
});

// A `leave` from any of this person's connections (another tab, another device): the
// server has taken this tab out of the room too, which would otherwise go on showing it,
// quiet, its sends refused.
client.on("left", (event) => {
  if (!event || typeof event.room !== "string" || event.room === LOBBY) return;
  const room = event.room;
  state.loaded.delete(room);
  state.messages.delete(room);
  state.started.delete(room);
  state.unread.delete(room);
  if (room === state.current) {
    if (state.leaving !== room) notice(`you left ${room} in another tab or device`, "info");
    switchTo(LOBBY).catch((error) => notice(error.message));
  }
  refreshRoomsSoon();
});

client.on("typing", (event) => {
  if (!event || typeof event.room !== "string" || typeof event.name !== "string") return;
  const room = state.typing.get(event.room) ?? new Map();
  if (event.typing) room.set(event.name, Date.now() + TYPING_SHOW_MS);
  else room.delete(event.name);
  state.typing.set(event.room, room);
  renderTyping();
});

/** After every (re)connect: rooms, the invite from the link, the current room's history. */
async function afterConnect() {
  if (!$("status-name").textContent && state.name) $("status-name").textContent = state.name;
  await refreshRooms().catch((error) => notice(`rooms: ${error.message}`));
  if (state.pendingInvite && alreadyIn(state.pendingInvite.room)) {
    const { room, invite } = state.pendingInvite;
    state.pendingInvite = null;
    state.current = room;
    await joinRoom(room, invite ?? store.invites().get(room));
    return;
  }
  // Asking does not hold up the page: the current room loads behind the question.
  if (state.pendingInvite) askToJoin(state.pendingInvite.room);
  if (client.recovered && state.loaded.has(state.current)) {
    // The server replayed what we missed; nothing to fetch.
    return;
  }
  if (state.current !== LOBBY && state.loaded.has(state.current)) {
    await resumeRoom(state.current);
    return;
  }
  await joinRoom(state.current, store.invites().get(state.current));
}

/**
 * Back, without recovery, in a room this tab had open: what was missed, from `history`, not
 * `join`. The membership may have ended meanwhile (a `leave` from another tab or device):
 * a `join` would make the person a member again, and announce it to the room.
 */
async function resumeRoom(room) {
  let reply;
  try {
    reply = await request("history", { room });
  } catch (error) {
    if (error.message !== "not a member" && error.message !== "no such room") {
      notice(`${room}: ${error.message}`);
      return;
    }
    notice(`you are no longer in ${room}`, "info");
    state.loaded.delete(room);
    state.messages.delete(room);
    if (room === state.current) await switchTo(LOBBY);
    return;
  }
  if (Array.isArray(reply.messages)) mergeHistory(room, reply.messages);
}

// -------------------------------------------------------------------------------------------
// Requests

/** Sends a request and returns the ack; a `{ok:false}` answer becomes an Error. */
async function request(event, data) {
  const reply = await client.request(event, data);
  if (!reply || typeof reply !== "object") throw new Error(`${event}: no answer`);
  if (!reply.ok) throw new Error(String(reply.error ?? `${event} failed`));
  return reply;
}

let roomsRefresh = null;

function refreshRoomsSoon() {
  clearTimeout(roomsRefresh);
  roomsRefresh = setTimeout(() => refreshRooms().catch(() => {}), 300);
}

// Pages of the room list; the node bounds how many rooms exist (`--max-rooms`).
const ROOMS_PAGE = 500;

async function refreshRooms() {
  const rooms = new Map();
  let after;
  do {
    const reply = await request("rooms", after === undefined ? { limit: ROOMS_PAGE } : { limit: ROOMS_PAGE, after });
    if (!Array.isArray(reply.rooms)) return;
    for (const r of reply.rooms) {
      if (!r || typeof r.room !== "string") continue;
      rooms.set(r.room, { room: r.room, private: Boolean(r.private), members: Number(r.members) || 0 });
    }
    // A cursor that does not move on would loop for ever.
    after = typeof reply.next === "string" && reply.next !== after ? reply.next : undefined;
  } while (after !== undefined);
  state.rooms = rooms;
  renderRooms();
}

/** Joins `room` (or re-enters it) and shows it if it is still the room chosen
 * (`state.current`, which the caller sets first). */
async function joinRoom(room, invite) {
  const data = { room };
  if (invite) data.invite = invite;
  let reply;
  try {
    reply = await request("join", data);
  } catch (error) {
    notice(`cannot join ${room}: ${error.message}`);
    if (room !== LOBBY && room === state.current) await switchTo(LOBBY);
    return false;
  }
  if (invite) store.rememberInvite(reply.room ?? room, invite);
  const name = typeof reply.room === "string" ? reply.room : room;
  if (Array.isArray(reply.history)) mergeHistory(name, reply.history);
  if (Array.isArray(reply.members)) state.members.set(name, reply.members.map(String));
  state.loaded.add(name);
  // Another room chosen while this answer was on its way (a quick second click): that one
  // is shown, whichever answer comes last.
  if (state.current === room) state.current = name;
  state.unread.delete(name);
  await refreshRooms().catch(() => {});
  renderAll();
  return true;
}

async function switchTo(room) {
  closePanels();
  stopTyping();
  if (room === state.current && state.loaded.has(room)) return;
  state.current = room;
  renderAll();
  await joinRoom(room, store.invites().get(room));
}

/** How many earlier messages one click (or a scroll to the top) fetches: the server's
 * largest page. */
const OLDER_PAGE = 100;

/** The id of the oldest message this tab has of `room`, if any. */
function oldestId(room) {
  return sortedEntries(room).find((e) => e.kind === "message" && e.id)?.id ?? null;
}

/**
 * Fetches the page of messages before the oldest one shown, keeping in view what the person
 * was reading. An empty or short page means the room's history starts there (it keeps
 * about the last 1000 messages).
 */
async function loadOlder() {
  const room = state.current;
  const before = oldestId(room);
  if (state.loadingOlder || !before || state.started.has(room)) return;
  state.loadingOlder = room;
  renderOlder();
  try {
    const reply = await request("history", { room, before, limit: OLDER_PAGE });
    const messages = Array.isArray(reply.messages) ? reply.messages : [];
    if (messages.length < OLDER_PAGE) state.started.add(room);
    if (room !== state.current) {
      mergeHistory(room, messages);
      return;
    }
    const list = $("messages");
    const fromBottom = list.scrollHeight - list.scrollTop;
    mergeHistory(room, messages, { keepScroll: true });
    list.scrollTop = list.scrollHeight - fromBottom;
  } catch (error) {
    notice(`earlier messages of ${room}: ${error.message}`);
  } finally {
    state.loadingOlder = null;
    renderOlder();
  }
}

function renderOlder() {
  const button = $("older");
  const room = state.current;
  button.hidden = !oldestId(room) || state.started.has(room);
  button.disabled = state.loadingOlder !== null;
  button.textContent = state.loadingOlder === room ? "Loading…" : "Earlier messages";
}

$("older").addEventListener("click", () => loadOlder());
// Scrolled to the top: the next page comes without a click, as in other chat apps.
$("messages").addEventListener("scroll", (event) => {
  if (event.target.scrollTop === 0 && !$("older").hidden) loadOlder();
});

function mergeHistory(room, messages, { keepScroll = false } = {}) {
  for (const m of messages) {
    if (!m || typeof m !== "object") continue;
    addEntry(
      room,
      {
        kind: "message",
        id: String(m.id ?? ""),
        from: String(m.from ?? ""),
        user: String(m.user ?? ""),
        text: String(m.text ?? ""),
        ts: Number(m.ts) || 0,
      },
      false,
    );
  }
  if (room === state.current) renderMessages({ keepScroll });
}

// -------------------------------------------------------------------------------------------
// State

/** How many entries a room keeps in a tab: a tab left open in a busy room would otherwise
 * hold every message for as long as it stays open. The oldest go once this many and a
 * batch more have come, unless the person is reading back in the room shown; they can be
 * paged in again ("Earlier messages"). */
const KEPT_ENTRIES = 1000;
const TRIM_BATCH = 100;

function addEntry(room, entry, render = true) {
  const entries = state.messages.get(room) ?? new Map();
  const key = entry.kind === "message" ? `m:${entry.id}` : entry.id;
  if (entry.kind === "message" && entry.id && entries.has(key)) return;
  entries.set(key, entry);
  state.messages.set(room, entries);
  if (render && room === state.current) appendMessage(entry);
  if (render && entries.size > KEPT_ENTRIES + TRIM_BATCH) trimEntries(room, entries);
}

function trimEntries(room, entries) {
  const list = $("messages");
  const shown = room === state.current;
  if (shown && !nearBottom(list)) return;
  const oldest = sortedEntries(room).slice(0, entries.size - KEPT_ENTRIES);
  for (const entry of oldest) {
    entries.delete(entry.kind === "message" ? `m:${entry.id}` : entry.id);
  }
  // What was dropped can be fetched again.
  state.started.delete(room);
  if (shown) renderMessages();
}

function clearTyping(room, name) {
  const typing = state.typing.get(room);
  if (typing?.delete(name)) renderTyping();
}

/** Where an entry sorts: a message by its id (`<ms>-<seq>`, given by the store, so that
 * the page, every node and the history agree even when the nodes' clocks differ); any
 * other entry by its time. */
function orderKey(entry) {
  if (entry.kind === "message") {
    const [ms, seq] = String(entry.id).split("-").map(Number);
    if (Number.isFinite(ms) && Number.isFinite(seq)) return [ms, seq];
  }
  return [entry.ts, -1];
}

function compareKeys(a, b) {
  return a[0] - b[0] || a[1] - b[1];
}

function sortedEntries(room) {
  const entries = [...(state.messages.get(room)?.values() ?? [])];
  return entries.sort((a, b) => compareKeys(orderKey(a), orderKey(b)));
}

// -------------------------------------------------------------------------------------------
// Rendering (textContent only)

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** An element for text that people wrote (names, messages), in whatever script: set apart
 * for the bidirectional algorithm, so that a right-to-left name does not pull what follows
 * it (the user id tag, the punctuation) into its own direction. */
function userText(tag, className, text) {
  const node = el(tag, className, text);
  node.dir = "auto";
  return node;
}

function formatTime(ts) {
  const date = new Date(ts);
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function messageNode(entry) {
  const li = el("li", entry.kind);
  const time = el("time", "msg-time", formatTime(entry.ts));
  time.dateTime = new Date(entry.ts).toISOString();
  li.append(time);
  if (entry.kind === "message") {
    li.dataset.id = entry.id;
    if (entry.user && entry.user === state.user) li.classList.add("mine");
    li.append(userText("span", "msg-from", entry.from));
    // Anyone may take any name: the start of the user id tells two "alice"s apart.
    if (entry.user) {
      const who = el("span", "msg-who", `#${entry.user.slice(1, 5)}`);
      who.title = `user ${entry.user}`;
      li.append(who);
    }
    li.append(userText("span", "msg-text", entry.text));
  } else {
    li.append(el("span", "msg-text", entry.text));
  }
  return li;
}

function nearBottom(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

function appendMessage(entry) {
  const list = $("messages");
  const stick = nearBottom(list);
  // Keep the order even when a late event arrives (history racing a live message).
  const node = messageNode(entry);
  const key = orderKey(entry);
  let before = null;
  for (let i = list.children.length - 1; i >= 0; i -= 1) {
    const child = list.children[i];
    if (compareKeys(child.orderKey, key) <= 0) break;
    before = child;
  }
  node.orderKey = key;
  list.insertBefore(node, before);
  if (stick) list.scrollTop = list.scrollHeight;
}

function renderMessages({ keepScroll = false } = {}) {
  const list = $("messages");
  const nodes = sortedEntries(state.current).map((entry) => {
    const node = messageNode(entry);
    node.orderKey = orderKey(entry);
    return node;
  });
  list.replaceChildren(...nodes);
  if (!keepScroll) list.scrollTop = list.scrollHeight;
  renderOlder();
}

function renderRooms() {
  const list = $("room-list");
  // The list is rebuilt at every presence and refresh: the room whose button has the
  // keyboard focus gets it back, or the focus would fall to the page every few seconds.
  const focused = list.contains(document.activeElement) ? document.activeElement.closest("li")?.dataset.room : null;
  let refocus = null;
  const rooms = [...state.rooms.values()];
  if (!state.rooms.has(state.current)) {
    rooms.push({ room: state.current, private: false, members: 0, unlisted: true });
  }
  rooms.sort((a, b) => (a.room === LOBBY ? -1 : b.room === LOBBY ? 1 : a.room.localeCompare(b.room)));
  const items = rooms.map((r) => {
    const li = el("li");
    li.dataset.room = r.room;
    li.dataset.private = String(r.private);
    if (r.room === state.current) li.classList.add("current");
    const button = el("button");
    button.type = "button";
    if (r.private) {
      const lock = el("span", "room-lock");
      lock.setAttribute("role", "img");
      lock.setAttribute("aria-label", "private");
      lock.title = "private";
      button.append(lock);
    }
    button.append(userText("span", "room-name", r.room));
    const unread = state.unread.get(r.room);
    if (unread) button.append(el("span", "room-unread", String(unread)));
    if (!r.unlisted) button.append(el("span", "room-count", String(r.members)));
    button.title = `${r.members} online`;
    button.addEventListener("click", () => switchTo(r.room).catch((e) => notice(e.message)));
    li.append(button);
    if (r.room === focused) refocus = button;
    return li;
  });
  list.replaceChildren(...items);
  refocus?.focus();
}

function renderMembers() {
  const names = state.members.get(state.current) ?? [];
  $("members").replaceChildren(...names.map((name) => userText("li", "member", name)));
}

function renderTyping() {
  const now = Date.now();
  const room = state.typing.get(state.current) ?? new Map();
  for (const [name, until] of room) if (until < now) room.delete(name);
  const names = [...room.keys()];
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = "several people are typing…";
  $("typing").textContent = text;
}

function renderAll() {
  $("room-title").textContent = state.current;
  $("leave-room").hidden = state.current === LOBBY;
  renderRooms();
  renderMessages();
  renderMembers();
  renderTyping();
  renderInvite();
}

/** What a screen reader is to read out: a new message of the room shown. The list itself is
 * not a live region: switching rooms rebuilds it, and a reader would read out the whole
 * history of the room each time. */
function announce(text) {
  $("announcer").textContent = text;
}

function notice(text, kind = "error") {
  const box = $("notice");
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
  clearTimeout(state.noticeTimer);
  state.noticeTimer = setTimeout(() => {
    box.hidden = true;
  }, 6000);
}

// -------------------------------------------------------------------------------------------
// Nickname

function askName(error) {
  $("name-error").textContent = error ?? "";
  const input = $("name-input");
  input.value = state.name ?? "";
  // A change of name the person asked for may be called off; a first name, or one the
  // server refused, may not: there is no name to go back to.
  $("name-cancel").hidden = Boolean(error) || !state.name;
  $("name-dialog").hidden = false;
  input.focus();
}

function cancelName() {
  if ($("name-cancel").hidden) return;
  $("name-dialog").hidden = true;
  $("change-name").focus();
}

$("name-cancel").addEventListener("click", cancelName);
$("name-dialog").addEventListener("keydown", (event) => {
  if (event.key === "Escape") cancelName();
});

$("name-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("name-input").value.trim();
  if (!name) {
    $("name-error").textContent = "enter a nickname";
    return;
  }
  state.name = name;
  store.set(NAME_KEY, name);
  $("name-dialog").hidden = true;
  // A new name takes effect on a new connection (the name travels in the CONNECT auth).
  client.disconnect();
  client.connect();
});

$("change-name").addEventListener("click", () => askName());

// -------------------------------------------------------------------------------------------
// Rooms: create, invite link, join by link, leave

function inviteLink(room, invite) {
  const url = new URL(window.location.href);
  url.search = "";
  url.hash = new URLSearchParams({ room, invite }).toString();
  return url.toString();
}

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const room = $("create-name").value.trim();
  const isPrivate = $("create-private").checked;
  if (!room) return;
  try {
    const reply = await request("create", { room, private: isPrivate });
    const name = typeof reply.room === "string" ? reply.room : room;
    $("create-name").value = "";
    if (typeof reply.invite === "string" && reply.invite) store.rememberInvite(name, reply.invite);
    // At phone width the rooms panel covers the chat: a public room is shown at once; a
    // private one keeps the panel open on its invite link, which is there to be copied.
    if (!isPrivate) closePanels();
    state.current = name;
    await joinRoom(name, reply.invite);
  } catch (error) {
    notice(`cannot create ${room}: ${error.message}`);
  }
});

/** The invite link of the room shown, whenever this browser knows it: not only right after
 * the `create`, but after a reload, in another tab, or for a room joined by a link. */
function renderInvite() {
  const room = state.current;
  const invite = store.invites().get(room);
  const shown = Boolean(invite) && state.rooms.get(room)?.private !== false;
  $("invite-box").hidden = !shown;
  if (!shown) return;
  $("invite-room").textContent = room;
  $("invite-link").value = inviteLink(room, invite);
}

$("invite-copy").addEventListener("click", async () => {
  const input = $("invite-link");
  try {
    await navigator.clipboard.writeText(input.value);
    notice("invite link copied", "info");
  } catch {
    // No clipboard permission (or not a secure context): select it for a manual copy.
    input.focus();
    input.select();
    notice("press Ctrl+C (or long-press) to copy the selected link", "info");
  }
});

$("leave-room").addEventListener("click", async () => {
  const room = state.current;
  if (room === LOBBY) return;
  state.leaving = room;
  try {
    await request("leave", { room });
    state.loaded.delete(room);
    state.messages.delete(room);
    await switchTo(LOBBY);
    await refreshRooms();
  } catch (error) {
    notice(`cannot leave ${room}: ${error.message}`);
  } finally {
    state.leaving = null;
  }
});

/** `#room=<room>&invite=<token>`: remembered, then removed from the address bar. */
function readInviteFromHash() {
  if (!window.location.hash) return;
  const fields = new URLSearchParams(window.location.hash.slice(1));
  const room = fields.get("room");
  if (!room) return;
  state.pendingInvite = { room, invite: fields.get("invite") ?? undefined };
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
  if (client.connected) offerInvite();
}

/**
 * A link must not put anyone in a room by itself: joining shows the person's name to the
 * room's members, so anyone could unmask a visitor with a link. A room the person is
 * already in opens at once; any other is joined only when they say so.
 */
function offerInvite() {
  const pending = state.pendingInvite;
  if (!pending) return;
  if (alreadyIn(pending.room)) {
    state.pendingInvite = null;
    switchTo(pending.room).catch((error) => notice(error.message));
  } else {
    askToJoin(pending.room);
  }
}

/** The lobby, a room this tab has open, or a private room (listed only to its members). */
function alreadyIn(room) {
  return room === LOBBY || state.loaded.has(room) || Boolean(state.rooms.get(room)?.private);
}

function askToJoin(room) {
  $("join-room").textContent = room;
  $("join-dialog").hidden = false;
  $("join-accept").focus();
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const pending = state.pendingInvite;
  state.pendingInvite = null;
  $("join-dialog").hidden = true;
  if (!pending) return;
  // Chosen now, as a click in the room list chooses: the room chosen last is shown.
  state.current = pending.room;
  renderAll();
  joinRoom(pending.room, pending.invite).catch((error) => notice(error.message));
});

function declineJoin() {
  state.pendingInvite = null;
  $("join-dialog").hidden = true;
}

$("join-decline").addEventListener("click", declineJoin);
$("join-dialog").addEventListener("keydown", (event) => {
  if (event.key === "Escape") declineJoin();
});

window.addEventListener("hashchange", readInviteFromHash);

// -------------------------------------------------------------------------------------------
// Composer and typing

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("message-input");
  const text = input.value;
  if (!text.trim()) return;
  const room = state.current;
  stopTyping();
  // Emptied now, not on the ack: a second Enter while the ack is on its way would post the
  // text twice, and emptying on the ack would wipe what was typed meanwhile.
  input.value = "";
  const composer = $("composer");
  state.sending += 1;
  composer.setAttribute("aria-busy", "true");
  try {
    await request("send", { room, text });
  } catch (error) {
    // Back in the box for the person to decide, before anything typed since.
    input.value = input.value ? `${text} ${input.value}` : text;
    // `timeout` (the server's store did not answer in time), a connection lost or an ack
    // that never came: the message may still be stored; it shows up in the room if it
    // is, and sending it again could post it twice.
    const maybe =
      error.message === "timeout" || error.message === "disconnected" || error.message.startsWith("no answer");
    notice(
      maybe
        ? "maybe sent: no answer came in time; if it went, it shows up here"
        : `not sent: ${error.message}`,
    );
  } finally {
    state.sending -= 1;
    if (state.sending === 0) composer.removeAttribute("aria-busy");
  }
});

$("message-input").addEventListener("input", () => {
  const now = Date.now();
  // A draft carried over from another room: that room's notice ends first.
  if (state.typingRoom !== state.current) stopTyping();
  if (now - state.typingSentAt > TYPING_SEND_EVERY_MS) {
    state.typingSentAt = now;
    state.typingRoom = state.current;
    client.emit("typing", { room: state.current, typing: true });
  }
  clearTimeout(state.typingIdle);
  state.typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
});

/** Ends the typing notice in the room it was sent to: the person may have switched rooms
 * since, and a notice ended in the wrong room stayed in the first one until it expired. */
function stopTyping() {
  clearTimeout(state.typingIdle);
  if (state.typingSentAt) {
    state.typingSentAt = 0;
    client.emit("typing", { room: state.typingRoom, typing: false });
  }
}

// -------------------------------------------------------------------------------------------
// Phone layout: rooms and members as slide-in panels

function togglePanel(button, panel) {
  const open = !$(panel).classList.contains("open");
  closePanels();
  $(panel).classList.toggle("open", open);
  $(button).setAttribute("aria-expanded", String(open));
}

function closePanels() {
  for (const [button, panel] of [
    ["toggle-rooms", "sidebar"],
    ["toggle-members", "members-pane"],
  ]) {
    $(panel).classList.remove("open");
    $(button).setAttribute("aria-expanded", "false");
  }
}

$("toggle-rooms").addEventListener("click", () => togglePanel("toggle-rooms", "sidebar"));
$("toggle-members").addEventListener("click", () => togglePanel("toggle-members", "members-pane"));

// -------------------------------------------------------------------------------------------
// Start

setInterval(() => {
  if (client.connected) refreshRooms().catch(() => {});
}, ROOMS_REFRESH_MS);
setInterval(renderTyping, 1000);
// Back online (laptop lid, train tunnel): try now instead of waiting out the backoff.
window.addEventListener("online", () => client.reconnectNow());

// For tests and the curious: the live client (state, transport, recovered).
window.switchyard = { client, state };

readInviteFromHash();
renderAll();
if (state.name) client.connect();
else askName();
