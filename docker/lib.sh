# shellcheck shell=bash
# Shared by scripts/docker-up.sh, docker-down.sh and docker-test.sh (sourced, never run):
# finding Compose, building the image (public or offline), waiting until the cluster serves.
#
# Settings (environment):
#   QKV_PROJECT            Compose project name (default quorumkv)
#   QKV_IMAGE              image tag the Compose file runs (default quorumkv:dev)
#   QKV_STATIC_TARGET_DIR  cargo target dir of the static build (default target/static)
#   QKV_WAIT_SECS          bound of every wait for the cluster (default 90)

ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
COMPOSE_FILE="$ROOT/compose.yaml"
QKV_PROJECT=${QKV_PROJECT:-quorumkv}
export QKV_IMAGE=${QKV_IMAGE:-quorumkv:dev}
STATIC_TARGET_DIR=${QKV_STATIC_TARGET_DIR:-$ROOT/target/static}
STATIC_TRIPLE=x86_64-unknown-linux-gnu
WAIT_SECS=${QKV_WAIT_SECS:-90}
BINS=(quorumkv-certs shardctrler-server shardctrler-client shardkv-server shardkv-client)
CTRLS=(ctrl-1 ctrl-2 ctrl-3)
GROUP_SERVERS=(g1-1 g1-2 g1-3 g2-1 g2-2 g2-3)
SERVERS=("${CTRLS[@]}" "${GROUP_SERVERS[@]}")
GIDS=(1 2)
CTRLERS=ctrl-1:7000,ctrl-2:7000,ctrl-3:7000

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# COMPOSE: docker-compose v1 when installed (this project's CI machine has 1.29.2), otherwise the
# `docker compose` v2 plugin. The Compose file is written for both.
find_compose() {
  if command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  else
    return 1
  fi
}

compose() { "${COMPOSE[@]}" -f "$COMPOSE_FILE" -p "$QKV_PROJECT" "$@"; }

# The container id of a service of the project ("" when it has none).
cid() { compose ps -q "$1" 2>/dev/null | head -n1; }

has_buildx() { docker buildx version >/dev/null 2>&1; }

# Static binaries for the `prebuilt` stage. The explicit --target keeps +crt-static off build
# scripts and proc-macros, which must stay dynamic.
build_static() {
  log "building static release binaries (target dir $STATIC_TARGET_DIR)..."
  (cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
    --target "$STATIC_TRIPLE" --target-dir "$STATIC_TARGET_DIR" -p quorumkv-bin --bins)
  local b f
  for b in "${BINS[@]}"; do
    f="$STATIC_TARGET_DIR/$STATIC_TRIPLE/release/$b"
    [ -x "$f" ] || die "missing $f"
    # A dynamic binary would fail in FROM scratch with a confusing "no such file or directory".
    if command -v ldd >/dev/null 2>&1 &&
      ! ldd "$f" 2>&1 | grep -Eq 'statically linked|not a dynamic executable'; then
      die "$f is dynamically linked"
    fi
  done
}

# The offline image: only the `prebuilt` stage, from a small staged context (the binaries and an
# empty directory), so nothing is pulled and only the binaries are sent to the daemon.
build_prebuilt_image() {
  local ctx b
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/qkv-docker-ctx.XXXXXX")
  mkdir -p "$ctx/docker/prebuilt/bin" "$ctx/docker/prebuilt/owned"
  # Without their debug info (the release profile keeps line tables): 1/5 of the size; the
  # symbols stay, so backtraces still name functions.
  for b in "${BINS[@]}"; do
    strip --strip-debug -o "$ctx/docker/prebuilt/bin/$b" "$STATIC_TARGET_DIR/$STATIC_TRIPLE/release/$b" 2>/dev/null ||
      cp "$STATIC_TARGET_DIR/$STATIC_TRIPLE/release/$b" "$ctx/docker/prebuilt/bin/$b"
  done
  cp "$ROOT/docker/Dockerfile" "$ctx/docker/Dockerfile"
  log "building image $QKV_IMAGE (target prebuilt, FROM scratch)..."
  local rc=0
  if has_buildx; then
    docker build -q -f "$ctx/docker/Dockerfile" --target prebuilt -t "$QKV_IMAGE" "$ctx" >/dev/null || rc=$?
  else
    DOCKER_BUILDKIT=0 docker build -q -f "$ctx/docker/Dockerfile" --target prebuilt -t "$QKV_IMAGE" "$ctx" \
      >/dev/null 2>"$ctx/build.err" || { rc=$?; cat "$ctx/build.err" >&2; }
  fi
  rm -rf "$ctx"
  return "$rc"
}

# The public multi-stage build (rust:1-bookworm builder, debian:bookworm-slim runtime), what
# `docker compose up --build` does: the repository is the context, .dockerignore keeps target/
# out for BuildKit and the legacy builder alike, and the legacy builder's run of the unused
# `prebuilt` stage finds its (empty) directories in docker/prebuilt/.
build_public_image() {
  log "building image $QKV_IMAGE (public multi-stage build; pulls rust:1-bookworm and debian:bookworm-slim)..."
  docker build -f "$ROOT/docker/Dockerfile" -t "$QKV_IMAGE" "$ROOT"
}

