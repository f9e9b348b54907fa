#!/usr/bin/env bash
# Build the QuorumKV image and bring the Docker Compose cluster up (compose.yaml at the
# repository root, the file `docker compose up --build` reads): a 3-node controller and two
# 3-node groups, joined and serving. Bounded: fails if the cluster does not serve within
# QKV_WAIT_SECS (default 90) per step.
#
#   scripts/docker-up.sh              public multi-stage build (pulls rust:1-bookworm and
#                                     debian:bookworm-slim), then up
#   scripts/docker-up.sh --prebuilt   offline: static binaries built here, `FROM scratch` image
#   scripts/docker-up.sh --no-build   use the existing image
#
# Environment: QKV_PROJECT (Compose project, default quorumkv), QKV_IMAGE (default
# quorumkv:dev), QKV_WAIT_SECS. Running it again on a running cluster is harmless.
# Tear down with scripts/docker-down.sh [--volumes].
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=docker/lib.sh source-path=SCRIPTDIR/..
. "$ROOT/docker/lib.sh"

mode=public
for arg in "$@"; do
  case $arg in
    --prebuilt) mode=prebuilt ;;
    --no-build) mode=none ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: scripts/docker-up.sh [--prebuilt | --no-build]" >&2; exit 2 ;;
  esac
done

docker info >/dev/null 2>&1 || die "no Docker engine (docker info fails)"
find_compose || die "neither docker-compose nor the docker compose plugin is installed"

case $mode in
  public) build_public_image ;;
  prebuilt) build_static; build_prebuilt_image ;;
  none) docker image inspect "$QKV_IMAGE" >/dev/null 2>&1 || die "no image $QKV_IMAGE (build it first)" ;;
esac

probe=no
image_has_probe && probe=yes
if ! up_and_wait "$probe"; then
  dump_logs
  die "the cluster did not come up (scripts/docker-down.sh tears it down)"
fi

dc="${COMPOSE[*]}"
[ "$QKV_PROJECT" = quorumkv ] || dc+=" -p $QKV_PROJECT"
cat <<MSG

QuorumKV is up on Docker Compose (project $QKV_PROJECT, image $QKV_IMAGE): controller
ctrl-1..3 and groups 1 (g1-1..3) and 2 (g2-1..3), mutual TLS on the project's network.

  $dc run --rm kv put greeting hello
  $dc run --rm kv get greeting
  $dc run --rm kv status
  $dc run --rm ctl query
  $dc ps
  $dc logs -f g1-1
  scripts/docker-down.sh              # stop (data kept in named volumes)
  scripts/docker-down.sh --volumes    # stop and delete the data and certificates
MSG
