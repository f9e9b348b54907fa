#!/usr/bin/env bash
# Tests of the pod scripts (k8s/base/scripts/start.sh, join-groups.sh) with stub binaries on
# PATH: no cluster, no network. Run by scripts/k8s-validate.sh. Each case is bounded.
#
#   start.sh: flags from the pod's identity, the IPv6 listen hint, the DNS wait that asks DNS
#   (`getent -s dns`, never /etc/hosts), a prompt exit on SIGTERM during that wait, and the
#   refusal to bootstrap an empty data directory when the group already exists;
#   join-groups.sh: joins declared, ready, missing groups only.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRIPTS="$ROOT/k8s/base/scripts"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/qkv-pod-scripts.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# Stubs. Their behaviour is driven by files in $WORK/state:
#   ready      peer URLs (one per line) whose /health/ready answers 200
#   resolve    the IP `getent -s dns ahosts` returns for the pod's name ("" = none)
#   config     what `shardctrler-client --json query` prints
STUB="$WORK/bin"
mkdir -p "$STUB" "$WORK/state"
for server in shardkv-server shardctrler-server; do
  cat >"$STUB/$server" <<'SH'
#!/bin/sh
if [ "$1" = probe ]; then
  grep -qxF "$2" "$STATE/ready" 2>/dev/null
  exit $?
fi
echo "EXEC $(basename "$0") $*" >>"$STATE/exec"
SH
done
cat >"$STUB/getent" <<'SH'
#!/bin/sh
echo "getent $*" >>"$STATE/getent"
[ "$1 $2" = "-s dns" ] || exit 2      # only DNS may answer: /etc/hosts proves nothing
ip=$(cat "$STATE/resolve" 2>/dev/null)
[ -n "$ip" ] || exit 2
echo "$ip      STREAM $4"
SH
cat >"$STUB/shardctrler-client" <<'SH'
#!/bin/sh
echo "shardctrler-client $*" >>"$STATE/ctl"
case " $* " in
  *" query"*) cat "$STATE/config" 2>/dev/null || exit 1 ;;
  *" join "*) echo "configuration 2" ;;
