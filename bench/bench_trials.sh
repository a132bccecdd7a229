#!/bin/sh
# Benchmark: training several runs one at a time (--jobs 1: each with every core as torch threads)
# v side by side (--jobs auto: utils.trial_jobs, one 1-thread run per core on a small CPU), the
# same runs in one call: wall-clock seconds of each and their ratio. Not a test: it prints what it
# measured on this machine. Each side trains into its own folder under OUT (default
# $TMPDIR/bench_trials, removed first; its logs there too), on the embedded dataset unless --data
# says otherwise.
#   sh bench/bench_trials.sh [--trials 4] [--epochs 1] [--out DIR] [train.py flags]
# --trials: runs of the efficiency-centric model; with at least twice as many as run at a time, the
# slots stay full as they do in run/reproduce.sh (12 runs for 3 trials of the embedded dataset).
set -e
cd "$(dirname "$0")/.."
trials=4
epochs=1
out=${TMPDIR:-/tmp}/bench_trials
n=$#
while [ "$n" -gt 0 ]; do
  a=$1; shift; n=$((n - 1))
  case $a in
    --trials) trials=$1; shift; n=$((n - 1)) ;;
    --epochs) epochs=$1; shift; n=$((n - 1)) ;;
    --out) out=$1; shift; n=$((n - 1)) ;;
    *) set -- "$@" "$a" ;;
  esac
done
rm -rf "$out"
mkdir -p "$out"
for jobs in 1 auto; do
  t0=$(date +%s)
  sh run/train_trials.sh --paradigm uni --trials "$trials" --epochs "$epochs" --jobs "$jobs" \
    --artifacts "$out/jobs_$jobs" --no-progress "$@" >"$out/jobs_$jobs.log" 2>&1 \
    || { echo "error: --jobs $jobs failed; see $out/jobs_$jobs.log" >&2; exit 1; }
  eval "secs_$jobs=$(($(date +%s) - t0))"
done
. run/venv.sh
layout=$($PY -m utils trial-jobs --runs "$trials")
# shellcheck disable=SC2154  # secs_1, secs_auto: set by the eval above
echo "$trials runs x $epochs epoch(s), $($PY -c 'import utils; print(utils.cores())') cores:" \
  "one at a time $secs_1 s; side by side (--jobs auto: ${layout% *} runs x ${layout#* } thread(s))" \
  "$secs_auto s; ratio $(awk "BEGIN { printf \"%.2f\", $secs_1 / $secs_auto }")x"
