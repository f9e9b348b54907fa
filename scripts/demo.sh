#!/usr/bin/env bash
# QuorumKV local demo cluster, as local processes with mutual TLS (no Docker needed).
#
#   scripts/demo.sh up       build, generate certificates, start the cluster, wait until it
#                            serves, write .demo/env; a no-op if it is already running
#   scripts/demo.sh status   every node: pid, addresses, running or not
#   scripts/demo.sh down     stop every node (data is kept: `up` resumes it); a no-op if stopped
#   scripts/demo.sh clean    stop and delete .demo entirely
#
# Then `. .demo/env` and the clients work with no flags.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEMO="$ROOT/.demo"
PROFILE=${QKV_DEMO_PROFILE:-release}
BIN="$ROOT/target/$PROFILE"
CTRL_BASE_PORT=${QKV_DEMO_CTRL_PORT:-7101}
ADMIN_BASE_PORT=${QKV_DEMO_ADMIN_PORT:-8101}
CTRL_IDS=(1 2 3)

ctrl_port() { echo $((CTRL_BASE_PORT + $1 - 1)); }
admin_port() { echo $((ADMIN_BASE_PORT + $1 - 1)); }
ctrl_cluster() {
  local out="" id
  for id in "${CTRL_IDS[@]}"; do out+="${out:+,}$id=localhost:$(ctrl_port "$id")"; done
  echo "$out"
}
ctrl_addrs() {
  local out="" id
  for id in "${CTRL_IDS[@]}"; do out+="${out:+,}localhost:$(ctrl_port "$id")"; done
  echo "$out"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

running_count() {
  local n=0 f
  for f in "$DEMO"/pids/*.pid; do [ -e "$f" ] && pid_alive "$f" && n=$((n + 1)); done
  echo "$n"
}

build() {
  echo "building binaries ($PROFILE; the first build takes a few minutes)..."
  local flag=()
  [ "$PROFILE" = "release" ] && flag=(--release)
  (cd "$ROOT" && cargo build "${flag[@]}" -p quorumkv-bin --bins)
}

start_ctrl() {
  local id=$1 pidf="$DEMO/pids/ctrl-$1.pid"
  if pid_alive "$pidf"; then return; fi
  "$BIN/shardctrler-server" \
    --id "$id" --cluster "$(ctrl_cluster)" \
    --listen "127.0.0.1:$(ctrl_port "$id")" \
    --admin-listen "127.0.0.1:$(admin_port "$id")" \
    --data-dir "$DEMO/data/ctrl-$id" \
    --tls-ca "$DEMO/certs/ca.pem" --tls-cert "$DEMO/certs/node.pem" --tls-key "$DEMO/certs/node-key.pem" \
    >>"$DEMO/logs/ctrl-$id.log" 2>&1 &
  echo $! >"$pidf"
}

write_env() {
  cat >"$DEMO/env" <<ENV
# QuorumKV demo cluster: source this file (. .demo/env) to use the clients with no flags.
export QKV_CTRLERS=$(ctrl_addrs)
export QKV_TLS_CA=$DEMO/certs/ca.pem
export QKV_TLS_CERT=$DEMO/certs/client.pem
export QKV_TLS_KEY=$DEMO/certs/client-key.pem
export PATH=$BIN:\$PATH
ENV
}

wait_serving() {
  # Bounded: 60 s for the controller group to elect a leader and answer a linearizable query.
  local deadline=$(( $(date +%s) + 60 ))
  # shellcheck disable=SC1091
  . "$DEMO/env"
  until "$BIN/shardctrler-client" --timeout 2 query >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "the cluster did not start serving within 60 s; see $DEMO/logs/" >&2
      return 1
    fi
    sleep 0.5
  done
}

cmd_up() {
  mkdir -p "$DEMO/pids" "$DEMO/logs" "$DEMO/data"
  if [ "$(running_count)" -eq "${#CTRL_IDS[@]}" ]; then
    echo "demo cluster already running (scripts/demo.sh status)"
    return 0
  fi
  build
  "$BIN/quorumkv-certs" --out "$DEMO/certs" dev >/dev/null
  for id in "${CTRL_IDS[@]}"; do start_ctrl "$id"; done
  write_env
  echo "waiting for the controller group to serve..."
  wait_serving
  cat <<MSG

QuorumKV demo cluster is up: a 3-node shard controller on $(ctrl_addrs) (mutual TLS).

  . .demo/env                                   # clients need no flags after this
  shardctrler-client query                      # the current configuration
  shardctrler-client join 1=a:7001,b:7001,c:7001
  shardctrler-client move 0 1
  shardctrler-client query --json
  scripts/demo.sh status                        # every node
  scripts/demo.sh down                          # stop (data kept)

Logs: $DEMO/logs/   Data: $DEMO/data/
MSG
}

cmd_status() {
  local id pidf state
  printf '%-8s %-8s %-18s %-28s %s\n' NODE PID GRPC ADMIN STATE
  for id in "${CTRL_IDS[@]}"; do
    pidf="$DEMO/pids/ctrl-$id.pid"
    state=stopped
    pid_alive "$pidf" && state=running
    printf '%-8s %-8s %-18s %-28s %s\n' "ctrl-$id" "$( [ -f "$pidf" ] && cat "$pidf" || echo -)" \
      "localhost:$(ctrl_port "$id")" "http://127.0.0.1:$(admin_port "$id")" "$state"
  done
}

cmd_down() {
  local f pid stopped=0
  for f in "$DEMO"/pids/*.pid; do
    [ -e "$f" ] || continue
    if pid_alive "$f"; then
      pid=$(cat "$f")
      kill -TERM "$pid" 2>/dev/null || true
      # Bounded wait for a graceful exit, then SIGKILL.
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
      stopped=$((stopped + 1))
    fi
    rm -f "$f"
  done
  if [ "$stopped" -eq 0 ]; then echo "demo cluster is not running"; else echo "stopped $stopped nodes (data kept in $DEMO/data)"; fi
}

case "${1:-}" in
  up) cmd_up ;;
  status) cmd_status ;;
  down) cmd_down ;;
  clean) cmd_down; rm -rf "$DEMO"; echo "removed $DEMO" ;;
  *) echo "usage: scripts/demo.sh up|status|down|clean" >&2; exit 2 ;;
esac
