#!/usr/bin/env bash
# The test command: installs missing system packages, builds every binary the end-to-end
# tests start as real processes, then runs all tests of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins
cargo test --workspace "$@"
