#!/usr/bin/env bash
# QuorumKV local demo cluster, as local processes with mutual TLS (no Docker needed): a 3-node
# shard controller and two 3-node replica groups (gid 1 and 2), joined and serving.
#
#   scripts/demo.sh up       build, generate certificates, start the cluster, join the groups,
#                            wait until it serves, write .demo/env, print the dashboard's URL;
#                            a no-op if it is running
#   scripts/demo.sh status   every node: pid, addresses, running or not (and the groups' state)
#   scripts/demo.sh down     stop every node (data is kept: `up` resumes it); a no-op if stopped
#   scripts/demo.sh clean    stop and delete .demo entirely
#   scripts/demo.sh rolling-restart [BENCH_SECS]
#                            restart every node one at a time (SIGTERM: the node hands off
#                            leadership; then wait until it is ready again), optionally under
#                            `shardkv-client bench` load, and print the bench report
#
# Then `. .demo/env` and both clients (shardctrler-client, shardkv-client) work with no flags.
#
# Ports: controller 7101-7103, group 1 7201-7203, group 2 7301-7303 (gRPC); admin HTTP on
# 8101.., 8201.., 8301... QKV_DEMO_CTRL_PORT / QKV_DEMO_ADMIN_PORT move the bases (groups are
# at +100 per gid). QKV_DEMO_PROFILE=debug uses a debug build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEMO="$ROOT/.demo"
PROFILE=${QKV_DEMO_PROFILE:-release}
BIN="$ROOT/target/$PROFILE"
CTRL_BASE_PORT=${QKV_DEMO_CTRL_PORT:-7101}
ADMIN_BASE_PORT=${QKV_DEMO_ADMIN_PORT:-8101}
IDS=(1 2 3)
GIDS=(1 2)
# Every wait is bounded by this many seconds.
WAIT_SECS=60

