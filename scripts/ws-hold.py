#!/usr/bin/env python3
"""Opens idle WebSockets through a proxy in steps and prints the proxy's RSS after each
step, then the slope (memory per idle tunnel) fitted over the steps.

    ws-hold.py PORT PROXY_PID STEPS [BATCH] [CA_PEM]

STEPS like 1000,2000,4000,6000,8000; BATCH handshakes in flight at once (default: a whole
step); CA_PEM switches to TLS. Clients bind to 127.0.x.y so ports do not run out.
Run through scripts/ws-memory.sh.
"""
import socket, base64, os, sys, time, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (19500, 20000))
port, pid, steps = int(sys.argv[1]), int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
batchsz = int(sys.argv[4]) if len(sys.argv) > 4 else 1000000
import ssl
ctx = None
if len(sys.argv) > 5:
    ctx = ssl.create_default_context(cafile=sys.argv[5])
ips = [f"127.0.{a}.{b}" for a in range(1, 50) for b in range(2, 250)]
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"): return int(line.split()[1])
socks = []
print("n,rss_kib", flush=True)
base = rss(pid)
print(f"0,{base}", flush=True)
bad = 0
pts = [(0, base)]
for target in steps:
  while len(socks) < target:
    batch = []
    while len(socks) + len(batch) < target and len(batch) < batchsz:
        s = socket.socket(); s.bind((ips[(len(socks)+len(batch)) % len(ips)], 0)); s.connect(("127.0.0.1", port))
        if ctx: s = ctx.wrap_socket(s, server_hostname="localhost")
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(f"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        batch.append(s)
    for s in batch:
        s.settimeout(10)
        d = b""
        try:
            while b"hello" not in d:
                r = s.recv(4096)
                if not r: break
                d += r
        except Exception: pass
        if b"101" not in d or b"hello" not in d: bad += 1
    socks += batch
  if True:
    time.sleep(1.5)
    r = rss(pid); pts.append((len(socks), r))
    print(f"{len(socks)},{r}", flush=True)
n = len(pts); xs = [p[0] for p in pts[1:]]; ys = [p[1] for p in pts[1:]]
mx, my = sum(xs)/len(xs), sum(ys)/len(ys)
slope = sum((x-mx)*(y-my) for x, y in zip(xs, ys)) / sum((x-mx)**2 for x in xs)
print(f"failed upgrades: {bad}; slope {slope*1024:.0f} bytes per tunnel ({slope:.2f} KiB)")
