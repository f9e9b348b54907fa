#!/usr/bin/env python3
"""Offline checks of k8s/components/monitoring (run by scripts/k8s-validate.sh in its venv).

The prometheus-operator kinds have no schema in kubernetes-validate, so they are checked here:
every PromQL expression of the PrometheusRule and of the Grafana dashboard parses
(promql-parser, the Python binding of the Rust PromQL parser) and names only metrics of
metric-families.txt, which the Rust tests keep equal to what /metrics serves, or one of the few
other exporters' metrics in EXTERNAL; every alert has a severity, a `for`, a summary and a
description; the alerts the operations docs promise exist; the PodMonitor scrapes the `admin`
port. Usage: k8s-monitoring-check.py DIR
"""
import json
import pathlib
import re
import sys

import promql_parser
import yaml

MON = pathlib.Path(sys.argv[1])
# Metrics of other exporters the rules use: Prometheus's own `up`, the kubelet's volume stats.
EXTERNAL = {"up", "kubelet_volume_stats_available_bytes", "kubelet_volume_stats_capacity_bytes"}
# What k8s/README.md "Monitoring" promises.
WANTED_ALERTS = {
    "QuorumKVNoLeader", "QuorumKVQuorumLost", "QuorumKVAppliedLagging", "QuorumKVDriverStalled",
    "QuorumKVSnapshotTransfersFailing", "QuorumKVVolumeFillingUp",
}

families = {}
for line in (MON / "metric-families.txt").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        name, kind, _who = line.split()
        families[name] = kind
errors = 0


def fail(where, msg):
    global errors
    errors += 1
    print(f"ERROR {where}: {msg}")


def metric_names(node, out):
    if isinstance(node, promql_parser.VectorSelector):
        out.add(node.name)
        return
    for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (int, float, str)):
            metric_names(child, out)
    for arg in getattr(node, "args", None) or []:
        metric_names(arg, out)


def known(metric):
    if metric in families or metric in EXTERNAL:
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", metric)
    return families.get(base) == "histogram"


def check(where, expr):
    # Grafana's variables, as Grafana substitutes them.
    expr = expr.replace("$__rate_interval", "5m").replace("$namespace", "quorumkv")
    try:
        tree = promql_parser.parse(expr)
    except ValueError as e:  # the parser's syntax errors
        fail(where, f"does not parse: {e}: {expr}")
        return
    used = set()
    metric_names(tree, used)
    if not used:
        fail(where, f"names no metric: {expr}")
    for m in sorted(used):
        if not known(m):
            fail(where, f"metric {m} is not exposed (metric-families.txt): {expr}")


exprs = alerts = panels = 0
rule = yaml.safe_load((MON / "prometheusrule.yaml").read_text())
for group in rule["spec"]["groups"]:
    for r in group["rules"]:
        where = f"PrometheusRule {r.get('alert', r.get('record'))}"
        check(where, r["expr"])
        exprs += 1
        if "alert" not in r:
            continue
        alerts += 1
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            fail(where, "needs labels.severity critical, warning or info")
        annotations = r.get("annotations", {})
        if not annotations.get("summary") or not annotations.get("description"):
            fail(where, "needs annotations summary and description")
        if "for" not in r:
            fail(where, "needs a `for` duration")
have = {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]}
if WANTED_ALERTS - have:
    fail("PrometheusRule", f"missing alerts {sorted(WANTED_ALERTS - have)}")
dash = json.loads((MON / "grafana-dashboard.json").read_text())
for p in dash["panels"]:
    panels += 1
    for t in p.get("targets", []):
        check(f"dashboard panel {p['title']!r}", t["expr"])
        exprs += 1
for v in dash["templating"]["list"]:
    if v["type"] == "query":
        check(f"dashboard variable {v['name']}", v["definition"].replace("label_values(", "").split(",")[0])
pm = yaml.safe_load((MON / "podmonitor.yaml").read_text())
if [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] != ["admin"]:
    fail("PodMonitor", "must scrape the pods' `admin` port")
if errors:
    sys.exit(1)
print(f"ok: {alerts} alerts, {panels} dashboard panels, {exprs} expressions parse and name only "
      f"exposed metrics ({len(families)} families)")