# A node is `ctrl-ID` or `gGID-ID`; group GID's ports are the controller's plus 100 * GID.
node_gid() { case $1 in ctrl-*) echo 0 ;; g*) local n=${1#g}; echo "${n%%-*}" ;; esac; }
node_id() { echo "${1##*-}"; }
grpc_port() { echo $((CTRL_BASE_PORT + 100 * $(node_gid "$1") + $(node_id "$1") - 1)); }
admin_port() { echo $((ADMIN_BASE_PORT + 100 * $(node_gid "$1") + $(node_id "$1") - 1)); }
group_nodes() { local id; for id in "${IDS[@]}"; do if [ "$1" = 0 ]; then echo "ctrl-$id"; else echo "g$1-$id"; fi; done; }
all_nodes() { local gid; group_nodes 0; for gid in "${GIDS[@]}"; do group_nodes "$gid"; done; }
# `id=localhost:port,...` of a group (0 = the controller).
cluster_of() {
  local out="" n
  for n in $(group_nodes "$1"); do out+="${out:+,}$(node_id "$n")=localhost:$(grpc_port "$n")"; done
  echo "$out"
}
# `localhost:port,...` of a group: what clients dial, and what the controller is told.
addrs_of() {
  local out="" n
  for n in $(group_nodes "$1"); do out+="${out:+,}localhost:$(grpc_port "$n")"; done
  echo "$out"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# The live dashboard; every node's admin port serves it.
dashboard_url() { echo "http://127.0.0.1:$(admin_port ctrl-1)/dashboard"; }
node_alive() { pid_alive "$DEMO/pids/$1.pid"; }

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

tls_flags() {
  echo --tls-ca "$DEMO/certs/ca.pem" --tls-cert "$DEMO/certs/node.pem" --tls-key "$DEMO/certs/node-key.pem"
}

start_node() {
  local node=$1 gid id pidf="$DEMO/pids/$1.pid"
  if node_alive "$node"; then return; fi
  gid=$(node_gid "$node")
  id=$(node_id "$node")
  # shellcheck disable=SC2046
  if [ "$gid" = 0 ]; then
    "$BIN/shardctrler-server" --id "$id" --cluster "$(cluster_of 0)" \
      --listen "127.0.0.1:$(grpc_port "$node")" --admin-listen "127.0.0.1:$(admin_port "$node")" \
      --data-dir "$DEMO/data/$node" $(tls_flags) >>"$DEMO/logs/$node.log" 2>&1 &
  else
    "$BIN/shardkv-server" --gid "$gid" --id "$id" --cluster "$(cluster_of "$gid")" \
      --ctrlers "$(addrs_of 0)" \
      --listen "127.0.0.1:$(grpc_port "$node")" --admin-listen "127.0.0.1:$(admin_port "$node")" \
      --data-dir "$DEMO/data/$node" $(tls_flags) >>"$DEMO/logs/$node.log" 2>&1 &
  fi
  echo $! >"$pidf"
}

# The CLIs use the admin certificate, as an operator's shell would (admin implies client: it
# reads and writes keys and may also join, move and change memberships). An application
# would use certs/client.pem, which may only read and write keys and query the controller.
write_env() {
  cat >"$DEMO/env" <<ENV
# QuorumKV demo cluster: source this file (. .demo/env) to use the clients with no flags.
# The admin certificate; an application would use client.pem/client-key.pem instead.
export QKV_CTRLERS=$(addrs_of 0)
export QKV_TLS_CA=$DEMO/certs/ca.pem
export QKV_TLS_CERT=$DEMO/certs/admin.pem
export QKV_TLS_KEY=$DEMO/certs/admin-key.pem
export PATH=$BIN:\$PATH
ENV
}

# Runs "$@" every half second until it succeeds; fails after WAIT_SECS naming $1 (what).
wait_until() {
  local what=$1 deadline=$(($(date +%s) + WAIT_SECS))
  shift
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "$what did not happen within $WAIT_SECS s; see $DEMO/logs/" >&2
      return 1
    fi
    sleep 0.5
  done
}

ctrl_serving() { "$BIN/shardctrler-client" --timeout 2s query; }

# The gids the controller's latest configuration has (JSON keys are sorted, gids are numbers).
joined_gids() {
  local json
  json=$("$BIN/shardctrler-client" --timeout 10s --json query) || return 1
  { grep -o '"gid":[0-9]*' <<<"$json" || true; } | cut -d: -f2
}

all_joined() {
  local gid joined
  # shellcheck disable=SC1091
  joined=$(. "$DEMO/env" && joined_gids) || return 1
  for gid in "${GIDS[@]}"; do grep -qx "$gid" <<<"$joined" || return 1; done
}

# `join` is idempotent: groups already joined with the same servers are left as they are.
join_groups() {
  local gid groups=()
  for gid in "${GIDS[@]}"; do groups+=("$gid=$(addrs_of "$gid")"); done
  "$BIN/shardctrler-client" --timeout 20s join "${groups[@]}" >/dev/null
}

kv_serving() {
  "$BIN/shardkv-client" --timeout 2s put demo:probe ok &&
    [ "$("$BIN/shardkv-client" --timeout 2s get demo:probe)" = ok ]
}

cmd_up() {
  mkdir -p "$DEMO/pids" "$DEMO/logs" "$DEMO/data"
  local total n
  total=$(all_nodes | wc -l)
  # Running and joined: nothing to do. (Running but not joined, e.g. after an interrupted
  # `up`: carry on, every step below skips what is already done.)
  if [ "$(running_count)" -eq "$total" ] && [ -f "$DEMO/env" ] && all_joined; then
    echo "demo cluster already running (scripts/demo.sh status)"
    echo "dashboard: $(dashboard_url)"
    return 0
  fi
  build
  # The CA, a node certificate (the servers'), an admin and a client certificate.
  "$BIN/quorumkv-certs" --out "$DEMO/certs" dev >/dev/null
  write_env
  # shellcheck disable=SC1091
  . "$DEMO/env"
  for n in $(group_nodes 0); do start_node "$n"; done
  echo "waiting for the controller group to serve..."
  wait_until "the controller serving" ctrl_serving
  for n in $(all_nodes); do start_node "$n"; done
  join_groups
  echo "waiting for the replica groups to serve..."
  wait_until "a put and a get through shardkv-client" kv_serving
  cat <<MSG

QuorumKV demo cluster is up (mutual TLS): a 3-node shard controller on $(addrs_of 0)
and two 3-node replica groups, 1 on $(addrs_of 1) and 2 on $(addrs_of 2).

Dashboard: $(dashboard_url)   (any node's admin port serves it)

  . .demo/env                                   # clients need no flags after this
  shardkv-client put greeting hello             # write a key (as admin: see .demo/env)
  shardkv-client put blob - < some-file         # a value from stdin (or --value-file FILE)
  shardkv-client get greeting                   # prints hello (a missing key exits 1)
  shardkv-client append greeting ", world"
  shardkv-client delete greeting
  shardkv-client status                         # every group: members, leader, shards
  shardkv-client bench --clients 64 --duration 10
  shardkv-client check --duration 60 --clients 8 --keys 10   # prove it linearizable
  shardctrler-client query                      # which group owns which shard
  shardctrler-client move 0 2                   # move shard 0 to group 2 (live migration)
  scripts/demo.sh status                        # every node
  scripts/demo.sh down                          # stop (data kept)

Logs: $DEMO/logs/   Data: $DEMO/data/
MSG
}

# GET http://127.0.0.1:PORT/PATH with bash's /dev/tcp (no curl needed); prints the body.
http_get() {
  local port=$1 path=$2
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&3
  timeout 2 cat <&3 | sed '1,/^\r$/d'
  exec 3<&-
}

# The node's Raft role from its /metrics, or `?`.
node_role() {
  local role
  role=$(http_get "$(admin_port "$1")" /metrics 2>/dev/null |
    sed -n 's/^quorumkv_raft_role{.*role="\([a-z-]*\)".*} 1$/\1/p' | head -1)
  echo "${role:-?}"
}

server_bin() { if [ "$(node_gid "$1")" = 0 ]; then echo "$BIN/shardctrler-server"; else echo "$BIN/shardkv-server"; fi; }
node_ready() { "$(server_bin "$1")" probe "http://127.0.0.1:$(admin_port "$1")/health/ready" >/dev/null 2>&1; }

cmd_status() {
  local n pidf state pid role
  printf '%-8s %-8s %-16s %-10s %-38s %s\n' NODE PID GRPC ROLE HEALTH STATE
  for n in $(all_nodes); do
    pidf="$DEMO/pids/$n.pid"
    state=stopped pid=- role=-
    if pid_alive "$pidf"; then
      pid=$(cat "$pidf") role=$(node_role "$n") state=running
      node_ready "$n" && state="running, ready" || state="running, not ready"
    fi
    printf '%-8s %-8s %-16s %-10s %-38s %s\n' "$n" "$pid" "localhost:$(grpc_port "$n")" "$role" \
      "http://127.0.0.1:$(admin_port "$n")/health/ready" "$state"
  done
  if [ "$(running_count)" -gt 0 ] && [ -f "$DEMO/env" ]; then
    echo
    echo "dashboard: $(dashboard_url)"
    echo
    # shellcheck disable=SC1091
    . "$DEMO/env"
    "$BIN/shardkv-client" --timeout 5s status || echo "(shardkv-client status failed: is the controller up?)"
  fi
}

cmd_down() {
  local f pids=() stopped=0 pid
  for f in "$DEMO"/pids/*.pid; do
    [ -e "$f" ] || continue
    if pid_alive "$f"; then
      pid=$(cat "$f")
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$f"
  done
  # Bounded wait (10 s) for graceful exits, then SIGKILL what is left.
  for _ in $(seq 1 50); do
    local left=0
    for pid in ${pids[@]+"${pids[@]}"}; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" -eq 0 ] && break
    sleep 0.2
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill -KILL "$pid" 2>/dev/null || true
    stopped=$((stopped + 1))
  done
  if [ "$stopped" -eq 0 ]; then echo "demo cluster is not running"; else echo "stopped $stopped nodes (data kept in $DEMO/data)"; fi
}

# Stops one node gracefully (SIGTERM; bounded wait, then SIGKILL).
stop_node() {
  local pidf="$DEMO/pids/$1.pid" pid
  pid_alive "$pidf" || return 0
  pid=$(cat "$pidf")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidf"
}

cmd_rolling_restart() {
  local bench_secs=${1:-0} n t0 bench_pid=""
  if [ "$(running_count)" -eq 0 ]; then echo "demo cluster is not running (scripts/demo.sh up)" >&2; return 1; fi
  # shellcheck disable=SC1091
  . "$DEMO/env"
  if [ "$bench_secs" -gt 0 ]; then
    "$BIN/shardkv-client" bench --clients 32 --duration "$bench_secs" --read-ratio 0.5 \
      >"$DEMO/rolling-bench.txt" 2>"$DEMO/rolling-bench.log" &
    bench_pid=$!
    sleep 2
  fi
  for n in $(all_nodes); do
    t0=$(date +%s%N)
    stop_node "$n"
    start_node "$n"
    wait_until "$n to be ready again" node_ready "$n"
    echo "restarted $n in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  done
  if [ -n "$bench_pid" ]; then
    echo "waiting for the bench to finish..."
    wait "$bench_pid" || true
    cat "$DEMO/rolling-bench.txt"
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  rolling-restart) cmd_rolling_restart "${2:-0}" ;;
  status) cmd_status ;;
  down) cmd_down ;;
  clean) cmd_down; rm -rf "$DEMO"; echo "removed $DEMO" ;;
  *) echo "usage: scripts/demo.sh up|status|down|clean|rolling-restart [BENCH_SECS]" >&2; exit 2 ;;
esac
