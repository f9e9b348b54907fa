#!/bin/sh
# Entry point of every QuorumKV server pod: `sh /etc/quorumkv/scripts/start.sh shardctrler-server`
# or `... start.sh shardkv-server`. POSIX sh (the slim Debian runtime image has /bin/sh; a
# scratch image would not run this, see k8s/README.md).
#
# The binaries derive nothing from Kubernetes. This script turns the pod's identity into flags:
#   - member id = StatefulSet ordinal + 1 (Raft ids are non-zero; the ordinal is the suffix of
#     the pod name, which the StatefulSet keeps across restarts and rescheduling);
#   - every member's address is its stable DNS name
#     SET-ORDINAL.SET.NAMESPACE.svc.CLUSTER_DOMAIN:GRPC_PORT (the headless Service is named like
#     the StatefulSet), never an IP, so a pod that comes back with a new IP is still itself;
#   - ordinals below INITIAL_MEMBERS create the group with the same static --cluster list; a higher
#     ordinal (a scale-up), or a pod named in JOIN_PODS, starts with --join and waits until an
#     operator runs `member add`;
#   - a founding member whose data directory is empty while its group already exists (a peer is
#     ready, or the controller lists the gid) lost its volume: starting it would make a voter
#     that forgot its vote and log. It refuses, and says how to re-add it as a new member.
# Extra arguments are passed on to the server. The server replaces this shell (exec), so it is
# PID 1 and receives SIGTERM itself (leader hand-off, then a clean exit). Until then this shell
# is PID 1, which the kernel shields from signals it has no handler for: the trap makes a
# SIGTERM during the waits below end the pod at once instead of after the grace period.
set -eu
trap 'echo "start.sh: SIGTERM before the server started; exiting" >&2; exit 143' TERM INT

usage() {
  echo "usage: start.sh shardctrler-server|shardkv-server [EXTRA FLAGS...]" >&2
  exit 2
}
[ $# -ge 1 ] || usage
server=$1
shift

: "${POD_NAME:?POD_NAME must be set (downward API metadata.name)}"
: "${POD_NAMESPACE:?POD_NAMESPACE must be set (downward API metadata.namespace)}"
: "${CLUSTER_DOMAIN:=cluster.local}"
: "${GRPC_PORT:=7000}"
: "${ADMIN_PORT:=8000}"
: "${LISTEN_HOST:=0.0.0.0}"
: "${INITIAL_MEMBERS:=3}"
: "${DNS_WAIT_SECONDS:=30}"
: "${DATA_DIR:=/var/lib/quorumkv/data}"

set_name=${POD_NAME%-*}
ordinal=${POD_NAME##*-}
case $ordinal in
  '' | *[!0-9]*)
    echo "start.sh: pod name $POD_NAME does not end in a StatefulSet ordinal" >&2
    exit 1
    ;;
esac
id=$((ordinal + 1))

# fqdn SET ORDINAL: the stable DNS name of one pod of a StatefulSet.
fqdn() {
  echo "$1-$2.$1.$POD_NAMESPACE.svc.$CLUSTER_DOMAIN"
}

# members SET COUNT: "1=SET-0...:PORT,2=SET-1...:PORT,..." (ids and addresses of COUNT members).
members() {
  _out=""
  _i=0
  while [ "$_i" -lt "$2" ]; do
    _out="${_out:+$_out,}$((_i + 1))=$(fqdn "$1" "$_i"):$GRPC_PORT"
    _i=$((_i + 1))
  done
  echo "$_out"
}

# addrs SET COUNT: "SET-0...:PORT,SET-1...:PORT,..." (addresses only, for --ctrlers).
addrs() {
  _out=""
  _i=0
  while [ "$_i" -lt "$2" ]; do
    _out="${_out:+$_out,}$(fqdn "$1" "$_i"):$GRPC_PORT"
    _i=$((_i + 1))
  done
  echo "$_out"
}

# A member created by a scale-up lists the members before it and itself; the group's real
# membership then reaches it from the leader (log or snapshot), whatever this list says.
count=$INITIAL_MEMBERS
[ "$id" -gt "$count" ] && count=$id
cluster=$(members "$set_name" "$count")
# An IPv6 address goes in brackets in ip:port ("::" or "[::]" both mean [::]:PORT, which also
# accepts IPv4 on dual-stack nodes).
case $LISTEN_HOST in
  \[*) listen_host=$LISTEN_HOST ;;
  *:*) listen_host="[$LISTEN_HOST]" ;;
  *) listen_host=$LISTEN_HOST ;;
