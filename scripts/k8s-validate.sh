#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests in k8s/ (what CI runs). No cluster needed.
#
#   scripts/k8s-validate.sh
#
# 1. yamllint (config k8s/.yamllint) on every YAML file under k8s/;
# 2. `sh -n` on the pod scripts (and shellcheck, when installed), then their behaviour with stub
#    binaries (scripts/k8s-scripts-test.sh);
# 3. renders the base and every overlay with `kubectl kustomize` (or a standalone `kustomize
#    build`); with neither installed, validates the resource files as they are and says so
#    (generated ConfigMaps and patches are then not checked);
# 4. kubernetes-validate --strict against Kubernetes $K8S_VERSION (bundled schemas, no network):
#    unknown or misspelled fields are errors. The monitoring.coreos.com kinds (PodMonitor,
#    PrometheusRule) have no schema there: they are left out of this step explicitly and
#    checked by step 6. The examples in k8s/examples/ (applied as written) are validated too;
# 5. consistency checks kustomize cannot make: every StatefulSet has Parallel pod management, a
#    headless Service of its own name with publishNotReadyAddresses, and a PodDisruptionBudget
#    (unhealthyPodEvictionPolicy AlwaysAllow) selecting exactly its pods; every ConfigMap and
#    volume it names exists or is the TLS Secret; every declared group (quorumkv-groups) has its
#    StatefulSet and vice versa; production spreads over zones with DoNotSchedule/minDomains 3;
# 6. monitoring: every PromQL expression of the PrometheusRule and of the Grafana dashboard
#    parses (promql-parser, the Rust parser's Python binding) and names only metrics of
#    k8s/components/monitoring/metric-families.txt (which the Rust tests keep equal to what
#    /metrics serves) or the few kubelet/Prometheus ones listed there; every alert has a
#    severity, a summary and a description; the PodMonitor scrapes the pods' admin port;
# 7. scripts/k8s-group.sh on a copy of k8s/: add a group 3, render, retire, remove, render again
#    (identical to before); and regenerating group 2 reproduces components/group-2.
#
# Python tools come from PyPI, pinned, in a venv under target/k8s-venv (created on first run,
# then reused: later runs take a few seconds). Exits non-zero on any error.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
K8S="$ROOT/k8s"
VENV="$ROOT/target/k8s-venv"
OUT="$ROOT/target/k8s-rendered"
K8S_VERSION=${K8S_VERSION:-1.30.0}
REQUIREMENTS=(kubernetes-validate==1.37.0 yamllint==1.38.0 promql-parser==0.11.0)

step() { printf '\n== %s\n' "$*"; }

# --- tools -------------------------------------------------------------------------------------
stamp="$VENV/.qkv-requirements"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${REQUIREMENTS[*]}" ]; then
  step "installing ${REQUIREMENTS[*]} into ${VENV#"$ROOT"/}"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
  echo "${REQUIREMENTS[*]}" >"$stamp"
fi
PY="$VENV/bin/python"

