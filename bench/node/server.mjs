// Reference chat node for bench's `chat` scenario: socket.io with the official Redis adapter,
// implementing the subset of Switchyard's chat API the scenario uses (auth {name}, `create`, `join`,
// `send` with an ack, `message` broadcasts to the room). Same flags and `LISTENING <addr>`
// line as chat-node, so bench starts both the same way.
//
//   node server.mjs --listen 127.0.0.1:0 --node-id n1 --redis redis://127.0.0.1:6379
import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

function flag(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const listen = flag("listen", "127.0.0.1:0");
const nodeId = flag("node-id", "node");
const redisUrl = flag("redis", undefined);
const sep = listen.lastIndexOf(":");
const host = listen.slice(0, sep);
const port = Number(listen.slice(sep + 1));

const http = createServer((req, res) => {
  res.setHeader("x-served-by", nodeId);
  if (req.url === "/healthz") {
    res.writeHead(200).end("ok");
  } else {
    res.writeHead(404).end();
  }
});
const io = new Server(http, { pingInterval: 25000, pingTimeout: 20000 });
io.engine.on("headers", (headers) => {
  headers["x-served-by"] = nodeId;
});

if (redisUrl) {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}

let seq = 0;
const validRoom = (r) => typeof r === "string" && r.trim().length > 0 && r.length <= 64;

io.on("connection", (socket) => {
  const name = String(socket.handshake.auth?.name ?? "").trim();
  if (!name || name.length > 32) {
    socket.disconnect(true);
    return;
  }
  socket.join("lobby");
  socket.emit("welcome", { node: nodeId, name });
  socket.on("create", (arg, ack) => {
    const room = arg?.room;
    if (!validRoom(room)) return typeof ack === "function" && ack({ ok: false, error: "invalid room name" });
    if (typeof ack === "function") ack({ ok: true, room });
  });
  socket.on("join", (arg, ack) => {
    const room = arg?.room;
    if (!validRoom(room)) return typeof ack === "function" && ack({ ok: false, error: "invalid room name" });
    socket.join(room);
    if (typeof ack === "function") ack({ ok: true, room, history: [], members: [] });
  });
  socket.on("send", (arg, ack) => {
    const room = arg?.room;
    const text = arg?.text;
    if (!validRoom(room) || !socket.rooms.has(room)) {
      return typeof ack === "function" && ack({ ok: false, error: "not a member" });
    }
    if (typeof text !== "string" || text.length === 0 || text.length > 2000) {
      return typeof ack === "function" && ack({ ok: false, error: "empty text" });
    }
    const id = `${Date.now()}-${seq++}-${nodeId}`;
    io.to(room).emit("message", { id, room, from: name, text, ts: Date.now() });
    if (typeof ack === "function") ack({ ok: true, id });
  });
});

http.listen(port, host, () => {
  const a = http.address();
  process.stdout.write(`LISTENING ${a.address}:${a.port}\n`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
