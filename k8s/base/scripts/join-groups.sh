#!/bin/sh
# The join Deployment's loop: joins the declared replica groups to the shard controller and
# keeps them joined. Declared = one file per gid in GROUPS_DIR (the ConfigMap quorumkv-groups,
# mounted: the kubelet updates the files in place when the map changes), holding `active` or
# `retiring`. Every JOIN_INTERVAL_SECONDS:
#   - the controller's latest configuration is read (`shardctrler-client --json query`);
#   - every active gid missing from it is joined with the stable DNS names of its first
#     INITIAL_MEMBERS pods, once one of them is ready (joining a group nobody serves would make
#     its shards unavailable until it comes up). `join` is idempotent, so a race with another
#     joiner is harmless;
#   - nothing else: a gid already in is left alone whatever servers the controller records
#     (`member add/remove` keeps them current), a retiring gid is never joined again, and no
#     group is ever made to leave (that is the operator's `shardctrler-client leave`).
# Messages are printed when something changes, not on every round. SIGTERM ends it at once.
set -eu

: "${POD_NAMESPACE:?POD_NAMESPACE must be set (downward API metadata.namespace)}"
: "${GROUPS_DIR:=/etc/quorumkv/groups}"
: "${CLUSTER_DOMAIN:=cluster.local}"
: "${GRPC_PORT:=7000}"
: "${ADMIN_PORT:=8000}"
: "${INITIAL_MEMBERS:=3}"
: "${CTRL_SET:=qkv-ctrl}"
: "${CTRL_MEMBERS:=3}"
: "${GROUP_SET_PREFIX:=qkv-group-}"
: "${JOIN_INTERVAL_SECONDS:=30}"

trap 'echo "join-groups.sh: stopping"; exit 0' TERM INT

fqdn() {
  echo "$1-$2.$1.$POD_NAMESPACE.svc.$CLUSTER_DOMAIN"
}

addrs() {
  _out=""
  _i=0
  while [ "$_i" -lt "$2" ]; do
    _out="${_out:+$_out,}$(fqdn "$1" "$_i"):$GRPC_PORT"
    _i=$((_i + 1))
  done
  echo "$_out"
}

QKV_CTRLERS=$(addrs "$CTRL_SET" "$CTRL_MEMBERS")
export QKV_CTRLERS

# Whether one of group $1's first INITIAL_MEMBERS pods is ready.
group_ready() {
  _i=0
  while [ "$_i" -lt "$INITIAL_MEMBERS" ]; do
    if shardkv-server probe "http://$(fqdn "$GROUP_SET_PREFIX$1" "$_i"):$ADMIN_PORT/health/ready" --timeout 2s >/dev/null 2>&1; then
      return 0
    fi
    _i=$((_i + 1))
  done
  return 1
}

# Prints $1 unless it is what the previous round printed.
last=""
say() {
  [ "$1" = "$last" ] && return 0
  last=$1
  echo "$1"
}

reconcile() {
  if ! config=$(shardctrler-client --timeout 10s --json query 2>&1); then
    say "the controller does not answer yet ($QKV_CTRLERS): $config"
    return 0
  fi
  joins=""
  notes=""
  for f in "$GROUPS_DIR"/*; do
    [ -f "$f" ] || continue
    gid=${f##*/}
    case $gid in '' | *[!0-9]*) continue ;; esac
    state=$(cat "$f")
    in_config=no
    case $config in *"\"gid\":$gid,"*) in_config=yes ;; esac
    case $state in
      active)
        if [ "$in_config" = no ]; then
          if group_ready "$gid"; then
            joins="$joins $gid=$(addrs "$GROUP_SET_PREFIX$gid" "$INITIAL_MEMBERS")"
          else
            notes="$notes group $gid: declared, waiting for one of its members to be ready;"
          fi
        fi
        ;;
      retiring)
        if [ "$in_config" = yes ]; then
          notes="$notes group $gid: retiring but still in the configuration (shardctrler-client leave $gid);"
        fi
        ;;
      *) notes="$notes group $gid: unknown state '$state' (active or retiring), ignored;" ;;
    esac
  done
  if [ -n "$joins" ]; then
    # shellcheck disable=SC2086 # one argument per group
    if out=$(shardctrler-client --timeout 30s join $joins 2>&1); then
      echo "joined$joins: $out"
      last=""
    else
      say "joining$joins failed: $out"
    fi
  fi
  say "${notes:-every declared group is joined}"
}

echo "join-groups.sh: declared groups in $GROUPS_DIR, controller $QKV_CTRLERS, every ${JOIN_INTERVAL_SECONDS}s"
while :; do
  reconcile
  # In the background, so that SIGTERM interrupts the wait.
  sleep "$JOIN_INTERVAL_SECONDS" &
  wait $! || true
done
