#!/usr/bin/env bash
# The project's test command (README): installs/starts what the tests need, then runs every
# test against the real RabbitMQ and headless Chromium.
#   scripts/test.sh [extra cargo-nextest / cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-test-deps.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
  # Sharing must not change what clients observe: the gateway and browser suites again with
  # every subscription on its own queue.
  STOMPGATE_TEST_FANOUT=false cargo nextest run --no-fail-fast --test gateway --test clients "$@"
  # nextest does not run doctests.
  cargo test --doc --quiet
else
  cargo test --no-fail-fast "$@"
  STOMPGATE_TEST_FANOUT=false cargo test --no-fail-fast --test gateway --test clients "$@"
fi
if [ -x scripts/check-packaging.sh ]; then
  # The binary the tests were built with (same features; see check-packaging.sh).
  STOMPGATE_BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/stompgate" \
    scripts/check-packaging.sh
fi
