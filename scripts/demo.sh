#!/usr/bin/env bash
# Runs the proxy in front of three echo backends until Ctrl-C: HTTPS on 127.0.0.1:8443
# (dev CA in certs/), HTTP on 127.0.0.1:8080 redirecting to it, admin on 127.0.0.1:9900.
# The chat stack is `cargo run --release --bin switchyard -- up`; this echo-backend variant
# is for watching the balancing with curl: `curl --cacert certs/ca.pem
# https://localhost:8443/id` answers with the backend's id.
#
#   scripts/demo.sh [strategy=least_conn]
set -euo pipefail
cd "$(dirname "$0")/.."
strategy=${1:-least_conn}
scripts/install-deps.sh
cargo build --release --bin proxy --bin echo-backend
bin=target/release
[ -f certs/localhost-key.pem ] || $bin/proxy gen-cert --out certs/

pids=()
cleanup() {
  trap - INT TERM EXIT
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

for i in 1 2 3; do
  $bin/echo-backend --listen 127.0.0.1:900$i --id node-$i 2>&1 | sed -u "s/^/[node-$i] /" &
  pids+=($!)
done
token=${SWITCHYARD_ADMIN_TOKEN:-dev-token}
cat > target/demo-proxy.toml <<EOF
[admin]
listen = "127.0.0.1:9900"
token = "$token"

[[listeners]]
listen = "127.0.0.1:8080"
redirect_https_port = 8443

[[listeners]]
listen = "127.0.0.1:8443"
tls = { cert = "certs/localhost.pem", key = "certs/localhost-key.pem" }

[upstreams.demo]
strategy = "$strategy"
backends = [{ addr = "127.0.0.1:9001", id = "node-1" }, { addr = "127.0.0.1:9002", id = "node-2" }, { addr = "127.0.0.1:9003", id = "node-3" }]

[upstreams.demo.health]
kind = "http"
path = "/healthz"
interval = "1s"
EOF
if [ "$strategy" = sticky_cookie ]; then
  printf '\n[upstreams.demo.sticky]\nkey = "demo-sticky-key-not-for-production"\n' >> target/demo-proxy.toml
fi
$bin/proxy --config target/demo-proxy.toml 2>&1 | sed -u 's/^/[proxy] /' &
pids+=($!)
cat <<EOF

  Switchyard demo ($strategy) — Ctrl-C stops everything.
  App:    https://localhost:8443/id   (trust certs/ca.pem, see README)
  Admin:  http://127.0.0.1:9900/status   (mutations: Authorization: Bearer $token)

EOF
wait
