#!/bin/sh
# Ensure the real `kubectl` is on PATH: the end-to-end operator test (tests/e2e_operator.rs) and
# the API emulator's kubectl tests drive it. Idempotent; fast when present.
# When missing, installs the official binary from dl.k8s.io (sha256 verified) into
# /usr/local/bin (as root or with passwordless sudo), else ~/.local/bin.
# env: KUBECTL_VERSION (default v1.33.1)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib-apt.sh"
if command -v kubectl >/dev/null 2>&1; then
  echo "kubectl: $(kubectl version --client 2>/dev/null | head -1) at $(command -v kubectl)"
  exit 0
fi
V=${KUBECTL_VERSION:-v1.33.1}
case "$(uname -m)" in
  x86_64|amd64) A=amd64 ;;
  aarch64|arm64) A=arm64 ;;
  *) echo "error: no kubectl download for architecture $(uname -m)" >&2; exit 1 ;;
esac
URL="https://dl.k8s.io/release/$V/bin/linux/$A/kubectl"
if command -v curl >/dev/null 2>&1; then
  fetch() { curl -fsSL --retry 3 -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
  fetch() { wget -q -O "$2" "$1"; }
else
  echo "error: kubectl is missing and neither curl nor wget is installed" >&2; exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "kubectl: not found -> downloading $URL"
fetch "$URL" "$tmp/kubectl" || { echo "error: download of $URL failed" >&2; exit 1; }
fetch "$URL.sha256" "$tmp/kubectl.sha256" || { echo "error: download of $URL.sha256 failed" >&2; exit 1; }
echo "$(cat "$tmp/kubectl.sha256")  $tmp/kubectl" | sha256sum -c - >/dev/null \
  || { echo "error: kubectl checksum mismatch" >&2; exit 1; }
chmod 0755 "$tmp/kubectl"
if as_root install -m 0755 "$tmp/kubectl" /usr/local/bin/kubectl 2>/dev/null; then
  dest=/usr/local/bin/kubectl
else
  mkdir -p "$HOME/.local/bin"
  install -m 0755 "$tmp/kubectl" "$HOME/.local/bin/kubectl"
  dest="$HOME/.local/bin/kubectl"
  case ":$PATH:" in
    *":$HOME/.local/bin:"*) ;;
    *) echo "warning: $HOME/.local/bin is not on PATH; add it so the tests find kubectl" >&2 ;;
  esac
fi
echo "kubectl: installed $("$dest" version --client 2>/dev/null | head -1) at $dest"
