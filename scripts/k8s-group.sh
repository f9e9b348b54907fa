#!/usr/bin/env bash
# Adds, retires and removes a replica group of a QuorumKV Kubernetes overlay, by editing files
# only (review, commit, then `kubectl apply -k OVERLAY`): never imperative changes that the next
# apply would undo. See k8s/README.md "Add or remove a replica group".
#
#   scripts/k8s-group.sh [--k8s DIR] [--overlay NAME] add GID       new group GID (3 members)
#   scripts/k8s-group.sh [--k8s DIR] [--overlay NAME] retire GID    stop joining it; then leave
#   scripts/k8s-group.sh [--k8s DIR] [--overlay NAME] remove GID    drop it from the overlay
#
#   --k8s DIR        the manifests directory (default: k8s/ of this repository)
#   --overlay NAME   the overlay under DIR/overlays (default production)
#
# add:    writes DIR/components/group-GID (StatefulSet, Services and PodDisruptionBudget
#         qkv-group-GID from base/replica-group, and the key GID: active in ConfigMap
#         quorumkv-groups), and lists it in the overlay: its component, its replica count (3) and
#         its rollout partition (0). After `kubectl apply -k`, the join Deployment joins it once
#         a member is ready. The node certificate must name its pods first:
#         scripts/k8s-create-tls-secret.sh NAMESPACE GROUPS.
# retire: sets its state to retiring (never joined again). Then `shardctrler-client leave GID`
#         and wait until `shardkv-client status` shows it holding no shard.
# remove: (retired groups only) drops it from the overlay and deletes its component. After
#         `kubectl apply -k` its pods and Services are gone; its PVCs are kept (delete them).
# Group 1 lives in base/ and is not managed here.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K8S="$ROOT/k8s"
overlay=production

usage() {
  sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case $1 in
    --k8s) K8S=${2:?--k8s needs a directory}; shift ;;
    --overlay) overlay=${2:?--overlay needs a name}; shift ;;
    -h | --help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) break ;;
  esac
  shift
done
[ $# -eq 2 ] || usage
action=$1
gid=$2
[[ $gid =~ ^[1-9][0-9]*$ ]] || { echo "GID must be a positive number, not $gid" >&2; exit 2; }
[ "$gid" != 1 ] || { echo "group 1 is part of k8s/base and is not managed by this script" >&2; exit 2; }
dir="$K8S/components/group-$gid"
kust="$K8S/overlays/$overlay/kustomization.yaml"
rollout="$K8S/overlays/$overlay/rollout.yaml"
[ -f "$kust" ] && [ -f "$rollout" ] || { echo "no overlay $overlay with kustomization.yaml and rollout.yaml under $K8S/overlays" >&2; exit 1; }

# write_component STATE: the component of group $gid (also how components/group-2 was made).
write_component() {
  mkdir -p "$dir/group"
  cat >"$dir/kustomization.yaml" <<YAML
# Replica group gid $gid: StatefulSet and headless Service qkv-group-$gid, client Service
# qkv-group-client-$gid, PodDisruptionBudget qkv-group-$gid, from base/replica-group, and its
# declaration in ConfigMap quorumkv-groups (state $1). Written by scripts/k8s-group.sh, which
# also lists it in an overlay (components, replicas, rollout.yaml); node certificates must name
# its pods (scripts/k8s-create-tls-secret.sh NAMESPACE GROUPS).
apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
resources:
  - group
patches:
  - target:
      kind: ConfigMap
      name: quorumkv-groups
    patch: |-
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: quorumkv-groups
      data:
        "$gid": $1
YAML
  cat >"$dir/group/kustomization.yaml" <<YAML
# Replica group gid $gid, from the same template as gid 1 (../../../base/replica-group).
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../base/replica-group
nameSuffix: "-$gid"
labels:
  - pairs:
      quorumkv.io/gid: "$gid"
    includeSelectors: true
    includeTemplates: true
  # What the base gives everything it holds.
  - pairs:
      app.kubernetes.io/part-of: quorumkv
YAML
}

state_of() { sed -n "s/^        \"$gid\": \\(.*\\)$/\\1/p" "$dir/kustomization.yaml" 2>/dev/null; }

# Text edits of the overlay, between its marker comments (kept by every edit).
edit_overlay() {
  python3 - "$kust" "$rollout" "$gid" "$1" <<'PY'
import re
import sys
kust, rollout, gid, action = sys.argv[1:]
component = f"  - ../../components/group-{gid}\n"
replica = f"  - name: qkv-group-{gid}\n    count: 3\n"
patch = (f"---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: qkv-group-{gid}\n"
         f"spec:\n  updateStrategy:\n    rollingUpdate:\n      partition: 0\n")

def marker_line(text, what):
    m = re.search(rf"(?m)^[ ]*# \(k8s-group.sh: {what} above\)\n", text)
    if not m:
        sys.exit(f"{kust}: the marker comment '# (k8s-group.sh: {what} above)' is missing")
    return m.start()

def insert_before(text, what, block):
    at = marker_line(text, what)
    return text[:at] + block + text[at:]

k = open(kust).read()
r = open(rollout).read()
marker_line(k, "components")
marker_line(k, "replicas")
if action == "add":
    if component in k:
        sys.exit(f"group {gid} is already in {kust}")
    k = k.replace("components: []\n", "components:\n")
    k = insert_before(k, "components", component)
    k = insert_before(k, "replicas", replica)
    r = r.rstrip("\n") + "\n" + patch
else:
    if component not in k:
        sys.exit(f"group {gid} is not in {kust}")
    k = k.replace(component, "").replace(replica, "")
    k = re.sub(r"(?m)^components:\n(?=[ ]*# \(k8s-group.sh: components above\))", "components: []\n", k)
    if patch not in r:
        sys.exit(f"{rollout}: group {gid}'s partition entry is missing or was edited; remove it by hand")
    r = r.replace(patch, "")
open(kust, "w").write(k)
open(rollout, "w").write(r)
PY
}

case $action in
  add)
    [ ! -e "$dir" ] || { echo "$dir exists already" >&2; exit 1; }
    write_component active
    edit_overlay add
    echo "group $gid added to overlays/$overlay (components/group-$gid, 3 replicas, partition 0)."
    echo "Next: scripts/k8s-create-tls-secret.sh NAMESPACE <number of groups>  (node certificates name its pods),"
    echo "      then kubectl apply -k ${K8S#"$ROOT"/}/overlays/$overlay; the join Deployment joins it once a member is ready."
    ;;
  retire)
    [ -d "$dir" ] || { echo "no $dir" >&2; exit 1; }
    write_component retiring
    echo "group $gid is retiring: kubectl apply -k ${K8S#"$ROOT"/}/overlays/$overlay, then"
    echo "  shardctrler-client leave $gid"
    echo "and wait until \`shardkv-client status\` shows group $gid holding no shard before \`remove\`."
    ;;
  remove)
    [ -d "$dir" ] || { echo "no $dir" >&2; exit 1; }
    [ "$(state_of)" = retiring ] || { echo "group $gid is not retiring: run \`$0 retire $gid\` and make it leave first" >&2; exit 1; }
    edit_overlay remove
    rm -r "$dir"
    echo "group $gid removed from overlays/$overlay. After kubectl apply -k, delete its volumes:"
    echo "  kubectl -n NAMESPACE delete pvc data-qkv-group-$gid-0 data-qkv-group-$gid-1 data-qkv-group-$gid-2  (and any higher ordinals)"
    ;;
  *) usage ;;
esac
