#!/bin/sh
# Ensure Debian's Chromium is installed at /usr/bin/chromium (for the browser tests;
# Playwright never downloads its own browser here). Idempotent; fast when present.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib-apt.sh"
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  echo "chromium: already installed"
else
  echo "chromium: $CHROMIUM missing -> installing Debian package 'chromium'"
  apt_install chromium || { echo "error: could not install Debian package 'chromium'" >&2; exit 1; }
  [ -x "$CHROMIUM" ] || { echo "error: 'chromium' installed but $CHROMIUM is missing" >&2; exit 1; }
fi
# --version needs no display; keep it from touching the network or a profile.
v=$("$CHROMIUM" --version 2>/dev/null) || { echo "error: '$CHROMIUM --version' failed" >&2; exit 1; }
echo "chromium: $v"
