#!/usr/bin/env bash
# CI test of the Docker packaging: the Compose cluster (compose.yaml) built offline (static
# binaries, `FROM scratch` image — nothing is pulled) survives the loss of a group leader's
# container, a group leader's graceful stop and the loss of the controller's leader without
# losing an acknowledged write.
#
#   1. build the static binaries and the `prebuilt` image (a unique tag);
#   2. bring the cluster up under a unique Compose project; put and get with
#      `compose run --rm kv` (the documented client path); `up` again: the `join` service
#      succeeds again without changing anything;
#   3. writers (background loops, each op a `shardkv-client append` in a container on the
#      network) append unique tokens `wW.I;` to 16 keys;
#   4. find group 1's leader with `shardkv-client --json status`, `docker kill` its container,
#      check that acknowledged writes keep coming and a new leader is elected;
#   5. `docker start` it, wait until it is back in the group, more acknowledged writes;
#   6. `docker stop` (SIGTERM) group 1's new leader: it must hand leadership over before it
#      exits (its log says so), writes go on, then it is started again;
#   7. `docker kill` the controller's leader: a new one is elected and writes go on (every
#      client looks the configuration up); then it is started again;
#   8. stop the writers and read every key: each acknowledged token exactly once, no token
#      twice, nothing that was never written.
# Skips (exit 0) with a message where no Docker engine runs. Always tears down its containers,
# network, volumes and image (trap). Bounded: the cluster phase has a budget of
# QKV_DOCKER_TEST_SECS (default 360) enforced by a watchdog; every loop has its own deadline.
# The cargo build before it is not counted (a no-op when the binaries are current).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if ! docker info >/dev/null 2>&1; then
  echo "SKIP docker-test: no Docker engine here (\`docker info\` fails); the Compose test did not run."
  exit 0
fi

RUN_ID="qkvt$$$(date +%s)"
export QKV_PROJECT=$RUN_ID
export QKV_IMAGE="quorumkv:test-$RUN_ID"
export QKV_WAIT_SECS=${QKV_WAIT_SECS:-60}
# The clients run in g2-1's container: the test stops group 1's leaders and the controller's
# leader, never g2-1.
export CLIENT_HOST=g2-1
# shellcheck source=docker/lib.sh source-path=SCRIPTDIR/..
. "$ROOT/docker/lib.sh"

if ! find_compose; then
  echo "SKIP docker-test: Docker runs but neither docker-compose nor \`docker compose\` is installed."
  exit 0
fi

BUDGET=${QKV_DOCKER_TEST_SECS:-360}
WRITERS=4
KEYS_PER_WRITER=4
WORK=$(mktemp -d "${TMPDIR:-/tmp}/qkv-docker-test.XXXXXX")
STOP="$WORK/stop"
T0=$(date +%s)
WATCHDOG=""
WRITER_PIDS=()
declare -A TIMES=()
PHASE_START=$T0

