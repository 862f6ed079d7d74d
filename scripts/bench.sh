#!/usr/bin/env bash
# Side-by-side benchmark on this machine: RabbitMQ's own Web-STOMP vs stompgate, measured by
# the same client (`stompgate bench`), both in front of the same private RabbitMQ node.
#
#   scripts/bench.sh                                   # the whole matrix, REPEAT=3
#   SCENARIOS=fanout,echo SYSTEMS=gateway scripts/bench.sh
#   QUICK=1 REPEAT=1 scripts/bench.sh                  # smoke run: small N, short runs
#   scripts/plot-bench.py bench-results/<timestamp>    # Markdown table + SVG
#
# Starts (and stops on exit) a private RabbitMQ node `benchws@<host>` with Web-STOMP and
# 20000 file descriptors (AMQP 127.0.0.1:5674, Web-STOMP ws://127.0.0.1:15676/ws, management
# 15673, distribution 25674) and `stompgate gateway` (release build) on 127.0.0.1:15674
# against it. Writes one JSON file per run to bench-results/<timestamp>/.
#
# Environment:
#   SCENARIOS   comma list of fanout,latency,echo,connections,queues (default: all)
#   SYSTEMS     comma list of webstomp,gateway (default: both)
#   REPEAT      runs per cell (default 3)
#   QUICK=1     smoke sizes: N=1,10,50; 2 s runs; 200/500 sessions
#   DURATION / WARMUP       fanout measurement window / warm-up, seconds (default 10 / 2)
#   LAT_DURATION            paced latency window, seconds (default 20)
#   FANOUT_NS / FANOUT_SIZES / CONN_COUNTS  override the matrix (space separated)
#   CONN_CLIENTS  client profiles of the connections scenario (default: native stompjs7
#                 stompjs2 python sockjs-websocket sockjs-xhr-streaming; the sockjs ones run
#                 against the gateway only: RabbitMQ dropped SockJS in 3.7)
#   GATEWAY_ONLY_NS / GATEWAY_ONLY_CONNS    cells run for the gateway only (10000 / 50000; "" for none)
#   OUT         results directory (default bench-results/<timestamp>)
#   BIN         stompgate binary (default: cargo build --release, then target/release/stompgate)
#   REUSE_NODE=1  use a node already listening on 5674/15676 instead of starting one
#   GATEWAY_ARGS  extra flags for `stompgate gateway`
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
unset RUST_BACKTRACE

SCENARIOS=${SCENARIOS:-fanout,latency,echo,connections,queues}
SYSTEMS=${SYSTEMS:-webstomp,gateway}
REPEAT=${REPEAT:-3}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-2}; WARMUP=${WARMUP:-1}; LAT_DURATION=${LAT_DURATION:-3}
  FANOUT_NS=${FANOUT_NS:-"1 10 50"}; FANOUT_SIZES=${FANOUT_SIZES:-"100 4096"}
  GATEWAY_ONLY_NS=${GATEWAY_ONLY_NS:-""}; CONN_COUNTS=${CONN_COUNTS:-"200 500"}
  GATEWAY_ONLY_CONNS=${GATEWAY_ONLY_CONNS:-""}; ECHO_COUNT=${ECHO_COUNT:-500}
  LATENCY_CELLS=${LATENCY_CELLS:-"50:3 50:300 10:30 1:2000"}; QUEUES_N=${QUEUES_N:-20}
  HOLD=${HOLD:-2}
else
  DURATION=${DURATION:-10}; WARMUP=${WARMUP:-2}; LAT_DURATION=${LAT_DURATION:-20}
  FANOUT_NS=${FANOUT_NS:-"1 100 1000"}; FANOUT_SIZES=${FANOUT_SIZES:-"100 4096"}
  GATEWAY_ONLY_NS=${GATEWAY_ONLY_NS-"10000"}; CONN_COUNTS=${CONN_COUNTS:-"1000 10000"}
  GATEWAY_ONLY_CONNS=${GATEWAY_ONLY_CONNS-"50000"}; ECHO_COUNT=${ECHO_COUNT:-5000}
  LATENCY_CELLS=${LATENCY_CELLS:-"1000:3 1000:300 100:30 1:2000"}; QUEUES_N=${QUEUES_N:-1000}
  HOLD=${HOLD:-5}
fi
# Web-STOMP at N=10000 is tried only when its N=1000 run connected everyone.
WEBSTOMP_TRY_10K=${WEBSTOMP_TRY_10K:-1}
CONN_CLIENTS=${CONN_CLIENTS:-"native stompjs7 stompjs2 python sockjs-websocket sockjs-xhr-streaming"}

