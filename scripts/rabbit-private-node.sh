#!/bin/sh
# A private RabbitMQ node (Debian's rabbitmq-server package) for tests that stop and start
# the broker, beside (never instead of) the system node on 5672. No plugins.
#
#   scripts/rabbit-private-node.sh start NAME DIR AMQP_PORT DIST_PORT   prints the beam.smp pid
#   scripts/rabbit-private-node.sh stop  DIR    clean shutdown (SIGTERM), waits until gone
#   scripts/rabbit-private-node.sh kill  DIR    kill -9 of beam.smp (crash), waits until gone
#
# DIR keeps the node's data between stop and start (durable queues survive), delete it to
# start fresh. As root the node runs as user `rabbitmq` with a 20000 file-descriptor limit
# (prlimit + setpriv: `su` resets the limit through PAM); otherwise as the current user,
# with its own Erlang cookie in DIR.
set -eu
CMD=${1:?usage: $0 start NAME DIR AMQP_PORT DIST_PORT | stop DIR | kill DIR}

pid_of() { [ -s "$1/pid" ] && cat "$1/pid" || true; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
wait_gone() {
  for _ in $(seq 300); do alive "$1" || return 0; sleep 0.1; done
  echo "node $1 still running" >&2; return 1
}

case "$CMD" in
start)
  NAME=${2:?NAME}; D=${3:?DIR}; AMQP=${4:?AMQP_PORT}; DIST=${5:?DIST_PORT}
  if alive "$(pid_of "$D")"; then pid_of "$D"; echo; exit 0; fi
  mkdir -p "$D/mnesia" "$D/log"
  rm -f "$D/pid"
  cat > "$D/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$AMQP
loopback_users = none
EOF
  echo '[].' > "$D/enabled_plugins"
  SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
  [ -x "$SERVER" ] || SERVER=$(command -v rabbitmq-server)
  ENVS="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
    RABBITMQ_NODENAME=$NAME@$(hostname -s) RABBITMQ_NODE_PORT=$AMQP RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    RABBITMQ_DIST_PORT=$DIST RABBITMQ_CONFIG_FILE=$D/rabbitmq.conf
    RABBITMQ_ENABLED_PLUGINS_FILE=$D/enabled_plugins RABBITMQ_MNESIA_BASE=$D/mnesia
    RABBITMQ_LOG_BASE=$D/log RABBITMQ_PID_FILE=$D/pid RABBITMQ_PLUGINS_EXPAND_DIR=$D/plugins-expand"
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq:rabbitmq "$D"
    # shellcheck disable=SC2086
    prlimit --nofile=20000:20000 -- setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
      env -i HOME=/var/lib/rabbitmq USER=rabbitmq $ENVS "$SERVER" -detached >"$D/log/startup.log" 2>&1
  else
    # shellcheck disable=SC2086
    env -i HOME="$D" USER="$(id -un)" $ENVS "$SERVER" -detached >"$D/log/startup.log" 2>&1
  fi
  for _ in $(seq 120); do
    if [ -s "$D/pid" ] && ss -ltn "sport = :$AMQP" | grep -q LISTEN; then
      echo "$(cat "$D/pid")"; exit 0
    fi
    sleep 0.5
  done
  echo "node $NAME did not come up on $AMQP; see $D/log" >&2
  exit 1
  ;;
stop|kill)
  D=${2:?DIR}
  PID=$(pid_of "$D")
  alive "$PID" || exit 0
  if [ "$CMD" = kill ]; then kill -9 "$PID"; else kill -TERM "$PID"; fi
  wait_gone "$PID"
  ;;
*)
  echo "unknown command $CMD" >&2; exit 2 ;;
esac
