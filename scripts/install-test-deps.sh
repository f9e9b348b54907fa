#!/usr/bin/env bash
# Installs the Debian packages the test suite needs beyond the Rust toolchain, when missing:
#   strace   the durability test traces a member's syscalls (crates/shardkv/tests/durability.rs)
#   chromium the dashboard's browser test (bin/tests/dashboard_browser.rs; QKV_CHROMIUM names
#            another browser binary)
# Needs root (or sudo) only when something is missing; prints what it could not install.
set -euo pipefail

missing=()
command -v strace >/dev/null 2>&1 || missing+=(strace)
if [ -z "${QKV_CHROMIUM:-}" ]; then
  found=""
  for b in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$b" >/dev/null 2>&1 && found=$b && break
  done
  [ -n "$found" ] || missing+=(chromium)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "install-test-deps: cannot install ${missing[*]} (not root, no sudo); tests that need them will say so" >&2
  exit 0
fi
echo "install-test-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
  { "${as_root[@]}" apt-get update -q >/dev/null && "${as_root[@]}" apt-get install -y -q "${missing[@]}" >/dev/null; }
