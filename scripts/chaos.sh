#!/usr/bin/env bash
# Runs the seeded chaos suite (crates/shardkv/tests/chaos.rs) for N random seeds, one after
# the other, and reports each seed's verdict; exits 1 if any seed failed, naming the seeds
# (rerun one with QKV_CHAOS_SEED=<seed>, as each failure's output says).
#
#   scripts/chaos.sh [N] [--seconds S] [--seed-base B] [--procs]
#
#   N             how many seeds (default 10)
#   --seconds S   nemesis schedule length of each run, in seconds (default 30)
#   --seed-base B use seeds B, B+1, ... instead of random ones
#   --procs       also run the real-binary chaos test once per seed (bin/tests/chaos_procs.rs)
#
# Each run's full output is kept in target/chaos/<seed>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

n=10
seconds=30
base=""
procs=false
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seed-base) base="$2"; shift 2 ;;
    --procs) procs=true; shift ;;
    -h|--help) sed -n "2,13p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *)
      if [[ "$1" =~ ^[0-9]+$ ]]; then n="$1"; shift
      else echo "chaos.sh: unknown argument '$1' (see --help)" >&2; exit 2; fi ;;
  esac
done
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "chaos.sh: --seconds takes a whole number of seconds" >&2; exit 2
fi

mkdir -p target/chaos
echo "building the chaos tests..." >&2
cargo nextest run -p quorumkv-shardkv --test chaos --no-run >/dev/null 2>&1 || \
  cargo nextest run -p quorumkv-shardkv --test chaos --no-run
if $procs; then cargo build -q -p quorumkv-bin --tests; fi

# A run is bounded: the schedule, then at most a few minutes to settle and check.
limit=$(( seconds + 240 ))
failed=()
passed=0
start=$(date +%s)
for i in $(seq 1 "$n"); do
  if [ -n "$base" ]; then seed=$(( base + i - 1 )); else seed=$(( (RANDOM << 30) ^ (RANDOM << 15) ^ RANDOM )); fi
  log="target/chaos/$seed.log"
  t0=$(date +%s)
  if QKV_CHAOS_SEED="$seed" QKV_CHAOS_SECONDS="$seconds" timeout "$limit" \
      cargo nextest run -p quorumkv-shardkv --test chaos --run-ignored only seed_from_env \
      --no-capture --profile chaos >"$log" 2>&1; then
    ok=true
  else
    ok=false
  fi
  if $ok && $procs; then
    QKV_CHAOS_SEED="$seed" timeout 300 \
      cargo nextest run -p quorumkv-bin --test chaos_procs --no-capture --profile chaos \
      >>"$log" 2>&1 || ok=false
  fi
  verdict=$(grep -ho "chaos seed $seed: .*" "$log" | tail -1 || true)
  [ -n "$verdict" ] || verdict="(no verdict line; see $log)"
  if $ok; then
    passed=$(( passed + 1 ))
    echo "[$i/$n] PASS seed $seed in $(( $(date +%s) - t0 )) s: ${verdict#chaos seed $seed: }"
  else
    failed+=("$seed")
    echo "[$i/$n] FAIL seed $seed in $(( $(date +%s) - t0 )) s: see $log"
    grep -h "panicked\|chaos seed $seed:" "$log" | tail -3 | sed 's/^/    /'
  fi
done
echo "chaos: $passed of $n seeds passed (${seconds} s schedules, $(( $(date +%s) - start )) s in all)"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed seeds: ${failed[*]}"
  exit 1
fi
