#!/bin/sh
# The join Job: joins every replica group in JOIN_GROUPS to the shard controller, once the
# controller serves. Idempotent, so the Job can be re-run (or re-created by `kubectl apply`) at
# any time: a group that is already in the configuration counts as joined.
#
# Servers of group N are the first INITIAL_MEMBERS pods of StatefulSet GROUP_SET_PREFIX+N, by
# their stable DNS names; later membership changes (`member add/remove/replace`) update the
# controller's record themselves, so this Job never needs to run again for them.
set -eu

: "${POD_NAMESPACE:?POD_NAMESPACE must be set (downward API metadata.namespace)}"
: "${CLUSTER_DOMAIN:=cluster.local}"
: "${GRPC_PORT:=7000}"
: "${ADMIN_PORT:=8000}"
: "${INITIAL_MEMBERS:=3}"
: "${CTRL_SET:=qkv-ctrl}"
: "${CTRL_MEMBERS:=3}"
: "${GROUP_SET_PREFIX:=qkv-group-}"
: "${JOIN_GROUPS:?JOIN_GROUPS must list the gids to join}"
# Bounded waits; on timeout the script fails and the Job's backoffLimit retries it.
: "${CTRL_WAIT_SECONDS:=300}"
: "${GROUP_WAIT_SECONDS:=120}"

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

echo "waiting (up to ${CTRL_WAIT_SECONDS}s) for the controller to serve: $QKV_CTRLERS"
start=$(date +%s)
until shardctrler-client --timeout 5 query >/dev/null 2>&1; do
  if [ $(($(date +%s) - start)) -ge "$CTRL_WAIT_SECONDS" ]; then
    echo "the controller did not answer within ${CTRL_WAIT_SECONDS}s; last error:" >&2
    shardctrler-client --timeout 5 query >&2 || true
    exit 1
  fi
  sleep 2
done

for gid in $JOIN_GROUPS; do
  set_name=$GROUP_SET_PREFIX$gid
  servers=$(addrs "$set_name" "$INITIAL_MEMBERS")

  # Give the group a moment to elect a leader, so its first shards have someone to serve them.
  # Not required: a group joined before it is ready picks its shards up when it comes up.
  start=$(date +%s)
  until
    i=0 ready=no
    while [ "$i" -lt "$INITIAL_MEMBERS" ]; do
      if shardkv-server probe "http://$(fqdn "$set_name" "$i"):$ADMIN_PORT/health/ready" >/dev/null 2>&1; then
        ready=yes
        break
      fi
      i=$((i + 1))
    done
    [ "$ready" = yes ]
  do
    if [ $(($(date +%s) - start)) -ge "$GROUP_WAIT_SECONDS" ]; then
      echo "group $gid is not ready after ${GROUP_WAIT_SECONDS}s; joining it anyway"
      break
    fi
    sleep 2
  done

  # Only "group N is already in configuration M" means done. "server X already belongs to group
  # M" is a real conflict (two gids claiming the same pods) and fails the Job.
  if out=$(shardctrler-client join "$gid=$servers" 2>&1); then
    echo "joined group $gid ($servers): $out"
  else
    case $out in
      *"is already in configuration"*) echo "group $gid was already joined: $out" ;;
      *)
        echo "joining group $gid failed: $out" >&2
        exit 1
        ;;
    esac
  fi
done

shardctrler-client query
