#!/usr/bin/env bash
# QuorumKV's storage targets, measured on this machine in one run (issue: raft log on
# raft-engine, snapshots that scale):
#
#   scripts/bench-storage.sh [--keys N] [--value-size BYTES] [--clients N]
#
#   1. load   a controller and two 3-member groups on loopback (mutual TLS, fsync on); group 1
#             alone is joined and loaded with `shardkv-client bench --fill` (N keys of BYTES
#             bytes, default 1,000,000 x 100) while its member 3 is stopped;
#   2. space  each group-1 member's data directory against the bytes of data it holds;
#   3. snapshot  member 3 restarts far behind the compacted log: the leader sends it a
#             snapshot; time to catch up, the peak resident memory (VmHWM) of the leader and of
#             member 3, and whether the group's term changed (an election);
#   4. restart  member 2 is SIGKILLed and restarted: time until /health/ready answers 200;
#   5. migration  group 2 joins and takes half the shards: bytes moved / time until every
#             shard serves, and group 1's put p99 during the move against before it.
#
# Prints one table; stops everything it started on exit. Not part of the test suite (minutes);
# the README quotes its output.
set -euo pipefail
cd "$(dirname "$0")/.."

keys=1000000
value_size=100
clients=64
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) keys="$2"; shift 2 ;;
    --value-size) value_size="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-storage: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$keys" "$value_size" "$clients"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "bench-storage: '$v' is not a positive number" >&2; exit 2; }
done

echo "== building QuorumKV (release)" >&2
cargo build --release -q -p quorumkv-bin
bin=target/release

