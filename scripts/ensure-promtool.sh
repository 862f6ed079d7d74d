#!/bin/sh
# Ensure `promtool` is on PATH: tests/observability.rs runs `promtool test rules` on the
# shipped alert rules. Debian's `prometheus` package carries it; installed with apt when
# missing (as root or with passwordless sudo). Without systemd its service is not started.
# Idempotent; fast when present.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib-apt.sh"
if command -v promtool >/dev/null 2>&1; then
  echo "promtool: already installed"
else
  echo "promtool: missing -> installing Debian package 'prometheus'"
  apt_install prometheus || { echo "error: could not install Debian package 'prometheus'" >&2; exit 1; }
  command -v promtool >/dev/null 2>&1 || { echo "error: 'prometheus' installed but promtool is not on PATH" >&2; exit 1; }
fi
v=$(promtool --version 2>&1 | head -1) || { echo "error: 'promtool --version' failed" >&2; exit 1; }
echo "promtool: $v"
