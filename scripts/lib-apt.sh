# Shared helpers for the ensure-*.sh scripts (sourced, not executed).
# as_root CMD...: run CMD as root (directly when already root, else through sudo -n).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@" || { echo "error: '$*' needs root and 'sudo -n' failed (no passwordless sudo?)" >&2; return 1; }
  else
    echo "error: '$*' needs root; not root and no sudo" >&2
    return 1
  fi
}

# apt_install PKG...: install Debian packages noninteractively. Runs apt-get update
# only when a package has no install candidate or the first install attempt fails
# (stale package lists -> 404 on download).
apt_install() {
  need_update=0
  for p in "$@"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; fi
  done
  if [ "$need_update" -eq 1 ]; then
    echo "apt: no candidate for one of: $* -> apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
  fi
  if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"; then
    return 0
  fi
  if [ "$need_update" -eq 0 ]; then
    echo "apt: install of $* failed; retrying after apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" || return 1
    return 0
  fi
  return 1
}
