#!/usr/bin/env bash
# The benchmark harness: wall-clock figures for the costs a user pays, with the release build.
# Not part of CI (timings depend on the machine); run it by hand: `bash bench/run.sh [N]`.
#
#   overhead   one uncontended `run -- true`, against flock(1) and a bare `true`
#   prompt     one uncontended `prompt --append` (fence, window, commit, fsync)
#   burst      N concurrent `prompt --append` on one file: total time and check of the result
#   handoff    SIGKILL of the write-lock holder until the waiter's command starts
#   memory     peak RSS of the wrapper (GNU time)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$PWD/target/release/sessionlock
n=${1:-200}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

now() { date +%s%N; }
# per_call LABEL REPS CMD...: mean wall time of CMD over REPS sequential calls, in microseconds.
per_call() {
  local label=$1 reps=$2; shift 2
  local start end
  start=$(now)
  for _ in $(seq "$reps"); do "$@" >/dev/null; done
  end=$(now)
  printf '%-34s %8d us\n' "$label" $(( (end - start) / reps / 1000 ))
}

echo "sessionlock $($bin --version | cut -d' ' -f2), $(nproc) cores, $(uname -sr)"
per_call "/bin/true (process baseline)" 200 /bin/true
per_call "flock(1) -x file true" 200 flock -x f.lock true
per_call "sessionlock run true" 200 "$bin" run s.jsonl -- true
per_call "sessionlock prompt true" 200 "$bin" prompt s.jsonl -- true
per_call "sessionlock prompt --append echo" 200 "$bin" prompt --append p.jsonl -- echo '{"r":1}'
per_call "sessionlock status --json" 200 "$bin" status --json s.jsonl

start=$(now)
for _ in $(seq "$n"); do
  "$bin" prompt -q --append burst.jsonl -- sh -c 'echo "{\"t\":$SESSIONLOCK_TICKET}"' &
done
wait
end=$(now)
python3 - "$n" <<'EOF'
import json, sys
t = [json.loads(l)["t"] for l in open("burst.jsonl")]
n = int(sys.argv[1])
ok = len(t) == n and len(set(t)) == n and t == sorted(t)
print(f"burst: {len(t)} of {n} replies, unique and in turn order: {ok}")
EOF
printf '%-34s %8d ms\n' "burst of $n concurrent prompts" $(( (end - start) / 1000000 ))

# Hand-off: A holds the lock in a loop; B waits; kill -9 A; B's command records when it starts.
worst=0 total=0 rounds=20
for _ in $(seq $rounds); do
  rm -f entered
  "$bin" run h.jsonl -- sh -c ': > held; while :; do sleep 1; done' & a=$!
  until [ -e held ]; do sleep 0.001; done
  "$bin" run -v h.jsonl -- sh -c 'date +%s%N > entered' 2> waiting & b=$!
  until grep -q waiting waiting 2>/dev/null; do sleep 0.001; done
  t0=$(now); kill -9 $a
  wait $a 2>/dev/null || true
  wait $b
  dt=$(( ($(cat entered) - t0) / 1000 ))
  total=$((total + dt)); [ $dt -gt $worst ] && worst=$dt
  pkill -f 'while :; do sleep 1; done' || true
  rm -f held
done
printf '%-34s %8d us (worst %d us, %d rounds)\n' "handoff after SIGKILL (mean)" $((total / rounds)) $worst $rounds

rss=$(/usr/bin/time -f %M "$bin" prompt --append m.jsonl -- echo '{"r":1}' 2>&1 >/dev/null | tail -1)
printf '%-34s %8d KiB\n' "peak RSS, prompt --append" "$rss"
