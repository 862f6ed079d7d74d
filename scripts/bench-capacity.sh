#!/usr/bin/env bash
# The per-pod check of docs/capacity.md: PROCESSES gateway processes side by side, SESSIONS idle
# sessions each (one `stompgate bench connections` per process, all subscribed to the same
# pattern), then each process's RSS per session and idle CPU.
#
#   scripts/bench-capacity.sh                     # 4 x 4000 @stomp/stompjs 7 sessions
#   PROCESSES=2 SESSIONS=1000 CLIENT=python scripts/bench-capacity.sh
#
# Environment: PROCESSES (4), SESSIONS (4000), CLIENT (stompjs7; any `bench connections
# --client`), AMQP_URL (amqp://guest:guest@127.0.0.1:5672/%2f), SETTLE (10) and HOLD (70)
# seconds, OUT (bench-results/capacity-<timestamp>), BIN (default: cargo build --release).
# Needs scripts/ensure-test-deps.sh for the Node and Python clients.
set -euo pipefail
cd "$(dirname "$0")/.."
PROCESSES=${PROCESSES:-4}
SESSIONS=${SESSIONS:-4000}
CLIENT=${CLIENT:-stompjs7}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
SETTLE=${SETTLE:-10}
HOLD=${HOLD:-70}
OUT=${OUT:-bench-results/capacity-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=${CARGO_TARGET_DIR:-target}/release/stompgate
fi
hard=$(ulimit -Hn); [ "$hard" = unlimited ] && hard=1048576
ulimit -n "$hard"

mapfile -t PORTS < <(python3 -c "
import socket
socks = [socket.socket() for _ in range($PROCESSES)]
for s in socks:
    s.bind(('127.0.0.1', 0))
print('\n'.join(str(s.getsockname()[1]) for s in socks))")
GATEWAYS=(); CLIENTS=()
cleanup() {
  for p in "${CLIENTS[@]}" "${GATEWAYS[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
for i in $(seq 0 $((PROCESSES - 1))); do
  "$BIN" gateway --listen "127.0.0.1:${PORTS[$i]}" --amqp-url "$AMQP_URL" \
    --max-connections $((SESSIONS + 1000)) >"$OUT/gateway$i.log" 2>&1 &
  GATEWAYS+=($!)
done
for i in $(seq 0 $((PROCESSES - 1))); do
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:${PORTS[$i]}/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
done
uptime >"$OUT/uptime-start.txt"
for i in $(seq 0 $((PROCESSES - 1))); do
  "$BIN" bench connections --json --url "ws://127.0.0.1:${PORTS[$i]}/ws" --client "$CLIENT" \
    --count "$SESSIONS" --connect-concurrency 100 --destination /exchange/amq.topic/capacity.news \
    --pid "${GATEWAYS[$i]}" --settle "$SETTLE" --hold "$HOLD" >"$OUT/process$i.json" 2>"$OUT/process$i.err" &
  CLIENTS+=($!)
done
for p in "${CLIENTS[@]}"; do wait "$p" || true; done
CLIENTS=()
uptime >"$OUT/uptime-end.txt"
echo "load: $(cat "$OUT/uptime-start.txt") / $(cat "$OUT/uptime-end.txt")"
python3 - "$OUT" "$PROCESSES" <<'PY'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
print("process sessions failed dropped sessions/s rss_before_kb rss_after_kb kb_per_session idle_cpu_%")
for i in range(n):
    try:
        d = json.load(open(f"{out}/process{i}.json"))
    except ValueError:
        print(i, "failed: see", f"{out}/process{i}.err")
        continue
    print(i, d["sessions"], d["failed"], d["dropped"], d["sessions_per_s"], d["rss_before_kb"],
          d["rss_after_kb"], d["rss_per_session_kb"], d["idle_cpu_percent"])
PY
