#!/usr/bin/env bash
# The demo (README): RabbitMQ (installed and started when missing), then `stompgate demo`:
# the founding page at http://127.0.0.1:15674/demo/ updating live through the gateway.
#   scripts/demo.sh [demo flags, e.g. --interval-secs 1]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-rabbitmq.sh
exec cargo run --release --quiet -- demo "$@"
