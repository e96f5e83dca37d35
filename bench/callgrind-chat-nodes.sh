#!/usr/bin/env bash
# The chat-node cluster's user-space instructions per chat message under `bench chat`,
# counted by valgrind's callgrind over all three nodes: a figure that does not move with
# the load of a shared machine, unlike CPU seconds. For comparing two builds of chat-node
# (run them alternately; repeated counts of one build differ by well under 1%).
#
#   bench/callgrind-chat-nodes.sh [chat-node binary] [rate per client]
#
# Each node runs under callgrind through a wrapper given to bench as --chat-node-bin, in a
# session of its own so that it outlives bench's SIGKILL; the nodes are stopped here with
# SIGTERM, and callgrind writes their profiles then. 60 clients in 6 rooms at 5 messages/s
# each for 10 s by default, which the instrumented nodes keep up with; the whole run is
# counted, set-up included. The Node.js reference runs after it when installed, uncounted
# (its nodes are not chat-node). Needs valgrind and release builds of bench, proxy and chat-node
# (cargo build --release -p bench -p proxy -p chat-node); PROXY_BIN overrides the proxy.
# Output: bench/results/callgrind-chat-nodes/ (callgrind_annotate --inclusive=yes
# <folder>/callgrind.<pid>.out shows where one node's instructions go).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
node=$(realpath "${1:-$bin/chat-node}")
rate=${2:-5}
proxy=${PROXY_BIN:-$bin/proxy}
for tool in valgrind redis-server; do
  command -v "$tool" >/dev/null || { echo "callgrind-chat-nodes: $tool is not installed" >&2; exit 1; }
done
[ -x $bin/bench ] && [ -x "$proxy" ] && [ -x "$node" ] || {
  echo "callgrind-chat-nodes: build first: cargo build --release -p bench -p proxy -p chat-node" >&2; exit 1; }
out=bench/results/callgrind-chat-nodes
rm -rf "$out" && mkdir -p "$out"
out=$(cd "$out" && pwd)
cat >"$out/chat-node" <<EOF
#!/bin/sh
setsid valgrind --tool=callgrind --log-file="$out/valgrind.%p.log" \
  --callgrind-out-file="$out/callgrind.%p.out" "$node" "\$@" &
echo \$! >>"$out/pids"
wait
EOF
chmod +x "$out/chat-node"
# bench ends with an error after the chat-node cluster's run when the Node.js reference is
# not installed: the figures needed are written by then.
$bin/bench chat --connections 60 --rooms 6 --rate "$rate" --duration 10s --runs 1 \
  --chat-node-bin "$out/chat-node" --proxy-bin "$proxy" --out "$out/bench" \
  --quiet >"$out/bench.log" 2>&1 || true
for pid in $(cat "$out/pids"); do kill -TERM "$pid" 2>/dev/null || true; done
for pid in $(cat "$out/pids"); do
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
done
sent=$(grep -o '"sent": [0-9.]*' "$out/bench/results.json" | head -1 | cut -d' ' -f2)
cat "$out"/valgrind.*.log | awk -v sent="$sent" '/Collected/ { gsub(",", "", $4); total += $4; n++ }
  END { printf "%d nodes, %d messages: %.0f instructions per message\n", n, sent, total / sent }'