# --- 1. yamllint -------------------------------------------------------------------------------
step "yamllint (k8s/.yamllint)"
mapfile -t yaml_files < <(cd "$ROOT" && find k8s -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
(cd "$ROOT" && "$VENV/bin/yamllint" -c k8s/.yamllint -f parsable "${yaml_files[@]}")
echo "ok: ${#yaml_files[@]} files"

# --- 2. pod scripts ----------------------------------------------------------------------------
step "pod scripts (sh -n, and shellcheck when installed)"
mapfile -t pod_scripts < <(find "$K8S" -type f -name '*.sh' | sort)
for f in "${pod_scripts[@]}"; do
  sh -n "$f"
  if command -v shellcheck >/dev/null 2>&1; then shellcheck -s sh "$f"; fi
  echo "ok: ${f#"$ROOT"/}"
done
command -v shellcheck >/dev/null 2>&1 || echo "(shellcheck not installed: syntax checked only)"
"$ROOT/scripts/k8s-scripts-test.sh"

# --- 3. render ---------------------------------------------------------------------------------
# Every directory holding a kustomization that is meant to be deployed or is the base.
targets=(base)
for d in "$K8S"/overlays/*/; do targets+=("overlays/$(basename "$d")"); done

renderer=""
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  renderer="kubectl kustomize"
elif command -v kustomize >/dev/null 2>&1; then
  renderer="kustomize build"
fi

rm -rf "$OUT"
mkdir -p "$OUT"
manifests=()
if [ -n "$renderer" ]; then
  step "rendering with $renderer"
  for t in "${targets[@]}"; do
    f="$OUT/${t//\//-}.yaml"
    $renderer "$K8S/$t" >"$f"
    manifests+=("$f")
    echo "ok: k8s/$t -> ${f#"$ROOT"/} ($(grep -c '^kind:' "$f") resources)"
  done
else
  step "no kustomize renderer (neither kubectl nor kustomize on PATH): validating the files as written"
  echo "NOTE: overlays are NOT rendered: patches, generated ConfigMaps and name/label transforms"
  echo "      are unchecked. Install kubectl (it renders offline) for the full check."
  # Resource files only: documents with apiVersion and kind, other than kustomizations.
  mapfile -t manifests < <("$PY" - "$K8S" <<'EOF'
import pathlib, sys, yaml
for p in sorted(pathlib.Path(sys.argv[1]).rglob("*.yaml")):
    docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
    if docs and all(isinstance(d, dict) and "apiVersion" in d and "kind" in d
                    and d["kind"] not in ("Kustomization", "Component") for d in docs):
        print(p)
EOF
  )
  for f in "${manifests[@]}"; do echo "raw: ${f#"$ROOT"/}"; done
fi

# --- 4. schemas --------------------------------------------------------------------------------
step "kubernetes-validate --strict -k $K8S_VERSION (monitoring.coreos.com kinds: step 6)"
# Every document but the prometheus-operator ones, which kubernetes-validate has no schema for.
mkdir -p "$OUT/core"
core=()
for f in "${manifests[@]}"; do
  c="$OUT/core/${f##*/}"
  "$PY" - "$f" "$c" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
keep = [d for d in docs if not str(d.get("apiVersion", "")).startswith("monitoring.coreos.com/")]
yaml.safe_dump_all(keep, open(sys.argv[2], "w"), sort_keys=False)
EOF
  core+=("$c")
done
"$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${core[@]}"
for f in "${core[@]}"; do
  echo "ok: ${f#"$ROOT"/} ($(grep -c '^kind:' "$f") resources)"
done
# The examples (k8s/examples/, e.g. the backup CronJob) are applied as written, not through an
# overlay, so they are validated as they are (without a renderer they were in the list above).
if [ -n "$renderer" ] && [ -d "$K8S/examples" ]; then
  mapfile -t examples < <(find "$K8S/examples" -type f -name '*.yaml' | sort)
  if [ "${#examples[@]}" -gt 0 ]; then
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${examples[@]}"
    for f in "${examples[@]}"; do
      echo "ok: ${f#"$ROOT"/} ($(grep -c '^kind:' "$f") resources)"
    done
  fi
fi

# --- 5. consistency ----------------------------------------------------------------------------
if [ -n "$renderer" ]; then
  step "consistency of the rendered manifests"
  "$PY" - "${manifests[@]}" <<'EOF'
import sys, yaml

TLS_SECRET = "quorumkv-tls"  # created by scripts/k8s-create-tls-secret.sh, never rendered
errors = 0

def fail(where, msg):
    global errors
    errors += 1
    print(f"ERROR {where}: {msg}")