esac
SH
chmod +x "$STUB"/*
export STATE="$WORK/state"

reset() { rm -f "$STATE"/*; : >"$STATE/ready"; echo "10.0.0.5" >"$STATE/resolve"; }
start_pod() { # POD_NAME DATA_DIR EXTRA_ENV...: runs start.sh shardkv-server in the background (PID)
  local pod=$1 data=$2
  shift 2
  local pid1=()
  case " $* " in *" UNSHARE=1 "*) pid1=(unshare --pid --fork) ;; esac
  env -i PATH="$STUB:/usr/bin:/bin" STATE="$STATE" POD_NAME="$pod" POD_NAMESPACE=ns POD_IP=10.0.0.5 \
    GID=1 DATA_DIR="$data" DNS_WAIT_SECONDS=30 "$@" ${pid1[@]+"${pid1[@]}"} sh "$SCRIPTS/start.sh" shardkv-server \
    >"$WORK/out" 2>&1 &
  PID=$!
}
wait_bounded() { # PID SECS: sets rc to the exit status, or 124 after SECS
  local pid=$1 n=0
  while kill -0 "$pid" 2>/dev/null; do
    [ "$n" -lt "$(($2 * 10))" ] || { kill -9 "$pid" 2>/dev/null; rc=124; return; }
    sleep 0.1
    n=$((n + 1))
  done
  rc=0
  wait "$pid" || rc=$?
}
run_pod() { start_pod "$@"; wait_bounded "$PID" 10; }
peer() { echo "http://qkv-group-1-$1.qkv-group-1.ns.svc.cluster.local:8000/health/ready"; }

# 1. A first start: flags from the identity, IPv6 hint bracketed, DNS asked through `-s dns`.
reset
mkdir -p "$WORK/empty1"
run_pod qkv-group-1-2 "$WORK/empty1" LISTEN_HOST=::
[ "$rc" = 0 ] || fail "first start exited $rc: $(cat "$WORK/out")"
grep -q "EXEC shardkv-server --gid 1 --ctrlers qkv-ctrl-0.qkv-ctrl.ns.svc.cluster.local:7000,.* --id 3 --cluster 1=qkv-group-1-0.qkv-group-1.ns.svc.cluster.local:7000,2=.*,3=.* --listen \[::\]:7000 --admin-listen \[::\]:8000" "$STATE/exec" ||
  fail "unexpected server flags: $(cat "$STATE/exec")"
grep -q "^getent -s dns ahosts qkv-group-1-2.qkv-group-1.ns.svc.cluster.local$" "$STATE/getent" ||
  fail "the DNS wait did not ask DNS: $(cat "$STATE/getent")"
pass "start.sh: flags, [::] listen hint, DNS wait through getent -s dns"

# 2. SIGTERM while waiting for DNS: the pod ends at once, not after the grace period. In a pod
#    the script is PID 1, which the kernel shields from every signal it has no handler for, so
#    the case runs as PID 1 of a new PID namespace (unshare; root only).
reset
: >"$STATE/resolve"
if unshare --pid --fork true 2>/dev/null; then
  start_pod qkv-group-1-2 "$WORK/empty1" UNSHARE=1
  inner=""
  for _ in $(seq 1 30); do
    inner=$(pgrep -P "$PID" -x sh || true)
    [ -n "$inner" ] && break
    sleep 0.1
  done
  [ -n "$inner" ] || fail "start.sh did not start under unshare"
  sleep 1
  kill -TERM "$inner"
  wait_bounded "$PID" 3
  [ "$rc" = 143 ] || fail "SIGTERM to start.sh as PID 1 during the DNS wait: exit $rc (want 143 within 3 s)"
  [ ! -e "$STATE/exec" ] || fail "the server started after SIGTERM"
  pass "start.sh: SIGTERM during the DNS wait ends it at once, as PID 1"
else
  echo "SKIP: start.sh as PID 1 (unshare --pid needs root); SIGTERM handling not tested"
fi

# 3. An empty data directory while a peer is ready: refused, with the re-add procedure.
reset
peer 0 >"$STATE/ready"
run_pod qkv-group-1-1 "$WORK/empty1"
[ "$rc" = 1 ] || fail "empty member of an existing group: exit $rc, want 1: $(cat "$WORK/out")"
grep -q "refusing to start qkv-group-1-1 as founding member 2 with an empty data directory" "$WORK/out" &&
  grep -q "shardkv-client member --gid 1 remove 2" "$WORK/out" ||
  fail "refusal message: $(cat "$WORK/out")"
[ ! -e "$STATE/exec" ] || fail "the server started"
pass "start.sh: refuses an empty data directory when a peer is ready"

# 4. ... or when the controller lists the group (no peer ready).
reset
echo '{"groups":[{"gid":1,"servers":["a:1"],"shards":[0]}],"num":3}' >"$STATE/config"
run_pod qkv-group-1-0 "$WORK/empty1"
[ "$rc" = 1 ] && grep -q "the controller lists group 1" "$WORK/out" ||
  fail "empty member of a listed group: exit $rc: $(cat "$WORK/out")"
pass "start.sh: refuses an empty data directory when the controller lists the group"

# 5. A member with state starts whatever its peers do; --join members are never refused.
reset
peer 0 >"$STATE/ready"
mkdir -p "$WORK/full/sled"
run_pod qkv-group-1-1 "$WORK/full"
[ "$rc" = 0 ] && grep -q "EXEC shardkv-server" "$STATE/exec" || fail "member with state: exit $rc: $(cat "$WORK/out")"
reset
peer 0 >"$STATE/ready"
run_pod qkv-group-1-1 "$WORK/empty1" JOIN_PODS=qkv-group-1-1
[ "$rc" = 0 ] && grep -q -- "--join --id 2 " "$STATE/exec" || fail "JOIN_PODS member: exit $rc: $(cat "$WORK/out")"
pass "start.sh: members with state and --join members start"

# 6. join-groups.sh: joins the ready, active, missing groups; leaves the others alone.
reset
mkdir -p "$WORK/groups"
echo active >"$WORK/groups/1"
echo active >"$WORK/groups/2"
echo active >"$WORK/groups/3"
echo retiring >"$WORK/groups/4"
echo '{"groups":[{"gid":1,"servers":["x:1"],"shards":[0]},{"gid":4,"servers":["y:1"],"shards":[1]}],"num":3}' >"$STATE/config"
echo "http://qkv-group-2-1.qkv-group-2.ns.svc.cluster.local:8000/health/ready" >"$STATE/ready"
env -i PATH="$STUB:/usr/bin:/bin" STATE="$STATE" POD_NAMESPACE=ns GROUPS_DIR="$WORK/groups" \
  JOIN_INTERVAL_SECONDS=30 sh "$SCRIPTS/join-groups.sh" >"$WORK/out" 2>&1 &
pid=$!
for _ in $(seq 1 50); do grep -q "group 4: retiring" "$WORK/out" 2>/dev/null && break; sleep 0.1; done
kill -TERM "$pid"
wait_bounded "$pid" 3
[ "$rc" = 0 ] || fail "join-groups.sh did not stop on SIGTERM (exit $rc)"
joins=$(grep " join " "$STATE/ctl" || true)
[ "$(echo "$joins" | grep -c .)" = 1 ] &&
  grep -q "join 2=qkv-group-2-0.qkv-group-2.ns.svc.cluster.local:7000,qkv-group-2-1.*,qkv-group-2-2.*:7000$" <<<"$joins" ||
  fail "join-groups.sh joined: '$joins' (want group 2 alone): $(cat "$WORK/out")"
grep -q "group 3: declared, waiting for one of its members to be ready" "$WORK/out" &&
  grep -q "group 4: retiring but still in the configuration" "$WORK/out" || fail "join-groups.sh said: $(cat "$WORK/out")"
pass "join-groups.sh: joins declared, ready, missing groups only; stops on SIGTERM"