NODE_DIR=${NODE_DIR:-/tmp/stompgate-bench-node}
NODE=benchws@$(hostname -s)
AMQP_URL=amqp://guest:guest@127.0.0.1:5674/%2f
WEBSTOMP_URL=ws://127.0.0.1:15676/ws
GATEWAY_LISTEN=127.0.0.1:15674
GATEWAY_URL=ws://$GATEWAY_LISTEN/ws
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-bench-results/$STAMP}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)

has() { case ",$1," in *",$2,"*) return 0 ;; *) return 1 ;; esac; }
log() { echo "[bench.sh $(date +%H:%M:%S)] $*" >&2; }
port_up() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# ---------------------------------------------------------------- build
if [ -z "${BIN:-}" ]; then
  log "cargo build --release"
  cargo build --release --quiet
  BIN=${CARGO_TARGET_DIR:-target}/release/stompgate
fi
[ -x "$BIN" ] || { echo "error: $BIN is not executable" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup
NODE_PID=""; NODE_STARTED=0; GATEWAY_PID=""; BG_PIDS=()
cleanup() {
  local rc=$?
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_gateway
  if [ "$NODE_STARTED" = 1 ] && [ -n "$NODE_PID" ]; then
    log "stopping RabbitMQ node $NODE (beam.smp $NODE_PID)"
    kill "$NODE_PID" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.5; done
  fi
  log "results in $OUT"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- RabbitMQ node
start_node() {
  if port_up 5674 || port_up 15676; then
    if [ "${REUSE_NODE:-0}" = 1 ]; then
      NODE_PID=$(ss -ltnpH 'sport = :5674' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
      log "reusing the node on 5674 (beam.smp $NODE_PID)"
      return
    fi
    echo "error: ports 5674/15676 are in use (another benchws node?); stop it or set REUSE_NODE=1" >&2
    exit 1
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    scripts/ensure-rabbitmq.sh
  fi
  local nofile; nofile=$(ulimit -Hn)
  [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nofile" -gt 20000 ] && nofile=20000
  # Same node as /work/shared/scripts/start-rabbit-node.sh: own config, data and fd limit.
  mkdir -p "$NODE_DIR/mnesia" "$NODE_DIR/log" "$NODE_DIR/plugins-expand"
  cat > "$NODE_DIR/rabbitmq.conf" <<'EOF'
listeners.tcp.default = 127.0.0.1:5674
management.tcp.port = 15673
management.tcp.ip = 127.0.0.1
web_stomp.tcp.port = 15676
web_stomp.tcp.ip = 127.0.0.1
stomp.listeners.tcp = none
EOF
  echo '[rabbitmq_web_stomp,rabbitmq_management].' > "$NODE_DIR/enabled_plugins"
  rm -f "$NODE_DIR/pid"
  chown -R rabbitmq:rabbitmq "$NODE_DIR"
  log "starting RabbitMQ node $NODE (nofile $nofile)"
  prlimit --nofile="$nofile:$nofile" -- setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/rabbitmq \
    USER=rabbitmq LANG=C.UTF-8 \
    RABBITMQ_NODENAME="$NODE" RABBITMQ_NODE_PORT=5674 RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_DIST_PORT=25674 RABBITMQ_CONFIG_FILE="$NODE_DIR/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$NODE_DIR/enabled_plugins" RABBITMQ_MNESIA_BASE="$NODE_DIR/mnesia" \
    RABBITMQ_LOG_BASE="$NODE_DIR/log" RABBITMQ_PID_FILE="$NODE_DIR/pid" \
    RABBITMQ_PLUGINS_EXPAND_DIR="$NODE_DIR/plugins-expand" \
    rabbitmq-server -detached
  NODE_STARTED=1
  for _ in $(seq 90); do
    if [ -s "$NODE_DIR/pid" ] && port_up 15676 && port_up 5674; then
      NODE_PID=$(cat "$NODE_DIR/pid")
      log "node up, beam.smp $NODE_PID"
      return
    fi
    sleep 1
  done
  echo "error: node did not come up; see $NODE_DIR/log" >&2
  exit 1
}

broker_queues() {
  rabbitmqctl -n "$NODE" list_queues -q --no-table-headers name 2>/dev/null | grep -c . || true
}

# ---------------------------------------------------------------- gateway
start_gateway() {
  if port_up "${GATEWAY_LISTEN##*:}"; then
    echo "error: $GATEWAY_LISTEN is in use" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  "$BIN" gateway --listen "$GATEWAY_LISTEN" --amqp-url "$AMQP_URL" \
    --max-connections "${GATEWAY_MAX_CONNECTIONS:-60000}" ${GATEWAY_ARGS:-} \
    >>"$OUT/logs/gateway.log" 2>&1 &
  GATEWAY_PID=$!
  for _ in $(seq 100); do
    if port_up "${GATEWAY_LISTEN##*:}"; then
      # Ready = its own connection to RabbitMQ is up (and counted in "RSS before").
      for _ in $(seq 100); do
        curl -sf "http://$GATEWAY_LISTEN/readyz" >/dev/null 2>&1 && break
        sleep 0.1
      done
      return
    fi
    kill -0 "$GATEWAY_PID" 2>/dev/null || { echo "error: gateway exited; see $OUT/logs/gateway.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "error: gateway did not listen on $GATEWAY_LISTEN" >&2
  exit 1
}

stop_gateway() {
  if [ -n "$GATEWAY_PID" ]; then
    kill "$GATEWAY_PID" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$GATEWAY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$GATEWAY_PID" 2>/dev/null || true
    wait "$GATEWAY_PID" 2>/dev/null || true
    GATEWAY_PID=""
  fi
}

# CPU of the broker, and of the gateway when it is the system measured (fan-out µs/delivery).
cpu_pids() {
  echo "--cpu-pid broker=$NODE_PID"
  if [ "$1" = gateway ]; then echo "--cpu-pid gateway=$GATEWAY_PID"; fi
}

url_of() { if [ "$1" = gateway ]; then echo "$GATEWAY_URL"; else echo "$WEBSTOMP_URL"; fi; }
pid_of() { if [ "$1" = gateway ]; then echo "$GATEWAY_PID"; else echo "$NODE_PID"; fi; }

# run_bench FILE_STEM SYSTEM SCENARIO ARGS... : REPEAT runs (or the run numbers in RUNS), one
# JSON each. Returns non-zero if the last run failed.
run_bench() {
  local stem=$1 system=$2 scenario=$3; shift 3
  local r rc=0
  for r in ${RUNS:-$(seq "$REPEAT")}; do
    local f="$OUT/${stem}__${system}__r$r.json" err="$OUT/logs/${stem}__${system}__r$r.log"
    log "$system $stem (run $r/$REPEAT)"
    if timeout "${CELL_TIMEOUT:-900}" "$BIN" bench "$scenario" --url "$(url_of "$system")" --json "$@" \
        >"$f.tmp" 2>"$err"; then
      mv "$f.tmp" "$f"; rc=0
    else
      rc=$?
      log "  failed (exit $rc), see $err"
      printf '{"scenario":"%s","error":"exit %s","log":"%s"}\n' "$scenario" "$rc" "$err" >"$f"
      rm -f "$f.tmp"
    fi
  done
  return $rc
}

fanout_ok() { # FILE: the run connected every subscriber
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d.get("connect_failed",1)==0 and d.get("subscribers_dropped",1)==0 else 1)' "$1" 2>/dev/null
}

hard_nofile=$(ulimit -Hn); [ "$hard_nofile" = unlimited ] && hard_nofile=1048576
ulimit -n "$hard_nofile"
start_node
has "$SYSTEMS" gateway && start_gateway

cat >"$OUT/meta.json" <<EOF
{"started":"$STAMP","host":"$(hostname -s)","nproc":$(nproc),"kernel":"$(uname -r)",
 "rabbitmq":"$(rabbitmqctl -n "$NODE" -q version 2>/dev/null || echo unknown)",
 "stompgate":"$("$BIN" --version 2>/dev/null | awk '{print $2}')","repeat":$REPEAT,"quick":$QUICK,
 "duration_s":$DURATION,"warmup_s":$WARMUP,"nofile_hard":$hard_nofile}
EOF

for system in webstomp gateway; do
  has "$SYSTEMS" "$system" || continue
  log "=== $system: $(url_of "$system")"

  if has "$SCENARIOS" fanout; then
    ns="$FANOUT_NS"
    if [ "$system" = gateway ] || [ "$WEBSTOMP_TRY_10K" = 1 ]; then ns="$ns $GATEWAY_ONLY_NS"; fi
    for size in $FANOUT_SIZES; do
      for n in $ns; do
        stem="fanout-max_n${n}_s${size}"
        if [ "$system" = webstomp ] && [ "$n" -ge 10000 ] &&
            ! fanout_ok "$OUT/fanout-max_n1000_s${size}__webstomp__r$REPEAT.json"; then
          log "skip webstomp fanout N=$n: its N=1000 run did not keep every subscriber"
          continue
        fi
        # shellcheck disable=SC2046
        run_bench "$stem" "$system" fanout --amqp-url "$AMQP_URL" --subscribers "$n" \
          --size "$size" --rate max --duration "$DURATION" --warmup "$WARMUP" \
          --connect-concurrency 200 $(cpu_pids "$system") || true
      done
    done
  fi

  if has "$SCENARIOS" latency; then
    for cell in $LATENCY_CELLS; do
      n=${cell%%:*}; rate=${cell##*:}
      # shellcheck disable=SC2046
      run_bench "fanout-paced_n${n}_r${rate}_s100" "$system" fanout --amqp-url "$AMQP_URL" \
        --subscribers "$n" --size 100 --rate "$rate" --duration "$LAT_DURATION" --warmup "$WARMUP" \
        --connect-concurrency 200 $(cpu_pids "$system") || true
    done
  fi

  if has "$SCENARIOS" echo; then
    for size in 100 4096; do
      run_bench "echo_s${size}" "$system" echo --size "$size" --count "$ECHO_COUNT" || true
    done
  fi

  if has "$SCENARIOS" connections; then
    counts="$CONN_COUNTS"; [ "$system" = gateway ] && counts="$counts $GATEWAY_ONLY_CONNS"
    for client in $CONN_CLIENTS; do
      case "$client" in sockjs-*) [ "$system" = gateway ] || continue ;; esac
      for c in $counts; do
        stem="connections_c${c}_${client}"
        # Each process (client and server) needs one descriptor per session.
        if [ $((c + 500)) -gt "$hard_nofile" ]; then
          log "skip $system connections C=$c: file limit $hard_nofile < $((c + 500)) (needs CAP_SYS_RESOURCE to raise)"
          printf '{"scenario":"connections","requested":%s,"skipped":"nofile hard limit %s"}\n' "$c" "$hard_nofile" \
            >"$OUT/${stem}__${system}__skipped.json"
          continue
        fi
        ips=127.0.0.1
        [ "$c" -gt 25000 ] && ips=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4
        for r in $(seq "$REPEAT"); do
          # A fresh gateway per run, so RSS before/after is not blurred by earlier runs.
          if [ "$system" = gateway ]; then stop_gateway; start_gateway; fi
          RUNS=$r run_bench "$stem" "$system" connections --count "$c" --client "$client" \
            --connect-concurrency 200 --hold "$HOLD" --pid "$(pid_of "$system")" --pid-tree \
            --source-ips "$ips" || true
        done
      done
    done
  fi

  if has "$SCENARIOS" queues; then
    # Broker queues while N subscribers are connected (one per subscriber for Web-STOMP).
    before=$(broker_queues)
    f="$OUT/queues_n${QUEUES_N}__${system}"
    "$BIN" bench fanout --url "$(url_of "$system")" --amqp-url "$AMQP_URL" --json \
      --subscribers "$QUEUES_N" --rate 10 --warmup 0 --duration 6 --connect-concurrency 200 \
      >"$f.fanout.json" 2>"$OUT/logs/queues_n${QUEUES_N}__${system}.log" &
    bgpid=$!; BG_PIDS+=("$bgpid")
    during=""
    for _ in $(seq 600); do
      if grep -q '^\[bench\] publishing' "$OUT/logs/queues_n${QUEUES_N}__${system}.log"; then
        during=$(broker_queues); break
      fi
      kill -0 "$bgpid" 2>/dev/null || break
      sleep 0.5
    done
    wait "$bgpid" || true
    BG_PIDS=()
    after=$(broker_queues)
    log "$system: broker queues before ${before}, with $QUEUES_N subscribers ${during:-?}, after ${after}"
    printf '{"scenario":"queues","system":"%s","subscribers":%s,"queues_before":%s,"queues_during":%s,"queues_after":%s}\n' \
      "$system" "$QUEUES_N" "${before:-null}" "${during:-null}" "${after:-null}" >"$f.json"
  fi
done
log "done; summary: $OUT/summary.md"
python3 scripts/plot-bench.py "$OUT" >"$OUT/summary.md" 2>>"$OUT/logs/plot.log" ||
  log "plot-bench.py failed (see $OUT/logs/plot.log); run it again by hand"
