#!/usr/bin/env bash
# Runs QuorumKV's whole test suite: unit, property, cluster (real gRPC over mutual TLS on
# loopback) and end-to-end tests of the real binaries, then validates the Kubernetes manifests
# offline, then runs the Docker Compose cluster test (built offline from static binaries;
# skipped with a message where no Docker engine runs). Needs the Rust toolchain and python3 (the manifest validators come from PyPI into
# target/k8s-venv); cargo-nextest is used when installed (it runs each test in its own
# process with a time limit, see .config/nextest.toml), `cargo test` otherwise. The
# dashboard's browser test needs Chromium: when none is installed, Debian's `chromium` package
# is installed with apt-get (as root, or with passwordless sudo); without it that test is
# skipped, except under CI=true, where it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

ensure_chromium() {
  local b sudo=()
  [ -n "${QKV_CHROMIUM:-}" ] && return 0
  for b in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$b" >/dev/null 2>&1 && return 0
  done
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "no Chromium and no apt-get: install Chromium (or set QKV_CHROMIUM) for the dashboard's browser test" >&2
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      echo "no Chromium, and apt-get needs root: run 'apt-get install chromium' for the dashboard's browser test" >&2
      return 0
    fi
  fi
  echo "installing Chromium (apt-get install chromium) for the dashboard's browser test..." >&2
  ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
    echo "apt-get install chromium failed" >&2
}

ensure_chromium

profile=default
if [ "${CI:-}" = "true" ]; then profile=ci; fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile "$profile" "$@"
  # nextest does not run doc tests.
  cargo test --workspace --doc --quiet
else
  echo "cargo-nextest not found; running cargo test" >&2
  cargo test --workspace "$@"
fi

scripts/k8s-validate.sh
scripts/docker-test.sh
