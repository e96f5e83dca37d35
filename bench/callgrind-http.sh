#!/usr/bin/env bash
# User-space instructions per proxied HTTP request, counted by valgrind's callgrind: a
# figure that does not move with the load of a shared machine, unlike CPU seconds. It
# complements `bench http` (which measures CPU time, kernel included) when comparing two
# builds of the proxy, or the proxy with nginx: same backends (bench's own), same keep-alive
# load from wrk, only the steady state counted (instrumentation is switched on after a
# warm-up and off before the end).
#
#   bench/callgrind-http.sh switchyard|nginx [connections] [seconds]
#
# Needs valgrind, wrk and curl, and release builds of bench and proxy
# (cargo build --release -p bench -p proxy). Listens on 127.0.0.1:$PORT (default 19100)
# and three ports after it; the output folder is bench/results/callgrind-<target>-c<n>/
# (callgrind_annotate <folder>/callgrind.out.1 shows where the instructions go).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: bench/callgrind-http.sh switchyard|nginx [connections] [seconds]}
conns=${2:-10}
secs=${3:-15}
port=${PORT:-19100}
for tool in valgrind callgrind_control wrk curl; do
  command -v "$tool" >/dev/null || { echo "callgrind-http: $tool is not installed" >&2; exit 1; }
done
bin=target/release
[ -x $bin/bench ] && [ -x $bin/proxy ] || {
  echo "callgrind-http: build first: cargo build --release -p bench -p proxy" >&2; exit 1; }
out=bench/results/callgrind-$target-c$conns
rm -rf "$out" && mkdir -p "$out"
out=$(cd "$out" && pwd)

pids=()
# Waits for the processes to go, so that a next run finds its ports free.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
for i in 1 2 3; do
  $bin/bench backend --listen "127.0.0.1:$((port + i))" --id "b$i" >/dev/null 2>&1 &
  pids+=($!)
done

case $target in
  switchyard)
    cat >"$out/proxy.toml" <<EOF
[server]
threads = 1
grace_period = "0s"
[[listeners]]
listen = "127.0.0.1:$port"
[upstreams.b]
strategy = "round_robin"
backends = [{ addr = "127.0.0.1:$((port + 1))" }, { addr = "127.0.0.1:$((port + 2))" }, { addr = "127.0.0.1:$((port + 3))" }]
[[routes]]
path_prefix = "/"
upstream = "b"
EOF
    cmd=("$PWD/$bin/proxy" --config "$out/proxy.toml")
    ;;
  nginx)
    # One process (no master), as the proxy's one worker thread; the same upstream
    # keep-alive as bench's own nginx configuration.
    cat >"$out/nginx.conf" <<EOF
master_process off;
daemon off;
worker_processes 1;
pid $out/nginx.pid;
error_log $out/error.log crit;
events { worker_connections 1000; }
http {
  access_log off;
  client_body_temp_path $out; proxy_temp_path $out;
  fastcgi_temp_path $out; uwsgi_temp_path $out; scgi_temp_path $out;
  upstream b {
    server 127.0.0.1:$((port + 1)); server 127.0.0.1:$((port + 2)); server 127.0.0.1:$((port + 3));
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$port;
    proxy_http_version 1.1;
    location / { proxy_pass http://b; proxy_set_header Connection ""; }
  }
}
EOF
    cmd=("$(command -v nginx || echo /usr/sbin/nginx)" -p "$out" -c "$out/nginx.conf")
    ;;
  *) echo "callgrind-http: unknown target $target (switchyard, nginx)" >&2; exit 1 ;;
esac

valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.out" \
  "${cmd[@]}" >"$out/server.log" 2>&1 &
vg=$!
pids+=($vg)
url=http://127.0.0.1:$port/
for _ in $(seq 120); do curl -fs -o /dev/null "$url" && break; sleep 0.5; done
curl -fs -o /dev/null "$url" || { echo "callgrind-http: $target did not answer on $url" >&2; exit 1; }
wrk -t1 -c"$conns" -d3s "$url" >/dev/null
callgrind_control -i on $vg >/dev/null
wrk -t1 -c"$conns" -d"${secs}s" "$url" >"$out/wrk.txt"
callgrind_control -i off $vg >/dev/null
callgrind_control -d $vg >/dev/null
requests=$(awk '/requests in/ {print $1}' "$out/wrk.txt")
instructions=$(grep -h '^totals:' "$out"/callgrind.out* | awk '{print $2}' | sort -n | tail -1)
echo "$target, $conns connections: $requests requests, $((instructions / requests)) user-space instructions per request ($out)"