# Whether the image's servers have the `probe` subcommand the Compose healthchecks run.
image_has_probe() {
  docker run --rm --network none --entrypoint shardkv-server "$QKV_IMAGE" probe --help >/dev/null 2>&1 &&
    docker run --rm --network none --entrypoint shardctrler-server "$QKV_IMAGE" probe --help >/dev/null 2>&1
}

# A client run inside a container of the project (on the Compose network, with certificate
# CERT — client or admin — from the certs volume): `kvc ARGS` is shardkv-client with the client
# certificate, `ctlc ARGS` shardctrler-client with the admin one. `docker exec` costs far less
# than `compose run` (a new container each time). The container is ctrl-1's, looked up once
# (after `up`; a killed and restarted container keeps its id), or CLIENT_HOST's when set (a
# test that stops ctrl-1 runs its clients elsewhere).
CLIENT_CID=""
CLIENT_HOST=${CLIENT_HOST:-ctrl-1}
client_in() {
  local cert=$1
  shift
  [ -n "$CLIENT_CID" ] || CLIENT_CID=$(cid "$CLIENT_HOST")
  [ -n "$CLIENT_CID" ] || return 1
  docker exec -e QKV_CTRLERS="$CTRLERS" \
    -e QKV_TLS_CA=/etc/quorumkv/tls/ca.pem \
    -e QKV_TLS_CERT="/etc/quorumkv/tls/$cert.pem" \
    -e QKV_TLS_KEY="/etc/quorumkv/tls/$cert-key.pem" \
    "$CLIENT_CID" "$@"
}
kvc() { client_in client shardkv-client "$@"; }
ctlc() { client_in admin shardctrler-client "$@"; }

# Runs "$@" every half second until it succeeds; fails after WAIT_SECS naming $1 (what).
wait_until() {
  local what=$1 deadline=$(($(date +%s) + WAIT_SECS))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$what did not happen within $WAIT_SECS s"
      return 1
    fi
    sleep 0.5
  done
}

# The gids in the controller's latest configuration (its JSON has sorted keys; gids are numbers).
joined_gids() {
  local json
  json=$(ctlc --timeout 5s --json query) || return 1
  { grep -o '"gid":[0-9]*' <<<"$json" || true; } | cut -d: -f2 | sort -u
}

group_addrs() { echo "g$1-1:7000,g$1-2:7000,g$1-3:7000"; }

all_joined() {
  local gid joined
  joined=$(joined_gids) || return 1
  for gid in "${GIDS[@]}"; do grep -qx "$gid" <<<"$joined" || return 1; done
}

# The `join` service's work, from here: `join` is idempotent (groups already joined with the
# same servers are left alone).
join_all() {
  local gid groups=()
  for gid in "${GIDS[@]}"; do groups+=("$gid=$(group_addrs "$gid")"); done
  ctlc --timeout 30s join "${groups[@]}" >/dev/null
}

all_healthy() {
  local s c
  for s in "${SERVERS[@]}"; do
    c=$(cid "$s")
    [ -n "$c" ] || return 1
    [ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c")" = healthy ] || return 1
  done
}

kv_serving() {
  kvc --timeout 5s put docker:probe ok >/dev/null && [ "$(kvc --timeout 5s get docker:probe)" = ok ]
}

# Starts the project and waits (each step bounded by WAIT_SECS) until the controller serves,
# both groups are joined and a put and a get go through. With the `probe` subcommand in the
# image, everything is started (the `join` service included) and every server must also be
# healthy; without it, the healthchecks can never pass, so `join` (which waits for a healthy
# controller) is left out and the groups are joined from here.
up_and_wait() {
  local probe=$1
  if [ "$probe" = yes ]; then
    log "starting the cluster (all services; healthchecks use the probe subcommand)..."
    # Returns once `join` has started, i.e. after the controller members are healthy; fails if
    # one of them turns unhealthy (or the image is missing).
    timeout 300 "${COMPOSE[@]}" -f "$COMPOSE_FILE" -p "$QKV_PROJECT" up -d || return 1
  else
    log "starting the cluster (servers only: this image has no probe subcommand, so the"
    log "healthchecks cannot pass and the groups are joined from this script)..."
    timeout 300 "${COMPOSE[@]}" -f "$COMPOSE_FILE" -p "$QKV_PROJECT" up -d "${SERVERS[@]}"
  fi
  CLIENT_CID=$(cid "$CLIENT_HOST")
  wait_until "the controller serving" ctlc --timeout 2s query || return 1
  if [ "$probe" = yes ]; then
    # The join service runs once the controller is healthy; give it its chance first.
    wait_until "both groups joined" all_joined || join_all || return 1
  else
    join_all || return 1
  fi
  wait_until "both groups joined" all_joined || return 1
  wait_until "a put and a get through shardkv-client" kv_serving || return 1
  if [ "$probe" = yes ]; then
    wait_until "every server healthy (probe /health/ready)" all_healthy || return 1
  fi
}

# The last lines of every service's log, for failures.
dump_logs() {
  local s
  for s in certs "${SERVERS[@]}" join; do
    log "--- $s (last 20 lines) ---"
    compose logs --no-color --tail 20 "$s" 2>&1 | tail -n 20 >&2 || true
  done
}