for path in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    services = by_kind.get("Service", {})
    pdbs = by_kind.get("PodDisruptionBudget", {})
    configmaps = set(by_kind.get("ConfigMap", {}))
    name = path.rsplit("/", 1)[-1]
    workloads = list(by_kind.get("StatefulSet", {}).values()) + list(by_kind.get("Job", {}).values())
    for w in workloads:
        where = f"{name} {w['kind']}/{w['metadata']['name']}"
        pod = w["spec"]["template"]["spec"]
        refs = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
        for c in pod["containers"]:
            refs += [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        for r in refs:
            if r not in configmaps:
                fail(where, f"ConfigMap {r} is not in the manifests")
        for v in pod.get("volumes", []):
            if "secret" in v and v["secret"]["secretName"] != TLS_SECRET:
                fail(where, f"unexpected Secret {v['secret']['secretName']}")
        if w["kind"] != "StatefulSet":
            continue
        errors_before = errors
        spec = w["spec"]
        labels = spec["selector"]["matchLabels"]
        if spec.get("podManagementPolicy") != "Parallel":
            fail(where, "podManagementPolicy must be Parallel (OrderedReady deadlocks a full restart)")
        svc = services.get(spec["serviceName"])
        if svc is None:
            fail(where, f"no Service {spec['serviceName']} (serviceName)")
        else:
            if svc["spec"].get("clusterIP") != "None" or not svc["spec"].get("publishNotReadyAddresses"):
                fail(where, f"Service {spec['serviceName']} must be headless with publishNotReadyAddresses")
            if svc["spec"].get("selector") != labels:
                fail(where, f"Service {spec['serviceName']} selects {svc['spec'].get('selector')}, not {labels}")
        if spec["serviceName"] != w["metadata"]["name"]:
            fail(where, "the headless Service must be named like the StatefulSet (start.sh builds peer names so)")
        if not any(p["spec"]["selector"].get("matchLabels") == labels for p in pdbs.values()):
            fail(where, f"no PodDisruptionBudget selects exactly {labels}")
        for term in pod["affinity"]["podAntiAffinity"].get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
            t["podAffinityTerm"] for t in pod["affinity"]["podAntiAffinity"].get("preferredDuringSchedulingIgnoredDuringExecution", [])
        ]:
            if term["labelSelector"].get("matchLabels") != labels:
                fail(where, f"anti-affinity selects {term['labelSelector']}, not this group's pods {labels}")
        for p in pdbs.values():
            if p["spec"]["selector"].get("matchLabels") == labels and \
                    p["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
                fail(where, "its PodDisruptionBudget needs unhealthyPodEvictionPolicy: AlwaysAllow")
        spread = pod.get("topologySpreadConstraints", [])
        if name.startswith("overlays-production") and not any(
                c.get("whenUnsatisfiable") == "DoNotSchedule" and c.get("minDomains") == 3
                and c["topologyKey"] == "topology.kubernetes.io/zone" for c in spread):
            fail(where, "production must spread over zones with DoNotSchedule and minDomains 3")
        if errors == errors_before:
            print(f"ok: {name} StatefulSet/{w['metadata']['name']} "
                  f"(replicas {spec['replicas']}, service {spec['serviceName']}, PDB, anti-affinity)")
    # Declared groups and their StatefulSets match; the join runs as a Deployment, never a Job.
    declared = set((by_kind.get("ConfigMap", {}).get("quorumkv-groups", {}).get("data") or {}).keys())
    sets = {n[len("qkv-group-"):] for n in by_kind.get("StatefulSet", {}) if n.startswith("qkv-group-")}
    if declared != sets:
        fail(name, f"declared groups {sorted(declared)} differ from StatefulSets {sorted(sets)}")
    if "Job" in by_kind:
        fail(name, "a Job: the join runs as the qkv-join Deployment")
    if "qkv-join" not in by_kind.get("Deployment", {}):
        fail(name, "no qkv-join Deployment")
    if "NetworkPolicy" not in by_kind:
        fail(name, "no NetworkPolicy fencing the admin port")
sys.exit(1 if errors else 0)
EOF
fi

# --- 6. monitoring ------------------------------------------------------------------------------
step "monitoring: PromQL of the rules and the dashboard, metric names, alert fields"
"$PY" "$ROOT/scripts/k8s-monitoring-check.py" "$K8S/components/monitoring"

# --- 7. k8s-group.sh, rendered ----------------------------------------------------------------
if [ -n "$renderer" ]; then
  step "scripts/k8s-group.sh: add, retire and remove a replica group, rendered"
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/qkv-k8s-group.XXXXXX")
  cp -r "$K8S" "$scratch/k8s"
  before=$($renderer "$scratch/k8s/overlays/production")
  "$ROOT/scripts/k8s-group.sh" --k8s "$scratch/k8s" add 3 >/dev/null
  $renderer "$scratch/k8s/overlays/production" >"$scratch/added.yaml"
  "$PY" - "$scratch/added.yaml" <<'EOF'
import sys, yaml
docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(open(sys.argv[1])) if d}
for key in [("StatefulSet", "qkv-group-3"), ("Service", "qkv-group-3"), ("Service", "qkv-group-client-3"),
            ("PodDisruptionBudget", "qkv-group-3")]:
    assert key in docs, f"{key} not rendered"
