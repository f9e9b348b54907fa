#!/usr/bin/env bash
# Tear down the QuorumKV Docker Compose cluster (compose.yaml at the repository root).
#
#   scripts/docker-down.sh            remove the containers and the network; data and
#                                     certificates stay in the named volumes (the next
#                                     scripts/docker-up.sh resumes them)
#   scripts/docker-down.sh --volumes  also delete the volumes (data and certificates)
#
# Environment: QKV_PROJECT (Compose project, default quorumkv). A no-op when nothing runs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=docker/lib.sh source-path=SCRIPTDIR/..
. "$ROOT/docker/lib.sh"

flags=(--remove-orphans --timeout 30)
for arg in "$@"; do
  case $arg in
    --volumes | -v) flags+=(--volumes) ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: scripts/docker-down.sh [--volumes]" >&2; exit 2 ;;
  esac
done

find_compose || die "neither docker-compose nor the docker compose plugin is installed"
compose down "${flags[@]}"