esac
set -- --id "$id" --cluster "$cluster" \
  --listen "$listen_host:$GRPC_PORT" --admin-listen "$listen_host:$ADMIN_PORT" \
  --data-dir "$DATA_DIR" "$@"
# --join is ignored once the data directory holds state, so a restart of a joined member is safe.
# JOIN_PODS names pods that must join even though their ordinal is an initial one: a member
# re-added (`member remove`, then `member add`) after its volume was lost (k8s/README.md).
join=no
[ "$id" -gt "$INITIAL_MEMBERS" ] && join=yes
for p in ${JOIN_PODS:-}; do
  [ "$p" = "$POD_NAME" ] && join=yes
done
[ "$join" = yes ] && set -- --join "$@"

: "${CTRL_SET:=qkv-ctrl}"
: "${CTRL_MEMBERS:=3}"
ctrlers=$(addrs "$CTRL_SET" "$CTRL_MEMBERS")
case $server in
  shardctrler-server) ;;
  shardkv-server)
    : "${GID:?GID must be set (downward API label quorumkv.io/gid)}"
    set -- --gid "$GID" --ctrlers "$ctrlers" "$@"
    ;;
  *) usage ;;
esac

# Wait (bounded) until this pod's own name resolves to its current IP in DNS, as tidb-operator
# does: peers resolve names on every connect, and starting before the record exists only earns
# failed connects and negatively cached lookups. `getent -s dns` asks DNS itself: the pod's
# /etc/hosts (which the kubelet fills with the pod's own name) would answer at once and prove
# nothing. Start anyway after the deadline.
self=$(fqdn "$set_name" "$ordinal")
resolves_to_me() {
  getent -s dns ahosts "$self" 2>/dev/null | {
    while read -r ip _; do
      [ "$ip" = "$POD_IP" ] && exit 0
    done
    exit 1
  }
}
if [ -n "${POD_IP:-}" ] && command -v getent >/dev/null 2>&1; then
  waited=0
  until resolves_to_me; do
    if [ "$waited" -ge "$DNS_WAIT_SECONDS" ]; then
      echo "start.sh: $self does not resolve to $POD_IP in DNS after ${DNS_WAIT_SECONDS}s; starting anyway" >&2
      break
    fi
    sleep 1
    waited=$((waited + 1))
  done
fi

# A founding member (not --join) with an empty data directory either starts its group for the
# first time, or lost its volume. The group already existing tells them apart: a peer is ready,
# or (replica groups) the controller lists the gid. Then refuse: a Raft voter must never come
# back without its log and vote. Bounded: a few seconds per peer, when the directory is empty.
if [ "$join" = no ] && [ -z "$(ls -A "$DATA_DIR" 2>/dev/null)" ]; then
  exists=""
  i=0
  while [ "$i" -lt "$count" ]; do
    if [ "$i" != "$ordinal" ] &&
      "$server" probe "http://$(fqdn "$set_name" "$i"):$ADMIN_PORT/health/ready" --timeout 2s >/dev/null 2>&1; then
      exists="$set_name-$i is ready"
      break
    fi
    i=$((i + 1))
  done
  if [ -z "$exists" ] && [ "$server" = shardkv-server ] &&
    shardctrler-client --ctrlers "$ctrlers" --timeout 5s --json query 2>/dev/null | grep -q "\"gid\":$GID,"; then
    exists="the controller lists group $GID"
  fi
  if [ -n "$exists" ]; then
    if [ "$server" = shardkv-server ]; then member_cli="shardkv-client member --gid $GID"; else member_cli="shardctrler-client member"; fi
    cat >&2 <<MSG
start.sh: refusing to start $POD_NAME as founding member $id with an empty data directory:
  its group already exists ($exists). This member's volume was lost or replaced; starting it
  empty would make a voter that forgot its vote and its log. Re-add it as a new member
  (k8s/README.md, "A member lost its disk"):
    1. $member_cli remove $id
    2. add $POD_NAME to JOIN_PODS in the overlay's quorumkv-config, kubectl apply -k the overlay
    3. kubectl delete pod $POD_NAME   (it starts empty with --join and waits)
    4. $member_cli add $id=$self:$GRPC_PORT
MSG
    exit 1
  fi
fi

echo "start.sh: exec $server $*" >&2
exec "$server" "$@"
