#!/bin/bash
# Everything the browser and Python tests need, idempotent and fast when already done:
#   1. RabbitMQ on 127.0.0.1:5672        (scripts/ensure-rabbitmq.sh)
#   2. Debian Chromium /usr/bin/chromium (scripts/ensure-chromium.sh)
#   2b. kubectl on PATH (scripts/ensure-kubectl.sh; the e2e and API emulator tests drive it)
#   2c. promtool on PATH (scripts/ensure-promtool.sh; the alert rule unit tests run it)
#   3. npm ci in tests/browser           (skipped when node_modules matches package.json + lockfile)
#   4. pip install tests/python/requirements.txt into the user site of `python3` (or the active
#      virtualenv), skipped when the pinned versions are already importable.
# env: STOMPGATE_PYTHON (default python3), SKIP_RABBITMQ=1, SKIP_CHROMIUM=1, SKIP_KUBECTL=1,
#      SKIP_PROMTOOL=1
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=${STOMPGATE_PYTHON:-python3}
T0=$(date +%s%N)
die() { echo "ensure-test-deps: ERROR: $*" >&2; exit 1; }
step() { echo "== $*"; }

step "rabbitmq"
if [ "${SKIP_RABBITMQ:-0}" = 1 ]; then echo "skipped (SKIP_RABBITMQ=1)"; else
  "$HERE/ensure-rabbitmq.sh" || die "RabbitMQ is not available on 127.0.0.1:5672"; fi

step "chromium"
if [ "${SKIP_CHROMIUM:-0}" = 1 ]; then echo "skipped (SKIP_CHROMIUM=1)"; else
  "$HERE/ensure-chromium.sh" || die "Chromium is not available at /usr/bin/chromium"; fi

step "kubectl"
if [ "${SKIP_KUBECTL:-0}" = 1 ]; then echo "skipped (SKIP_KUBECTL=1): the kubectl tests will be skipped"; else
  "$HERE/ensure-kubectl.sh" || die "kubectl is not available (set SKIP_KUBECTL=1 to skip the kubectl tests)"; fi

step "promtool"
if [ "${SKIP_PROMTOOL:-0}" = 1 ]; then echo "skipped (SKIP_PROMTOOL=1): the alert rule tests will fail"; else
  "$HERE/ensure-promtool.sh" || die "promtool is not available (Debian package 'prometheus')"; fi

step "npm (tests/browser)"
command -v node >/dev/null || die "node not found (Node.js 20+ expected)"
command -v npm >/dev/null || die "npm not found"
B="$ROOT/tests/browser"
[ -f "$B/package-lock.json" ] || die "$B/package-lock.json missing"
want=$(cat "$B/package.json" "$B/package-lock.json" <(node --version) | sha256sum | cut -d' ' -f1)
stamp="$B/node_modules/.stompgate-deps.sha256"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$B/node_modules/playwright-core" ]; then
  echo "node_modules up to date with package-lock.json"
else
  echo "running npm ci"
  # Playwright must never fetch its own browser: we drive Debian's /usr/bin/chromium.
  (cd "$B" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) \
    || die "npm ci failed in $B"
  echo "$want" > "$stamp"
fi
echo "node $(node --version), playwright-core $(node -p "require('$B/node_modules/playwright-core/package.json').version")"

step "python ($PY)"
command -v "$PY" >/dev/null || die "$PY not found"
REQ="$ROOT/tests/python/requirements.txt"
check_py() {
  "$PY" - "$REQ" <<'PYEOF'
import sys, re
from importlib.metadata import version, PackageNotFoundError
bad = []
for line in open(sys.argv[1]):
    line = line.split('#', 1)[0].strip()
    if not line:
        continue
    name, want = re.split(r'==', line, maxsplit=1)
    try:
        have = version(name.strip())
    except PackageNotFoundError:
        have = None
    if have != want.strip():
        bad.append(f"{name.strip()} (have {have}, want {want.strip()})")
if bad:
    print("missing or wrong: " + ", ".join(bad))
    sys.exit(1)
import pika, stomp, websockets  # importable by this interpreter
PYEOF
}
if msg=$(check_py 2>&1); then
  echo "requirements already satisfied"
else
  echo "$msg"
  "$PY" -m pip --version >/dev/null 2>&1 || die "'$PY -m pip' is not available"
  if "$PY" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)'; then
    where=(); echo "pip install into the virtualenv of $PY"
  else
    where=(--user); echo "pip install --user (user site of $PY)"
  fi
  pipargs=(install -q --disable-pip-version-check --no-warn-script-location "${where[@]}" -r "$REQ")
  if ! out=$("$PY" -m pip "${pipargs[@]}" 2>&1); then
    if grep -q externally-managed-environment <<<"$out"; then
      # PEP 668 (Debian's own python3): a --user install does not touch system packages.
      "$PY" -m pip "${pipargs[@]}" --break-system-packages || die "pip install failed"
    else
      echo "$out" >&2; die "pip install -r $REQ failed"
    fi
  fi
  msg=$(check_py 2>&1) || die "after pip install: $msg"
fi
"$PY" -c 'import pika, stomp, sys, websockets; print("python", sys.version.split()[0], "pika", pika.__version__, "stomp.py", stomp.__version__, "websockets", websockets.__version__)'
ms=$(( ($(date +%s%N) - T0) / 1000000 ))
echo "ensure-test-deps: OK in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
