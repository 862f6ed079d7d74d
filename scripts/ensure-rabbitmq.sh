#!/bin/bash
# Ensure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest).
# Idempotent: exits at once when the port already answers. Otherwise installs Debian's
# rabbitmq-server when missing, starts it with `rabbitmq-server -detached` (no systemd
# on these machines) and waits for `rabbitmqctl await_startup` and the port.
#   env: RABBITMQ_WAIT_SECONDS (default 90)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib-apt.sh"
HOST=127.0.0.1 PORT=5672
WAIT=${RABBITMQ_WAIT_SECONDS:-90}

port_up() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null; }

if port_up; then
  echo "rabbitmq: already answering on $HOST:$PORT (nothing to do)"
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  echo "rabbitmq: rabbitmq-server missing -> installing Debian package 'rabbitmq-server'"
  # Package scripts may try to start the service; without systemd that is harmless.
  apt_install rabbitmq-server || { echo "error: could not install Debian package 'rabbitmq-server'" >&2; exit 1; }
fi
export PATH="$PATH:/usr/sbin:/sbin"

if port_up; then   # the package's postinst may have started it
  echo "rabbitmq: answering on $HOST:$PORT after install"
  exit 0
fi

if as_root rabbitmqctl -q ping >/dev/null 2>&1; then
  echo "rabbitmq: node is running but $HOST:$PORT is not answering yet -> waiting"
else
  echo "rabbitmq: starting with 'rabbitmq-server -detached'"
  as_root rabbitmq-server -detached || { echo "error: 'rabbitmq-server -detached' failed" >&2; exit 1; }
fi

echo "rabbitmq: waiting up to ${WAIT}s (rabbitmqctl await_startup + port $PORT)"
if ! as_root timeout "$WAIT" rabbitmqctl -q await_startup --timeout "$WAIT" >/dev/null 2>&1; then
  echo "rabbitmq: await_startup did not succeed; polling the port instead" >&2
fi
deadline=$((SECONDS + WAIT))
until port_up; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "error: RabbitMQ is not answering on $HOST:$PORT after ${WAIT}s; see /var/log/rabbitmq/" >&2
    exit 1
  fi
  sleep 1
done
echo "rabbitmq: up on $HOST:$PORT"
