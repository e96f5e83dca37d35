#!/usr/bin/env bash
# redis-server's user-space instructions per chat message under `bench chat`, counted by
# valgrind's callgrind: a figure that does not move with the load of a shared machine,
# unlike `redis µs/msg`. For comparing two builds of chat-node by what they make Redis do
# (run them alternately; repeated counts of one build differ by about 1%).
#
#   bench/callgrind-chat-redis.sh [chat-node binary] [rate per client]
#
# bench starts its redis-server from PATH: a wrapper put first on PATH runs the first one
# (the chat-node cluster's) under callgrind, in a session of its own so that it outlives
# bench's SIGKILL; it is stopped here with SIGTERM, and callgrind writes its profile then.
# The rate defaults to 5 messages/s per client (60 clients, 300 messages/s), which the
# instrumented server keeps up with; the whole run is counted, set-up included.
# Needs valgrind and release builds of bench, proxy and chat-node
# (cargo build --release -p bench -p proxy -p chat-node); PROXY_BIN overrides the proxy.
# Output: bench/results/callgrind-chat-redis/ (callgrind_annotate --inclusive=yes
# <folder>/callgrind.out shows where the instructions go: evalShaCommand is the scripts).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
node=${1:-$bin/chat-node}
rate=${2:-5}
proxy=${PROXY_BIN:-$bin/proxy}
for tool in valgrind callgrind_annotate redis-server; do
  command -v "$tool" >/dev/null || { echo "callgrind-chat-redis: $tool is not installed" >&2; exit 1; }
done
[ -x $bin/bench ] && [ -x "$proxy" ] && [ -x "$node" ] || {
  echo "callgrind-chat-redis: build first: cargo build --release -p bench -p proxy -p chat-node" >&2; exit 1; }
redis=$(command -v redis-server)
out=bench/results/callgrind-chat-redis
rm -rf "$out" && mkdir -p "$out/path"
out=$(cd "$out" && pwd)
cat >"$out/path/redis-server" <<EOF
#!/bin/sh
# A later server (the Node.js reference's, when it is installed) runs as it is.
[ -e "$out/redis.pid" ] && exec "$redis" "\$@"
setsid valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" "$redis" "\$@" \
  >"$out/valgrind.log" 2>&1 &
echo \$! >"$out/redis.pid"
wait
EOF
chmod +x "$out/path/redis-server"
# bench ends with an error after the chat-node cluster's run when the Node.js reference is
# not installed: the figure needed is written by then.
PATH="$out/path:$PATH" $bin/bench chat --connections 60 --rooms 6 --rate "$rate" \
  --duration 10s --runs 1 --chat-node-bin "$node" --proxy-bin "$proxy" --out "$out/bench" \
  --quiet >"$out/bench.log" 2>&1 || true
pid=$(cat "$out/redis.pid")
kill -TERM "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
sent=$(grep -o '"sent": [0-9.]*' "$out/bench/results.json" | head -1 | cut -d' ' -f2)
callgrind_annotate --inclusive=yes "$out/callgrind.out" 2>/dev/null |
  awk -v sent="$sent" '/PROGRAM TOTALS/ { gsub(",", "", $1); total = $1 }
    /evalShaCommand/ { gsub(",", "", $1); eval = $1 }
    END { printf "%d messages: %.0f instructions per message, %.0f of them in EVALSHA\n",
          sent, total / sent, eval / sent }'
