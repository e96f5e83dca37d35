#!/usr/bin/env bash
# Installs what the build and the tests need on a machine that has only the Rust toolchain:
# cmake and a C compiler (pingora's zlib-ng build), redis-server (chat-node tests), and the
# pinned Node packages of tests/node (socket.io-client interop) when node and npm exist.
# Idempotent; uses apt-get (Debian) and needs root or sudo when something is missing.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The official socket.io-client for the interop tests, exactly as tests/node/package-lock.json
# pins it. Without Node those tests print a skip.
node_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/node"
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
  && [ ! -d "$node_dir/node_modules" ]; then
  echo "installing: tests/node (npm ci)"
  npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error >/dev/null
fi