phase_done() {
  local now
  now=$(date +%s)
  TIMES[$1]=$((now - PHASE_START))
  log "phase '$1' took $((now - PHASE_START)) s"
  PHASE_START=$now
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$WATCHDOG" ]; then
    pkill -P "$WATCHDOG" sleep 2>/dev/null || true # its sleep, by parent pid
    kill "$WATCHDOG" 2>/dev/null || true
  fi
  touch "$STOP" 2>/dev/null || true
  local p
  for p in ${WRITER_PIDS[@]+"${WRITER_PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then
    log "FAILED (exit $rc); logs follow"
    dump_logs
  fi
  log "tearing down project $QKV_PROJECT..."
  timeout 120 "${COMPOSE[@]}" -f "$COMPOSE_FILE" -p "$QKV_PROJECT" down --volumes --remove-orphans --timeout 10 \
    >/dev/null 2>&1 || log "compose down failed; remove project $QKV_PROJECT by hand"
  docker rmi "$QKV_IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  if [ "${#TIMES[@]}" -gt 0 ]; then
    log "timings (s): build ${TIMES[build]:-?}, up ${TIMES[up]:-?}, writes before kill ${TIMES[before]:-?}," \
      "kill+failover ${TIMES[kill]:-?}, restart ${TIMES[restart]:-?}, SIGTERM hand-off ${TIMES[handoff]:-?}," \
      "controller failover ${TIMES[ctrl]:-?}, verify ${TIMES[verify]:-?}; total $(($(date +%s) - T0))"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'log "time budget exceeded"; exit 124' TERM

# --- 1. image ------------------------------------------------------------------------------------
build_static
build_prebuilt_image
PROBE=no
image_has_probe && PROBE=yes
log "image $QKV_IMAGE built; probe subcommand: $PROBE"
phase_done build

# The budget covers the cluster phases; the watchdog ends the script (and so runs cleanup).
(sleep "$BUDGET" && kill -TERM $$) 2>/dev/null &
WATCHDOG=$!

# --- 2. up ---------------------------------------------------------------------------------------
up_and_wait "$PROBE" || die "the cluster did not come up"
out=$(timeout 60 "${COMPOSE[@]}" -f "$COMPOSE_FILE" -p "$QKV_PROJECT" run --rm -T kv put docker:greeting hello)
[ -z "$out" ] || die "put printed: $out"
out=$(timeout 60 "${COMPOSE[@]}" -f "$COMPOSE_FILE" -p "$QKV_PROJECT" run --rm -T kv get docker:greeting)
[ "$out" = hello ] || die "get printed '$out', expected hello"
log "put/get through \`compose run --rm kv\` works"
if [ "$PROBE" = yes ]; then
  # `up` over a running, joined cluster: the join service runs again and must succeed (the join
  # is idempotent), changing nothing.
  join_cid=$(cid join)
  [ -n "$join_cid" ] || die "no join container"
  before=$(docker inspect -f '{{.State.StartedAt}}' "$join_cid")
  timeout 120 "${COMPOSE[@]}" -f "$COMPOSE_FILE" -p "$QKV_PROJECT" up -d >/dev/null 2>&1 || die "second up failed"
  join_cid=$(cid join)
  join_reran() {
    [ "$(docker inspect -f '{{.State.StartedAt}}' "$join_cid")" != "$before" ] &&
      [ "$(docker inspect -f '{{.State.Status}}' "$join_cid")" = exited ]
  }
  wait_until "the join service to run again" join_reran || die "join did not run again on the second up"
  code=$(docker inspect -f '{{.State.ExitCode}}' "$join_cid")
  [ "$code" = 0 ] || die "join failed on the second up (exit $code): $(docker logs "$join_cid" 2>&1 | tail -n 3)"
  # Read the logs whole first: under pipefail, `docker logs | grep -q` fails when grep stops
  # reading at its match and docker logs gets SIGPIPE on its next write.
  join_logs=$(docker logs "$join_cid" 2>&1)
  grep -q "already joined with these servers" <<<"$join_logs" ||
    die "the second join did not report the groups as already joined: $(tail -n 5 <<<"$join_logs")"
  log "a second \`up\` re-ran join successfully: groups already joined, nothing changed"
fi
phase_done up

# --- 3. writers ----------------------------------------------------------------------------------
# Writer W appends `wW.I;` to key docker:t:K:W for K = I mod KEYS_PER_WRITER, one append at a
# time; the token goes to acked.W only when the client exits 0. A failed append (timeout: the
# outcome is unknown) goes to failed.W; it may or may not be in the value.
writer() {
  local w=$1 i=0 key tok err
  local deadline=$(($(date +%s) + BUDGET))
  while [ ! -e "$STOP" ] && [ "$(date +%s)" -lt "$deadline" ]; do
    key="docker:t:$((i % KEYS_PER_WRITER)):$w"
    tok="w$w.$i;"
    echo "$key $tok" >>"$WORK/attempted.$w"
    if err=$(timeout 30 docker exec -e QKV_CTRLERS="$CTRLERS" \
      -e QKV_TLS_CA=/etc/quorumkv/tls/ca.pem \
      -e QKV_TLS_CERT=/etc/quorumkv/tls/client.pem \
      -e QKV_TLS_KEY=/etc/quorumkv/tls/client-key.pem \
      "$CLIENT_CID" shardkv-client --timeout 15s append "$key" "$tok" 2>&1); then
      echo "$key $tok" >>"$WORK/acked.$w"
    else
      echo "$key $tok ${err//$'\n'/ }" >>"$WORK/failed.$w"
    fi
    i=$((i + 1))
  done
}

acked() { cat "$WORK"/acked.* 2>/dev/null | wc -l; }

# Waits (bounded by $2 s) until at least $1 appends are acknowledged.
wait_acks() {
  local n=$1 deadline=$(($(date +%s) + $2))
  while [ "$(acked)" -lt "$n" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "only $(acked) of $n appends acknowledged within $2 s ($3)"
    sleep 0.5
  done
}

# The address (host:port) of group 1's leader per `status --json` ("" if none). The JSON's keys
# are sorted, so a group object reads `"gid":1,"leader_addr":"...",...`.
g1_leader() {
  local json
  json=$(kvc --timeout 5s --json status 2>/dev/null) || return 0
  grep -o '"gid":1,"leader_addr":"[^"]*"' <<<"$json" | sed 's/.*"leader_addr":"\([^"]*\)"/\1/' || true
}

# The output of FN once it is non-empty and not NOT (a leader, or a new one), within 30 s;
# fails naming WHAT. `x=$(await_leader ...)` ends the script on failure (errexit).
await_leader() {
  local what=$1 fn=$2 not=${3:-} got deadline=$(($(date +%s) + 30))
  while :; do
    got=$($fn)
    if [ -n "$got" ] && [ "$got" != "$not" ]; then
      echo "$got"
      return 0
    fi
    [ "$(date +%s)" -lt "$deadline" ] || die "$what has no ${not:+new }leader (last seen '${got:-none}')"
    sleep 0.5
  done
}

CLIENT_CID=$(cid "$CLIENT_HOST")
[ -n "$CLIENT_CID" ] || die "no $CLIENT_HOST container"
: >"$WORK/acked.0"
for w in $(seq 1 "$WRITERS"); do
  writer "$w" &
  WRITER_PIDS+=($!)
done
wait_acks 40 60 "before the kill"
phase_done before

# --- 4. kill group 1's leader --------------------------------------------------------------------
leader=$(await_leader "group 1" g1_leader)
victim=${leader%%:*}
victim_cid=$(cid "$victim")
[ -n "$victim_cid" ] || die "no container for service $victim (leader $leader)"
at_kill=$(acked)
log "group 1 leader is $leader: docker kill $victim ($at_kill appends acknowledged so far)"
docker kill "$victim_cid" >/dev/null
wait_acks $((at_kill + 40)) 90 "after killing $victim"
new=$(await_leader "group 1" g1_leader "$leader")
log "group 1's new leader is $new; $(acked) appends acknowledged"
phase_done kill

# --- 5. restart it -------------------------------------------------------------------------------
# Docker does not restart a container stopped by `docker kill`, whatever its restart policy.
[ "$(docker inspect -f '{{.State.Running}}' "$victim_cid")" = false ] ||
  die "$victim is running again before the restart (restart policy?)"
# Group 1's part of `status --json` (its object runs from `"gid":1,` to the next group).
g1_status() {
  local json
  json=$(kvc --timeout 5s --json status) || return 1
  json=${json#*\"gid\":1,}
  echo "${json%%\"gid\":2,*}"
}
# The highest commit index group 1's members report.
g1_commit() {
  g1_status | grep -o '"commit_index":[0-9]*' | cut -d: -f2 | sort -n | tail -n1
}
# Whether group 1's member at address $1 answers and has applied at least $2 (only a member
# that answered has an applied_index; a member object's keys are sorted).
caught_up() {
  local applied
  applied=$(g1_status | grep -o "\"addr\":\"$1\",\"applied_index\":[0-9]*" | cut -d: -f4) || return 1
  [ -n "$applied" ] && [ "$applied" -ge "$2" ]
}
target=$(g1_commit)
[ -n "$target" ] || die "no commit index in group 1's status"
docker start "$victim_cid" >/dev/null
wait_until "$victim back and caught up to commit $target" caught_up "$leader" "$target" || die "$victim did not catch up"
log "$victim is back and has applied past $target"
at_restart=$(acked)
wait_acks $((at_restart + 30)) 60 "after restarting $victim"
[ "$PROBE" = no ] || wait_until "every server healthy after the restart" all_healthy ||
  die "not every server is healthy after the restart"
phase_done restart

# --- 6. SIGTERM: group 1's leader hands leadership over -----------------------------------------
leader=$(await_leader "group 1" g1_leader)
victim=${leader%%:*}
victim_cid=$(cid "$victim")
at_stop=$(acked)
log "group 1 leader is $leader: docker stop (SIGTERM) $victim"
t0=$(date +%s)
docker stop -t 30 "$victim_cid" >/dev/null
log "$victim stopped after $(($(date +%s) - t0)) s"
victim_logs=$(docker logs "$victim_cid" 2>&1)
grep -q "leadership handed over" <<<"$victim_logs" ||
  die "$victim exited without handing leadership over: $(tail -n 5 <<<"$victim_logs")"
[ "$(docker inspect -f '{{.State.ExitCode}}' "$victim_cid")" = 0 ] || die "$victim did not exit 0 on SIGTERM"
wait_acks $((at_stop + 30)) 60 "after stopping $victim"
new=$(await_leader "group 1" g1_leader "$leader")
log "$victim handed leadership to $new; $(acked) appends acknowledged"
target=$(g1_commit)
docker start "$victim_cid" >/dev/null
wait_until "$victim back and caught up to commit $target" caught_up "$leader" "$target" || die "$victim did not catch up"
phase_done handoff

# --- 7. the controller's leader is lost ----------------------------------------------------------
# The controller leader's address from `member list --json` (admin certificate; sorted keys, so a
# member reads `"addr":"ctrl-N:7000","id":N,"leader":true`).
ctrl_leader() {
  local json
  json=$(ctlc --timeout 5s --json member list 2>/dev/null) || return 0
  grep -o '"addr":"[^"]*","id":[0-9]*,"leader":true' <<<"$json" | sed 's/"addr":"\([^"]*\)".*/\1/' || true
}
cleader=$(await_leader "the controller" ctrl_leader)
cvictim=${cleader%%:*}
cvictim_cid=$(cid "$cvictim")
[ -n "$cvictim_cid" ] || die "no container for controller leader $cleader"
at_ckill=$(acked)
log "controller leader is $cleader: docker kill $cvictim"
docker kill "$cvictim_cid" >/dev/null
# Every append is a new client that looks the configuration up: writes going on proves that
# the controller serves again.
wait_acks $((at_ckill + 30)) 90 "after killing the controller leader $cvictim"
cnew=$(await_leader "the controller" ctrl_leader "$cleader")
log "the controller's new leader is $cnew; $(acked) appends acknowledged"
docker start "$cvictim_cid" >/dev/null
ctrl_member_back() {
  ctlc --timeout 5s --json member list 2>/dev/null |
    grep -q "\"addr\":\"$cleader\",\"id\":[0-9]*,\"leader\":false,\"matched\":[0-9]*,\"recently_active\":true"
}
wait_until "$cvictim back in the controller group" ctrl_member_back || die "$cvictim did not come back"
[ "$PROBE" = no ] || wait_until "every server healthy again" all_healthy || die "not every server is healthy"
phase_done ctrl

# --- 8. verify -----------------------------------------------------------------------------------
touch "$STOP"
deadline=$(($(date +%s) + 40))
for p in "${WRITER_PIDS[@]}"; do
  while kill -0 "$p" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { kill "$p" 2>/dev/null || true; break; }
    sleep 0.2
  done
done
WRITER_PIDS=()
cat "$WORK"/attempted.* | sort >"$WORK/attempted"
cat "$WORK"/acked.* | sort >"$WORK/acked"
cat "$WORK"/failed.* 2>/dev/null >"$WORK/failed" || true
: >"$WORK/found"
for w in $(seq 1 "$WRITERS"); do
  for k in $(seq 0 $((KEYS_PER_WRITER - 1))); do
    key="docker:t:$k:$w"
    if value=$(kvc --timeout 15s get "$key" 2>"$WORK/get.err"); then
      tr ';' '\n' <<<"$value" | sed '/^$/d' | sed "s/^/$key /; s/\$/;/" >>"$WORK/found"
    elif ! grep -q "not found" "$WORK/get.err"; then
      die "get $key failed: $(cat "$WORK/get.err")"
    fi
  done
done
sort -o "$WORK/found" "$WORK/found"
lost=$(comm -23 "$WORK/acked" <(sort -u "$WORK/found"))
twice=$(uniq -d "$WORK/found")
foreign=$(comm -13 "$WORK/attempted" <(sort -u "$WORK/found"))
n_acked=$(wc -l <"$WORK/acked")
n_failed=$(wc -l <"$WORK/failed")
n_found=$(wc -l <"$WORK/found")
log "appends: $(wc -l <"$WORK/attempted") attempted, $n_acked acknowledged, $n_failed failed" \
  "(outcome unknown), $n_found tokens found in the values"
if [ "$n_failed" -gt 0 ]; then
  log "failed appends (first 5):"
  head -n 5 "$WORK/failed" >&2
fi
# Keys of group 1: the kill must have hit the writes (16 keys all in group 2: odds 2^-16).
g1_keys=$({ g1_status | grep -o '"keys":[0-9]*' || true; } | awk -F: '{ n += $2 } END { print n + 0 }')
[ -n "$lost" ] && die "acknowledged appends lost: $(head -c 500 <<<"$lost")"
[ -n "$twice" ] && die "appends applied twice: $(head -c 500 <<<"$twice")"
[ -n "$foreign" ] && die "tokens nobody wrote: $(head -c 500 <<<"$foreign")"
[ "${g1_keys:-0}" -gt 0 ] || die "group 1 holds no keys: the kill tested nothing"
phase_done verify
log "PASS: no acknowledged write lost or applied twice across a killed group leader, a SIGTERM" \
  "hand-off and a killed controller leader (group 1 holds $g1_keys keys)"
