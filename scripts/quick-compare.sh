#!/usr/bin/env bash
# Quick side-by-side HTTP comparison on loopback. wrk drives one echo-backend directly, and
# through each proxy limited to one worker: Switchyard, and nginx and HAProxy when they are
# installed. Targets alternate within each round; the medians over the rounds are printed
# with their ratio to direct and each proxy's requests per CPU-second (from /proc).
# The full benchmark tool (strategies, WebSockets, failover) is `bench/`.
#
#   scripts/quick-compare.sh [rounds=5] [seconds=5] [connections=50]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
secs=${2:-5}
conns=${3:-50}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --bin proxy --bin echo-backend -q
bin=$PWD/target/release
work=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

bport=$(port)
$bin/echo-backend --listen 127.0.0.1:$bport --id b1 >/dev/null 2>&1 & pids+=($!)
declare -A url cpu_pid
url[direct]=http://127.0.0.1:$bport/id

sport=$(port)
$bin/proxy --listen 127.0.0.1:$sport --backend 127.0.0.1:$bport --threads 1 \
  --admin 127.0.0.1:$(port) >/dev/null 2>&1 & pids+=($!)
url[switchyard]=http://127.0.0.1:$sport/id; cpu_pid[switchyard]=$!

if command -v nginx >/dev/null; then
  nport=$(port)
  mkdir -p "$work/nginx"
  cat > "$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx; uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  upstream b { server 127.0.0.1:$bport; keepalive 64; }
  server {
    listen 127.0.0.1:$nport;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" & pids+=($!)
  url[nginx]=http://127.0.0.1:$nport/id
fi
if command -v haproxy >/dev/null; then
  hport=$(port)
  cat > "$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$hport
  default_backend b
backend b
  server s1 127.0.0.1:$bport
EOF
  haproxy -db -f "$work/haproxy.cfg" >/dev/null 2>&1 & pids+=($!); cpu_pid[haproxy]=$!
  url[haproxy]=http://127.0.0.1:$hport/id
fi
targets=(direct switchyard)
[ -n "${url[nginx]:-}" ] && targets+=(nginx)
[ -n "${url[haproxy]:-}" ] && targets+=(haproxy)
for t in "${targets[@]}"; do
  for _ in $(seq 100); do curl -sf "${url[$t]}" >/dev/null && break; sleep 0.1; done
done
# nginx's work happens in its worker, a child of the master.
[ -n "${url[nginx]:-}" ] && cpu_pid[nginx]=$(pgrep -f "nginx: worker process" | head -1)

# CPU seconds (user + system) used so far by target $1's proxy process; 0 for direct.
cpu_secs() {
  local p=${cpu_pid[$1]:-}
  if [ -n "$p" ] && [ -r "/proc/$p/stat" ]; then awk '{print ($14+$15)/100}' "/proc/$p/stat"; else echo 0; fi
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
declare -A rps_all per_cpu_all p99_all
for r in $(seq "$rounds"); do
  line="round $r:"
  for t in "${targets[@]}"; do
    c0=$(cpu_secs "$t")
    out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency "${url[$t]}")
    c1=$(cpu_secs "$t")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub("us","",v); v/=1000} else if (v ~ /ms$/) {sub("ms","",v)} else if (v ~ /s$/) {sub("s","",v); v*=1000}; print v}' <<<"$out")
    rps_all[$t]+="$rps "
    p99_all[$t]+="$p99 "
    if [ "$t" != direct ]; then
      per_cpu_all[$t]+="$(awk -v q="$rps" -v s="$secs" -v a="$c0" -v b="$c1" 'BEGIN {print (b>a) ? q*s/(b-a) : 0}') "
    fi
    line+=" $t ${rps}rps"
  done
  echo "$line"
done
d=$(tr ' ' '\n' <<<"${rps_all[direct]}" | grep . | median)
printf '\n%-11s %12s %9s %10s %16s\n' target "median rps" "vs direct" "p99 (ms)" "req/proxy-CPU-s"
for t in "${targets[@]}"; do
  m=$(tr ' ' '\n' <<<"${rps_all[$t]}" | grep . | median)
  l=$(tr ' ' '\n' <<<"${p99_all[$t]}" | grep . | median)
  c="-"
  [ -n "${per_cpu_all[$t]:-}" ] && c=$(tr ' ' '\n' <<<"${per_cpu_all[$t]}" | grep . | median | awk '{printf "%.0f", $1}')
  printf '%-11s %12.0f %9.2f %10.2f %16s\n' "$t" "$m" "$(awk -v m="$m" -v d="$d" 'BEGIN {print m/d}')" "$l" "$c"
done
echo "(wrk -t1 -c$conns -d${secs}s, $rounds rounds, one proxy worker each, loopback, $(nproc) cores)"
