#!/usr/bin/env bash
# The full run behind bench/RESULTS.md: every scenario with medians over several runs,
# one proxy worker each, into bench/results/full-<date>/<scenario>/; the charts and reports
# are then copied to bench/report/ (committed; bench/results/ is not).
#
#   bench/run-full.sh [bench-binary]
# Needs release builds: cargo build --release -p bench -p proxy -p chat-node, and
# npm ci --prefix bench/node (the Node.js reference of `chat`).
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${1:-target/release/bench}
dir=$(dirname "$bench")
chat=${CHAT_NODE_BIN:-$dir/chat-node}
[ -x "$chat" ] || chat=target/debug/chat-node
out=bench/results/full-$(date -u +%Y%m%d-%H%M)
common=(--quiet --proxy-bin "${PROXY_BIN:-$dir/proxy}")
failed=()
# Ctrl-C (which reaches bench too: it writes its partial report and exits 1), SIGTERM or
# SIGHUP stop the whole run once the scenario in progress has ended, and its reports are
# copied: without the trap, bash took bench's exit 1 for a failed scenario and went on
# with the next one, so that stopping the run took a Ctrl-C per scenario.
stopped=
trap 'stopped=1' INT TERM HUP
# run <folder> <scenario> [options]. A scenario that fails does not stop the others, nor
# the copy of their reports (and of its own partial report) below; the script fails at the
# end, naming it. Nothing runs once the run is stopped.
run() {
  local d=$1 s=$2; shift 2
  [ -z "$stopped" ] || return 0
  echo "== $s $*"
  "$bench" "$s" "${common[@]}" --out "$out/$d" "$@" || { failed+=("$d"); return 1; }
}
run http http --duration 5s --runs 3 --rates 5000 || true
run ws-echo ws-echo --duration 5s --runs 3 || true
run ws-hold ws-hold --runs 2 || true
run hetero hetero --duration 5s --runs 3 || true
run recover recover --runs 3 || true
run failover failover --duration 10s --runs 2 || true
run sticky sticky --connections 100 --runs 3 || true
run polling polling --connections 20 --runs 1 --chat-node-bin "$chat" || true
run chat chat --connections 60 --rooms 6 --rate 5 --duration 10s --runs 3 --chat-node-bin "$chat" || true
run chat-30 chat --connections 60 --rooms 6 --rate 30 --duration 10s --runs 3 --chat-node-bin "$chat" || true
# At equal CPU: each cluster's nodes share 0.4 CPU (then nodes + redis-server 0.5), the load
# rises until p99 > 100 ms (needs root for the cgroup; skipped with a message otherwise).
# Only bench's refusal of the cgroup, before anything is measured, is a skip: any other
# failure (a crash mid-run, a lost message) is one, reported as the others are.
mkdir -p "$out"
if ! run chat-cpu chat --connections 60 --rooms 6 --rate 8 --cpu-limit 0.4 --duration 6s --runs 3 \
  --chat-node-bin "$chat" 2>"$out/chat-cpu.stderr"; then
  cat "$out/chat-cpu.stderr" >&2
  if [ ! -e "$out/chat-cpu/results.json" ] && grep -q -- 'cgroup' "$out/chat-cpu.stderr"; then
    echo "chat-cpu skipped: --cpu-limit needs a writable cgroup cpu controller"
    unset 'failed[-1]'
  fi
else
  cat "$out/chat-cpu.stderr" >&2
  run chat-cpu-redis chat --connections 60 --rooms 6 --rate 8 --cpu-limit 0.5 --limit-redis \
    --duration 6s --runs 3 --chat-node-bin "$chat" || true
fi
# The headline comparison once more at the end: Switchyard, nginx and HAProxy only.
run http-repeat http --duration 5s --runs 5 --rates 5000 \
  --targets direct,switchyard:round_robin,nginx:round_robin,haproxy:round_robin || true
mkdir -p bench/report
for d in "$out"/*/; do
  n=$(basename "$d"); mkdir -p "bench/report/$n"
  cp "$d"/report.md "$d"/results.json "$d"/*.svg "bench/report/$n/" 2>/dev/null || true
  # The generated proxy configs, without nginx's logs and pid files.
  # (A scenario refused before it started, chat-cpu without a cgroup, has none.)
  [ -d "$d/configs" ] || continue
  (cd "$d" && find configs -type f \( -name '*.toml' -o -name '*.cfg' -o -name nginx.conf \)) |
    while read -r f; do mkdir -p "bench/report/$n/$(dirname "$f")"; cp "$d/$f" "bench/report/$n/$f"; done
done
echo "results: $out (copied to bench/report/)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]} (their partial reports, if any, were copied too)" >&2
fi
if [ -n "$stopped" ]; then
  echo "stopped by a signal: the scenarios after the one in progress were not run" >&2
  exit 130
fi
[ ${#failed[@]} -eq 0 ]
