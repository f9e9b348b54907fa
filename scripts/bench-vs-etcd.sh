#!/usr/bin/env bash
# QuorumKV against etcd, side by side on this machine, in one run.
#
#   scripts/bench-vs-etcd.sh [--duration SECS] [--runs N] [--loads "put:1 put:64 ..."]
#
# Starts, on loopback, a 3-member etcd cluster (Debian's etcd-server, installed when missing;
# plaintext, fsync on) and a QuorumKV cluster of a 3-member controller and ONE 3-member replica
# group (mutual TLS, fsync on), then puts the same closed-loop load on both with the same client
# (`shardkv-client bench`, `--etcd` for etcd): puts of 100-byte values and linearizable gets
# over 10,000 keys, at 1, 64 and 256 clients. Each point runs --runs times, alternating the two
# systems, and the table shows medians and the QuorumKV/etcd ratios (throughput: higher is
# better; latency: lower is better). Everything it started is stopped on exit. Not part of the
# test suite (it takes minutes); the README quotes its output.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10
runs=3
loads="put:1 put:64 put:256 get:1 get:64 get:256"
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --loads) loads="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-vs-etcd: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! command -v etcd >/dev/null 2>&1; then
  echo "== installing etcd-server (Debian)" >&2
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  "${as_root[@]}" apt-get install -y -q etcd-server >/dev/null ||
    { "${as_root[@]}" apt-get update -q >/dev/null && "${as_root[@]}" apt-get install -y -q etcd-server >/dev/null; }
fi
echo "== building QuorumKV (release)" >&2
cargo build --release -q -p quorumkv-bin
bin=target/release

