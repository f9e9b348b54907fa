#!/usr/bin/env bash
# Creates or updates the TLS Secret `quorumkv-tls` of a QuorumKV deployment on Kubernetes
# (k8s/README.md), with the certificate generator `quorumkv-certs`.
#
#   scripts/k8s-create-tls-secret.sh [--print] [--certs-dir DIR] [--trust FILE] [--max-members N] NAMESPACE [GROUPS]
#
#   NAMESPACE        the namespace of the deployment (the pods' DNS names contain it)
#   GROUPS           number of replica groups, gids 1..GROUPS (default 1; the production overlay
#                    has 2)
#   --print          write the Secret's YAML to stdout instead of applying it
#   --certs-dir DIR  where the CA and certificates are kept (default
#                    $QKV_K8S_CERTS_DIR or ~/.quorumkv/k8s-certs/NAMESPACE). Holds the CA's private
#                    key: keep it safe, and out of the repository and of the cluster.
#   --trust FILE     the ca.pem the Secret holds, i.e. the CAs every pod trusts (default: DIR's
#                    CA). A bundle of the old and the new CA while rotating the CA
#                    (k8s/README.md "Rotating the CA").
#   --max-members N  pod ordinals 0..N-1 of every group are named (default 5), so a group can
#                    grow to N members without new certificates
#
# Files: DIR/ca.pem, ca-key.pem (the CA, created once and then reused: certificates it signed
# stay valid), node.pem/node-key.pem (role node, re-issued on every run, so the names follow
# GROUPS), admin.pem/admin-key.pem (role admin: the join Deployment, operators) and
# client.pem/client-key.pem (role client: applications), each issued once and again if it lacks
# its role (certificates from before roles). The Secret holds ca.pem, node.pem, node-key.pem,
# admin.pem, admin-key.pem, client.pem, client-key.pem - never ca-key.pem.
#
# The node certificate names, for the controller (qkv-ctrl) and every group (qkv-group-G):
# every pod SET-I.SET.NAMESPACE.svc.CLUSTER_DOMAIN and its shorter forms (SET-I.SET,
# SET-I.SET.NAMESPACE, SET-I.SET.NAMESPACE.svc), the Services, and localhost/127.0.0.1 (for the
# CLIs run inside a pod). CLUSTER_DOMAIN comes from the environment (default cluster.local).
#
# Pods read the files when they start: after a re-issue, `kubectl rollout restart` the
# StatefulSets.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLUSTER_DOMAIN=${CLUSTER_DOMAIN:-cluster.local}
SECRET=quorumkv-tls
CTRL_SET=qkv-ctrl
GROUP_SET_PREFIX=qkv-group-

usage() {
  sed -n '5,19p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

print=no
certs_dir=""
trust=""
max_members=5
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --print) print=yes ;;
    --certs-dir) certs_dir=${2:?--certs-dir needs a directory}; shift ;;
    --certs-dir=*) certs_dir=${1#*=} ;;
    --trust) trust=${2:?--trust needs a file}; shift ;;
    --trust=*) trust=${1#*=} ;;
    --max-members) max_members=${2:?--max-members needs a number}; shift ;;
    --max-members=*) max_members=${1#*=} ;;
    -h | --help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) args+=("$1") ;;
  esac
  shift