work=$(mktemp -d /tmp/qkv-storage.XXXXXX)
declare -A pid
cleanup() {
  for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pid[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Ports outside the kernel's ephemeral range.
base=$(( 21000 + RANDOM % 4000 ))
$bin/quorumkv-certs --out "$work/certs" dev >/dev/null
tls=(--tls-ca "$work/certs/ca.pem" --tls-cert "$work/certs/node.pem" --tls-key "$work/certs/node-key.pem")
admin_tls=(--tls-ca "$work/certs/ca.pem" --tls-cert "$work/certs/admin.pem" --tls-key "$work/certs/admin-key.pem")
grpc_port() { echo $(( base + 100 * $1 + $2 )); }   # gid (0 = controller), id
admin_port() { echo $(( base + 50 + 100 * $1 + $2 )); }
cluster_of() { local out="" i; for i in 1 2 3; do out+="$i=localhost:$(grpc_port "$1" $i),"; done; echo "${out%,}"; }
servers_of() { local out="" i; for i in 1 2 3; do out+="localhost:$(grpc_port "$1" $i),"; done; echo "${out%,}"; }
ctrlers=$(servers_of 0)

start() { # gid id
  local gid=$1 id=$2 name="g$1-$2"
  if [ "$gid" = 0 ]; then
    $bin/shardctrler-server --id "$id" --cluster "$(cluster_of 0)" --data-dir "$work/$name" \
      --listen "127.0.0.1:$(grpc_port 0 "$id")" \
      --admin-listen "127.0.0.1:$(admin_port 0 "$id")" "${tls[@]}" >>"$work/$name.log" 2>&1 &
  else
    $bin/shardkv-server --gid "$gid" --id "$id" --cluster "$(cluster_of "$gid")" \
      --ctrlers "$ctrlers" --data-dir "$work/$name" --listen "127.0.0.1:$(grpc_port "$gid" "$id")" \
      --admin-listen "127.0.0.1:$(admin_port "$gid" "$id")" "${tls[@]}" >>"$work/$name.log" 2>&1 &
  fi
  pid[$name]=$!
}
ready() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(admin_port "$1" "$2")/health/ready" 2>/dev/null | grep -q 200; }
wait_ready() { # gid id seconds
  local deadline=$(( $(date +%s) + $3 ))
  until ready "$1" "$2"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "g$1-$2 not ready in $3 s; log:" >&2; tail -5 "$work/g$1-$2.log" >&2; exit 1; }
    sleep 0.05
  done
}
hwm_mib() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/${pid[$1]}/status"; }
kv=("$bin/shardkv-client" --ctrlers "$ctrlers" "${admin_tls[@]}")
ctl=("$bin/shardctrler-client" --ctrlers "$ctrlers" "${admin_tls[@]}")
status_json() { "${kv[@]}" --timeout 10 --json status; }
now_ms() { date +%s%3N; }

for i in 1 2 3; do start 0 $i; done
for g in 1 2; do for i in 1 2 3; do start $g $i; done; done
for i in 1 2 3; do wait_ready 0 $i 60; done
"${ctl[@]}" --timeout 30 join "1=$(servers_of 1)" >/dev/null
for i in 1 2 3; do wait_ready 1 $i 60; done

# 1. Load group 1 with member 3 stopped, so it will need a snapshot.
kill -KILL "${pid[g1-3]}"; wait "${pid[g1-3]}" 2>/dev/null || true
echo "== loading $keys keys of $value_size bytes into group 1 ($clients clients)" >&2
"${kv[@]}" --timeout 30 --json bench --fill --keys "$keys" --value-size "$value_size" \
  --clients "$clients" >"$work/fill.json"
data_bytes=$(( keys * (value_size + 14) ))
fill_rate=$(python3 -c "import json; r=json.load(open('$work/fill.json')); print(round(r['throughput']['puts_per_s'])); assert r['failed'] == 0, r['failed']")

# 2. Space, once compaction has had its chance (the members snapshot by log bytes).
sleep 5
du_mib() { du -sm "$work/$1" | cut -f1; }
space_1=$(du_mib g1-1) space_2=$(du_mib g1-2)

# 3. Member 3 back: it needs a snapshot of everything.
group1() { # prints FIELD... of group 1 from one status call
  status_json | python3 -c "
import json, sys
g = [g for g in json.load(sys.stdin)['groups'] if g['gid'] == 1][0]
print(*(g[f] for f in sys.argv[1:]))" "$@"
}
read -r term_before leader < <(group1 term leader_id)
t0=$(now_ms)
start 1 3
caught_up() {
  status_json | python3 -c "
import json, sys
g = [g for g in json.load(sys.stdin)['groups'] if g['gid'] == 1][0]
m = {x['id']: x for x in g['members']}
ok = m[3].get('reachable') and m[3]['applied_index'] >= m[$leader]['commit_index'] - 10
sys.exit(0 if ok else 1)" 2>/dev/null
}
until caught_up; do
  [ $(( $(now_ms) - t0 )) -lt 600000 ] || { echo "member 3 did not catch up in 10 min" >&2; exit 1; }
  sleep 0.2
done
snap_ms=$(( $(now_ms) - t0 ))
term_after=$(group1 term)
hwm_leader=$(hwm_mib "g1-$leader") hwm_3=$(hwm_mib g1-3)
space_3=$(du_mib g1-3)

# 4. SIGKILL and restart a member holding everything: time to ready.
victim=2; [ "$leader" = 2 ] && victim=1
kill -KILL "${pid[g1-$victim]}"; wait "${pid[g1-$victim]}" 2>/dev/null || true
t0=$(now_ms)
start 1 $victim
wait_ready 1 $victim 120
restart_ms=$(( $(now_ms) - t0 ))

# 5. Migration: group 2 takes half the shards while group 1 serves puts.
bench_put() { "${kv[@]}" --timeout 10 --json bench --clients 16 --read-ratio 0 \
  --keys "$keys" --value-size "$value_size" --duration "$1" 2>/dev/null; }
bench_put 5s >"$work/before.json"
bench_put 30s >"$work/during.json" &
bench_pid=$!
sleep 1
t0=$(now_ms)
"${ctl[@]}" --timeout 30 join "2=$(servers_of 2)" >/dev/null
settled() {
  status_json | python3 -c "
import json, sys
s = json.load(sys.stdin)
g2 = [g for g in s['groups'] if g['gid'] == 2][0]
shards = [x for g in s['groups'] for x in g['shards']]
moved = [x for x in g2['shards']]
ok = moved and all(x['state'] == 'serving' for x in shards) and len(shards) == len({x['shard'] for x in shards})
print(sum(x['bytes'] for x in moved))
sys.exit(0 if ok else 1)" 2>/dev/null
}
until moved_bytes=$(settled); do
  [ $(( $(now_ms) - t0 )) -lt 600000 ] || { echo "migration did not finish in 10 min" >&2; exit 1; }
  sleep 0.1
done
move_ms=$(( $(now_ms) - t0 ))
wait "$bench_pid" || true
hwm_g2=0
for i in 1 2 3; do h=$(hwm_mib "g2-$i"); [ "$h" -gt "$hwm_g2" ] && hwm_g2=$h; done

python3 - "$work" <<EOF
import json, sys
w = sys.argv[1]
before = json.load(open(f"{w}/before.json"))["latency_ms"]["put"]
during = json.load(open(f"{w}/during.json"))["latency_ms"]["put"]
data_mib = $data_bytes / 2**20
moved_mb = $moved_bytes / 1e6
rows = [
    ("load: bench --fill", f"$keys keys x $value_size B = {data_mib:.0f} MiB at $fill_rate puts/s", ""),
    ("space: data dir / data", f"members 1, 2: $space_1, $space_2 MiB = {max($space_1, $space_2) / data_mib:.1f}x; member 3 after the snapshot: $space_3 MiB = {$space_3 / data_mib:.1f}x", "<= 3x"),
    ("snapshot to member 3", f"caught up in {$snap_ms / 1000:.1f} s; VmHWM leader $hwm_leader MiB, member 3 $hwm_3 MiB; term $term_before -> $term_after", "RSS < 512 MiB, no election"),
    ("SIGKILL + restart to ready", f"{$restart_ms / 1000:.2f} s", "< 2 s at 1,000,000 keys"),
    ("migration (join group 2)", f"{moved_mb:.1f} MB in {$move_ms / 1000:.1f} s = {moved_mb / ($move_ms / 1000):.1f} MB/s; receivers' VmHWM <= $hwm_g2 MiB", ">= 50 MB/s"),
    ("group 1 put p99 during the move", f"{during.get('p99', '-')} ms vs {before.get('p99', '-')} ms before", "at most 2x"),
]
w0 = max(len(r[0]) for r in rows)
for name, value, target in rows:
    print(f"{name:<{w0}}  {value}" + (f"   [target {target}]" if target else ""))
EOF