work=$(mktemp -d /tmp/qkv-vs-etcd.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Ports outside the kernel's ephemeral range.
base=$(( 21000 + RANDOM % 4000 ))
echo "== starting etcd (3 members) and QuorumKV (controller + one group), data in $work" >&2
cluster=""
for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:$((base + 10 + i)),"; done
cluster=${cluster%,}
etcd_endpoints=""
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
    --listen-client-urls "http://127.0.0.1:$((base + i))" \
    --advertise-client-urls "http://127.0.0.1:$((base + i))" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    --log-level error >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
  etcd_endpoints+="http://127.0.0.1:$((base + i)),"
done
etcd_endpoints=${etcd_endpoints%,}

$bin/quorumkv-certs --out "$work/certs" dev >/dev/null
tls=(--tls-ca "$work/certs/ca.pem" --tls-cert "$work/certs/node.pem" --tls-key "$work/certs/node-key.pem")
client_tls=(--tls-ca "$work/certs/ca.pem" --tls-cert "$work/certs/client.pem" --tls-key "$work/certs/client-key.pem")
admin_tls=(--tls-ca "$work/certs/ca.pem" --tls-cert "$work/certs/admin.pem" --tls-key "$work/certs/admin-key.pem")
ctrl_cluster="" ctrlers=""
for i in 1 2 3; do
  ctrl_cluster+="$i=localhost:$((base + 100 + i)),"
  ctrlers+="localhost:$((base + 100 + i)),"
done
ctrl_cluster=${ctrl_cluster%,} ctrlers=${ctrlers%,}
for i in 1 2 3; do
  $bin/shardctrler-server --id "$i" --cluster "$ctrl_cluster" --data-dir "$work/ctrl$i" \
    --admin-listen "127.0.0.1:$((base + 200 + i))" "${tls[@]}" >"$work/ctrl$i.log" 2>&1 &
  pids+=($!)
done
kv_cluster="" servers=""
for i in 1 2 3; do
  kv_cluster+="$i=localhost:$((base + 110 + i)),"
  servers+="localhost:$((base + 110 + i)),"
done
kv_cluster=${kv_cluster%,} servers=${servers%,}
for i in 1 2 3; do
  $bin/shardkv-server --gid 1 --id "$i" --cluster "$kv_cluster" --ctrlers "$ctrlers" \
    --data-dir "$work/g1-$i" --admin-listen "127.0.0.1:$((base + 210 + i))" "${tls[@]}" \
    >"$work/g1-$i.log" 2>&1 &
  pids+=($!)
done
client=("$bin/shardkv-client" --ctrlers "$ctrlers" "${client_tls[@]}")
for _ in $(seq 1 60); do
  "$bin/shardctrler-client" --ctrlers "$ctrlers" "${admin_tls[@]}" join "1=$servers" >/dev/null 2>&1 && break
  sleep 0.5
done
for _ in $(seq 1 60); do
  "${client[@]}" put bench:warm ok >/dev/null 2>&1 && break
  sleep 0.5
done
"${client[@]}" get bench:warm >/dev/null

bench() { # system clients read_ratio seconds
  local target=()
  [ "$1" = etcd ] && target=(--etcd "$etcd_endpoints")
  "${client[@]}" --json bench "${target[@]}" --clients "$2" --duration "$4" \
    --read-ratio "$3" --keys 10000 --value-size 100 --warmup 1 2>/dev/null
}

echo "== loading 10,000 keys into both" >&2
bench etcd 64 0 5 >/dev/null
bench quorumkv 64 0 5 >/dev/null

results="$work/results.jsonl"
for load in $loads; do
  op=${load%%:*} clients=${load##*:}
  ratio=0; [ "$op" = get ] && ratio=1
  for r in $(seq 1 "$runs"); do
    for sys in etcd quorumkv; do
      echo "== $sys $op x$clients, run $r/$runs" >&2
      out=$(bench "$sys" "$clients" "$ratio" "$duration") || true
      printf '{"system":"%s","op":"%s","clients":%s,"report":%s}\n' \
        "$sys" "$op" "$clients" "${out:-null}" >>"$results"
    done
  done
done

python3 - "$results" "$duration" "$runs" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
points = []
for r in rows:
    k = (r["op"], r["clients"])
    if k not in points:
        points.append(k)
def stats(sys_, op, c):
    rs = [r["report"] for r in rows if (r["system"], r["op"], r["clients"]) == (sys_, op, c) and r["report"]]
    key = "puts_per_s" if op == "put" else "gets_per_s"
    lat = lambda q: med([x["latency_ms"][op].get(q) for x in rs])
    return med([x["throughput"][key] for x in rs]), lat("p50"), lat("p99"), sum(x["failed"] for x in rs)
fmt = lambda v, f: "-" if v is None else f.format(v)
print(f"QuorumKV vs etcd, same machine, same client: medians of {sys.argv[3]} runs of {sys.argv[2]} s; 100-byte values, 10,000 keys")
print()
print("| load | etcd ops/s | etcd p50 / p99 ms | QuorumKV ops/s | QuorumKV p50 / p99 ms | ops/s ratio | p50 ratio | p99 ratio |")
print("|---|---|---|---|---|---|---|---|")
for op, c in points:
    e = stats("etcd", op, c)
    q = stats("quorumkv", op, c)
    ratio = lambda a, b: None if a is None or b in (None, 0) else a / b
    print(f"| {op}, {c} client{'s' if c > 1 else ''} | {fmt(e[0], '{:,.0f}')} | {fmt(e[1], '{:.2f}')} / {fmt(e[2], '{:.2f}')} "
          f"| {fmt(q[0], '{:,.0f}')} | {fmt(q[1], '{:.2f}')} / {fmt(q[2], '{:.2f}')} "
          f"| {fmt(ratio(q[0], e[0]), '{:.2f}x')} | {fmt(ratio(q[1], e[1]), '{:.2f}x')} | {fmt(ratio(q[2], e[2]), '{:.2f}x')} |")
failed = sum(stats(s, op, c)[3] for s in ("etcd", "quorumkv") for op, c in points)
print()
print(f"failed operations: {failed}")
EOF

# Where a single put's time goes: one more single-client put run against QuorumKV, with the
# leader's per-stage proposal histograms (/metrics) read before and after it.
scrape() { for i in 1 2 3; do curl -s "http://127.0.0.1:$((base + 210 + i))/metrics" >"$work/metrics-$1-$i.txt" || true; done; }
scrape before
bench quorumkv 1 0 "$duration" >"$work/anatomy.json" || true
scrape after
python3 - "$work" <<'EOF2'
import json, re, sys
w = sys.argv[1]
pat = re.compile(r'^quorumkv_raft_proposal_stage_duration_seconds_(sum|count)\{[^}]*stage="(\w+)"[^}]*\}\s+(\S+)')
def read(path):
    out = {}
    for line in open(path):
        m = pat.match(line)
        if m:
            out[(m.group(2), m.group(1))] = out.get((m.group(2), m.group(1)), 0) + float(m.group(3))
    return out
best = None
for i in (1, 2, 3):
    try:
        b, a = read(f"{w}/metrics-before-{i}.txt"), read(f"{w}/metrics-after-{i}.txt")
    except OSError:
        continue
    n = a.get(("applied", "count"), 0) - b.get(("applied", "count"), 0)
    if best is None or n > best[0]:
        best = (n, i, a, b)
if not best or best[0] == 0:
    print("\n(no stage metrics: the leader's /metrics could not be read)")
    sys.exit(0)
n, i, a, b = best
try:
    p50 = json.load(open(f"{w}/anatomy.json"))["latency_ms"]["put"]["p50"]
except Exception:
    p50 = None
print(f"\nWhere a single-client put's time goes (leader, member {i}: mean of {n:,.0f} proposals; client p50 {p50} ms)")
print("\n| stage (from the previous one) | mean ms |\n|---|---|")
total = 0.0
for stage in ("queued", "persisted", "committed", "applied", "replied"):
    c = a.get((stage, "count"), 0) - b.get((stage, "count"), 0)
    s = a.get((stage, "sum"), 0) - b.get((stage, "sum"), 0)
    mean = 1000 * s / c if c else 0.0
    total += mean
    print(f"| {stage} | {mean:.3f} |")
print(f"| total inside the leader | {total:.3f} |")
EOF2