sts = docs[("StatefulSet", "qkv-group-3")]
assert sts["spec"]["replicas"] == 3, sts["spec"]["replicas"]
assert sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"] == 0
assert sts["spec"]["template"]["metadata"]["labels"]["quorumkv.io/gid"] == "3"
assert sts["spec"]["selector"]["matchLabels"]["quorumkv.io/gid"] == "3"
assert docs[("ConfigMap", "quorumkv-groups")]["data"]["3"] == "active"
print("ok: add 3 renders qkv-group-3 (StatefulSet, Services, PDB; 3 replicas, partition 0), declared active")
EOF
  if "$ROOT/scripts/k8s-group.sh" --k8s "$scratch/k8s" remove 3 >/dev/null 2>&1; then
    echo "ERROR: k8s-group.sh removed a group that was not retiring"; exit 1
  fi
  "$ROOT/scripts/k8s-group.sh" --k8s "$scratch/k8s" retire 3 >/dev/null
  $renderer "$scratch/k8s/overlays/production" >"$scratch/retired.yaml"
  grep -q '"3": retiring' "$scratch/retired.yaml" ||
    { echo "ERROR: retire 3 did not declare group 3 retiring"; exit 1; }
  "$ROOT/scripts/k8s-group.sh" --k8s "$scratch/k8s" remove 3 >/dev/null
  [ "$($renderer "$scratch/k8s/overlays/production")" = "$before" ] ||
    { echo "ERROR: add + retire + remove of group 3 does not render as before"; exit 1; }
  echo "ok: retire 3 declares it retiring, remove refuses before that; remove 3 renders the overlay as before"
  # components/group-2 and its overlay entries are what the script writes for gid 2.
  rm -rf "$scratch/k8s/components/group-2"
  "$PY" - "$scratch/k8s/overlays/production" <<'EOF'
import sys
d = sys.argv[1]
k = open(f"{d}/kustomization.yaml").read()
k = k.replace("  - ../../components/group-2\n", "").replace("  - name: qkv-group-2\n    count: 3\n", "")
open(f"{d}/kustomization.yaml", "w").write(k)
r = open(f"{d}/rollout.yaml").read()
open(f"{d}/rollout.yaml", "w").write(r[:r.index("---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: qkv-group-2\n")])
EOF
  "$ROOT/scripts/k8s-group.sh" --k8s "$scratch/k8s" add 2 >/dev/null
  diff -r "$K8S/components/group-2" "$scratch/k8s/components/group-2" ||
    { echo "ERROR: k8s/components/group-2 differs from what scripts/k8s-group.sh writes"; exit 1; }
  { diff "$K8S/overlays/production/kustomization.yaml" "$scratch/k8s/overlays/production/kustomization.yaml" &&
    diff "$K8S/overlays/production/rollout.yaml" "$scratch/k8s/overlays/production/rollout.yaml"; } ||
    { echo "ERROR: the production overlay's group-2 entries differ from what scripts/k8s-group.sh writes"; exit 1; }
  echo "ok: components/group-2 and its overlay entries are what scripts/k8s-group.sh writes"
  rm -rf "$scratch"
fi

if [ -n "$renderer" ]; then
  step "k8s manifests valid: ${targets[*]} rendered, Kubernetes $K8S_VERSION schemas"

else
  step "k8s resource files valid (overlays NOT rendered), Kubernetes $K8S_VERSION schemas"
fi
