#!/usr/bin/env bash
# Quick side-by-side HTTP comparison on loopback: wrk against one echo-backend directly and
# through the proxy (one worker thread), alternating, several rounds; prints the median
# requests/s of each, their ratio, and the proxy's requests per CPU-second.
# The full benchmark tool (strategies, nginx, haproxy, WebSockets) is `bench/`.
#
#   scripts/quick-compare.sh [rounds=5] [seconds=5] [connections=50]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-5}
conns=${3:-50}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --bin proxy --bin echo-backend -q
bin=target/release
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bport=$(port); pport=$(port); aport=$(port)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
$bin/echo-backend --listen 127.0.0.1:$bport --id b1 >/dev/null 2>&1 & pids+=($!)
$bin/proxy --listen 127.0.0.1:$pport --backend 127.0.0.1:$bport --threads 1 \
  --admin 127.0.0.1:$aport >/dev/null 2>&1 & proxy_pid=$!; pids+=($proxy_pid)
for _ in $(seq 50); do curl -sf http://127.0.0.1:$pport/id >/dev/null && break; sleep 0.1; done

cpu_secs() { awk '{print ($14+$15)/100}' /proc/$1/stat; }
rps() { wrk -t1 -c"$conns" -d"${secs}s" "$1" | awk '/Requests\/sec/ {print $2}'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

direct=(); proxied=(); per_cpu=()
for r in $(seq "$rounds"); do
  direct+=("$(rps http://127.0.0.1:$bport/id)")
  c0=$(cpu_secs $proxy_pid)
  p=$(rps http://127.0.0.1:$pport/id)
  c1=$(cpu_secs $proxy_pid)
  proxied+=("$p")
  per_cpu+=("$(awk -v p="$p" -v s="$secs" -v c0="$c0" -v c1="$c1" 'BEGIN {print (c1>c0) ? p*s/(c1-c0) : 0}')")
  echo "round $r: direct ${direct[-1]} rps, proxy $p rps"
done
d=$(printf '%s\n' "${direct[@]}" | median)
p=$(printf '%s\n' "${proxied[@]}" | median)
c=$(printf '%s\n' "${per_cpu[@]}" | median)
echo "median: direct $d rps, through proxy $p rps, ratio $(awk -v p="$p" -v d="$d" 'BEGIN {printf "%.2f", p/d}')"
echo "proxy: $(awk -v c="$c" 'BEGIN {printf "%.0f", c}') requests per proxy CPU-second (1 worker thread)"