done
[ ${#args[@]} -ge 1 ] && [ ${#args[@]} -le 2 ] || usage
namespace=${args[0]}
groups=${args[1]:-1}
[[ $namespace =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || { echo "invalid namespace $namespace" >&2; exit 2; }
[[ $groups =~ ^[1-9][0-9]*$ ]] || { echo "GROUPS must be a positive number, not $groups" >&2; exit 2; }
[[ $max_members =~ ^[1-9][0-9]*$ ]] || { echo "--max-members must be a positive number" >&2; exit 2; }
certs_dir=${certs_dir:-${QKV_K8S_CERTS_DIR:-$HOME/.quorumkv/k8s-certs/$namespace}}

log() { echo "$@" >&2; }

# The generator: on PATH, already built in this repository, or built now.
certs_bin() {
  local b
  if b=$(command -v quorumkv-certs); then echo "$b"; return; fi
  for b in "$ROOT/target/release/quorumkv-certs" "$ROOT/target/debug/quorumkv-certs"; do
    if [ -x "$b" ]; then echo "$b"; return; fi
  done
  log "building quorumkv-certs (cargo build -p quorumkv-bin --bin quorumkv-certs)..."
  (cd "$ROOT" && cargo build -q -p quorumkv-bin --bin quorumkv-certs >&2)
  echo "$ROOT/target/debug/quorumkv-certs"
}
CERTS=$(certs_bin)

# names SET: the DNS names of a StatefulSet's pods and of its Services.
names() {
  local set=$1 i host
  for ((i = 0; i < max_members; i++)); do
    host="$set-$i.$set"
    echo "$host" "$host.$namespace" "$host.$namespace.svc" "$host.$namespace.svc.$CLUSTER_DOMAIN"
  done
}
service_names() {
  local svc=$1
  echo "$svc" "$svc.$namespace" "$svc.$namespace.svc" "$svc.$namespace.svc.$CLUSTER_DOMAIN"
}

sans=(localhost 127.0.0.1)
# shellcheck disable=SC2207 # the names contain no spaces or glob characters
sans+=($(names "$CTRL_SET") $(service_names "$CTRL_SET-client"))
for ((g = 1; g <= groups; g++)); do
  # shellcheck disable=SC2207
  sans+=($(names "$GROUP_SET_PREFIX$g") $(service_names "${GROUP_SET_PREFIX}client-$g"))
done
san_list=$(IFS=,; echo "${sans[*]}")

mkdir -p "$certs_dir"
chmod 700 "$certs_dir"
if [ -f "$certs_dir/ca.pem" ]; then
  log "reusing the CA in $certs_dir"
else
  "$CERTS" --out "$certs_dir" ca >&2
fi
"$CERTS" --out "$certs_dir" issue node --role node --san "$san_list" >&2
for role in admin client; do
  if [ "$("$CERTS" show "$certs_dir/$role.pem" 2>/dev/null | sed -n 's/^role: //p')" = "$role" ]; then
    log "reusing $certs_dir/$role.pem"
  else
    "$CERTS" --out "$certs_dir" issue "$role" --role "$role" >&2
  fi
done
log "node certificate: ${#sans[@]} names (controller, $groups replica group(s), ordinals 0..$((max_members - 1)), namespace $namespace)"

# What the pods trust: DIR's CA, or --trust (a bundle while rotating the CA).
trusted="$certs_dir/ca.pem"
if [ -n "$trust" ]; then
  [ -f "$trust" ] || { log "--trust $trust: no such file"; exit 1; }
  trusted=$trust
  log "the Secret's ca.pem is $trust"
fi
files=(ca.pem node.pem node-key.pem admin.pem admin-key.pem client.pem client-key.pem)
# path_of FILE: where the Secret's key FILE comes from.
path_of() { if [ "$1" = ca.pem ]; then echo "$trusted"; else echo "$certs_dir/$1"; fi; }

# The Secret's YAML: kubectl's own rendering when it is installed, else the same by hand.
secret_yaml() {
  if command -v kubectl >/dev/null 2>&1; then
    local from=() f
    for f in "${files[@]}"; do from+=("--from-file=$f=$(path_of "$f")"); done
    kubectl create secret generic "$SECRET" --namespace "$namespace" "${from[@]}" \
      --dry-run=client -o yaml
  else
    local f
    printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\ntype: Opaque\ndata:\n' \
      "$SECRET" "$namespace"
    for f in "${files[@]}"; do printf '  %s: %s\n' "$f" "$(base64 -w0 <"$(path_of "$f")")"; done
  fi
}

if [ "$print" = yes ]; then
  secret_yaml
  exit 0
fi
command -v kubectl >/dev/null 2>&1 || { log "kubectl not found (use --print to write the YAML)"; exit 1; }
kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >&2
secret_yaml | kubectl apply -f - >&2
log "secret $namespace/$SECRET is up to date (certificates in $certs_dir)"
