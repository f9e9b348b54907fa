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

# Debian packages some tests need (strace, chromium), installed when missing.
scripts/install-test-deps.sh

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
