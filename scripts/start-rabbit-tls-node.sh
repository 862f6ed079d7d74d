#!/bin/bash
# Start (or stop) a private RabbitMQ node with an AMQPS listener, beside the system node,
# for the gateway's amqps:// tests (tests/gateway/tls.rs).
#
#   scripts/start-rabbit-tls-node.sh DIR        start; DIR holds ca.pem, server.pem, server.key
#   scripts/start-rabbit-tls-node.sh stop DIR   stop the node started from DIR
#
# Node tlsnode@<hostname>: AMQP 127.0.0.1:27371, AMQPS 127.0.0.1:27372 (verify_peer,
# client certificate required, signed by ca.pem), distribution port 27373; no plugins.
# Idempotent: a node left running from DIR is stopped first, and its data wiped.
# Prints the beam.smp PID. Needs root (it runs the node as the rabbitmq user, like
# Debian's service) and Debian's rabbitmq-server (scripts/ensure-rabbitmq.sh installs it).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
[ "$(id -u)" = 0 ] || exec sudo -n "$0" "$@"

listening() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# PIDs of nodes started from DIR, found by their environment (not the pid file, which a
# crashed test may have removed, nor the command line, which does not name the node).
node_pids() {
  for env in /proc/[0-9]*/environ; do
    if { tr '\0' '\n' < "$env"; } 2>/dev/null | grep -qxF "RABBITMQ_PID_FILE=$1/pid"; then
      p=${env#/proc/}
      echo "${p%/environ}"
    fi
  done
}

stop_node() {
  d=$1
  for pid in $(node_pids "$d"); do
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -f "$d/pid"
}

if [ "${1:-}" = stop ]; then
  stop_node "${2:?usage: $0 stop DIR}"
  exit 0
fi

D=${1:?usage: $0 DIR}
for f in ca.pem server.pem server.key; do
  [ -s "$D/$f" ] || { echo "error: $D/$f is missing" >&2; exit 1; }
done
stop_node "$D"
# A node still bound to our ports (e.g. from another DIR) would make this one fail.
if listening 27372; then
  echo "error: port 27372 is taken; stop the node using it" >&2
  exit 1
fi
rm -rf "$D/mnesia" "$D/log"
mkdir -p "$D/mnesia" "$D/log"
cat > "$D/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:27371
listeners.ssl.default = 127.0.0.1:27372
ssl_options.cacertfile = $D/ca.pem
ssl_options.certfile = $D/server.pem
ssl_options.keyfile = $D/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
loopback_users = none
EOF
echo '[].' > "$D/enabled_plugins"
chown -R rabbitmq:rabbitmq "$D"
chmod 0700 "$D"
setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/rabbitmq \
  USER=rabbitmq LANG=C.UTF-8 \
  RABBITMQ_NODENAME=tlsnode@$(hostname -s) RABBITMQ_NODE_PORT=27371 RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
  RABBITMQ_DIST_PORT=27373 RABBITMQ_CONFIG_FILE="$D/rabbitmq.conf" \
  RABBITMQ_ENABLED_PLUGINS_FILE="$D/enabled_plugins" RABBITMQ_MNESIA_BASE="$D/mnesia" \
  RABBITMQ_LOG_BASE="$D/log" RABBITMQ_PID_FILE="$D/pid" \
  RABBITMQ_PLUGINS_EXPAND_DIR="$D/plugins-expand" \
  rabbitmq-server -detached
for _ in $(seq 120); do
  if [ -s "$D/pid" ] && listening 27372; then
    echo "tlsnode up, beam.smp pid $(cat "$D/pid")"
    exit 0
  fi
  sleep 0.5
done
echo "tlsnode did not come up; see $D/log" >&2
tail -n 30 "$D"/log/*.log >&2 2>/dev/null || true
stop_node "$D"
exit 1
