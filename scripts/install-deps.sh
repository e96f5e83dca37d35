#!/usr/bin/env bash
# Installs what the build and the tests need on a machine that has only the Rust toolchain:
# cmake and a C compiler (pingora's zlib-ng build), redis-server (chat-node tests), Node.js
# and npm (the official socket.io-client in the interop tests), Chromium and chromedriver
# (the browser tests), nginx and HAProxy (the benchmark's comparison targets, also in its
# smoke test), a font for its charts and unshare and mount (the dns_refresh test gives its proxy
# an /etc/hosts of its own), then the pinned Node packages of tests/node and
# bench/node.
# Idempotent; uses apt-get (Debian) and needs root or sudo when something is missing.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v mount >/dev/null 2>&1 || need+=(mount)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The official socket.io-client for the interop tests, exactly as tests/node/package-lock.json
# pins it.
node_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/node"
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
  && [ ! -d "$node_dir/node_modules" ]; then
  echo "installing: tests/node (npm ci)"
  npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error >/dev/null
fi

bench_node="$(cd "$(dirname "$0")/.." && pwd)/bench/node"
if [ ! -d "$bench_node/node_modules" ]; then
  echo "installing: bench/node (npm ci)"
  npm ci --prefix "$bench_node" --no-audit --no-fund --loglevel=error >/dev/null
fi
