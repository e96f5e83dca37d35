#!/usr/bin/env bash
# Memory per idle WebSocket through the proxy: two echo-backends, the proxy with one worker,
# then 1k..8k idle tunnels opened in steps; prints RSS per step and the slope.
#
#   scripts/ws-memory.sh [batch=100] [tls]
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-100}
cargo build --release --bin proxy --bin echo-backend -q
bin=target/release
ulimit -n "$(ulimit -Hn)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
b1=$(port); b2=$(port); p=$(port); t=$(port)
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
$bin/echo-backend --listen 127.0.0.1:$b1 --id b1 >/dev/null 2>&1 & pids+=($!)
$bin/echo-backend --listen 127.0.0.1:$b2 --id b2 >/dev/null 2>&1 & pids+=($!)
tls_args=(); target=$p; ca=()
if [ "${2:-}" = tls ]; then
  dir=$(mktemp -d); $bin/proxy gen-cert --out "$dir" >/dev/null
  tls_args=(--tls-listen 127.0.0.1:$t --cert "$dir/localhost.pem" --key "$dir/localhost-key.pem")
  target=$t; ca=("$dir/ca.pem")
fi
$bin/proxy --listen 127.0.0.1:$p "${tls_args[@]}" --backend 127.0.0.1:$b1 --backend 127.0.0.1:$b2 \
  --threads 1 >/dev/null 2>&1 & pids+=($!); proxy_pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:$p/id >/dev/null && break; sleep 0.1; done
python3 scripts/ws-hold.py "$target" "$proxy_pid" 1000,2000,4000,6000,8000 "$batch" "${ca[@]}"
