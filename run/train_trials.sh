#!/bin/sh
# usage: sh run/train_trials.sh [--paradigm uni|multi|task] [--task NAME] [--trials 3] [--jobs auto|N]
#          [--profile auto|quick|paper] [--data datasets/sofar_embedded] [--artifacts artifacts]
#          [--device auto] [train.py flags]
#
# train.py for --trials N runs of one paradigm (seeds 0..N-1, run folders
# ARTIFACTS/<run>/exp1..expN, <run> = uni, multi or task_NAME). run/pmg_*.sh and
# run/reproduce.sh call it; call it yourself for a task of your own dataset.
#   --paradigm    uni (default), multi, or task with --task NAME (a task of the spec's 'tasks:')
#   --trials N    runs to train (default 3)
#   --jobs        runs trained side by side (default auto: as many as there are runs, up to one per
#                 core and 4 in all, the cores shared out as torch threads; one on a GPU; see
#                 utils.trial_jobs). Side by side, each run's output goes to ARTIFACTS/<run>/expN.log
#                 and the console gets a line when it starts and ends; one at a time, train.py
#                 prints to the console and gets every core.
#   --data DIR    dataset folder (default datasets/sofar_embedded, generated when absent)
#   --artifacts   the folder of training runs (default artifacts)
# Every other flag goes to train.py (python train.py --help: --profile, --epochs, --device, ...).
# A trial's run folder from an earlier call is trained afresh (train.py --overwrite clears it
# first), unless --resume is given, which continues it.
# Paths are read from the folder you call it from.
. "$(dirname "$0")/help.sh"
set -e
. "$(dirname "$0")/setup.sh"  # sets data, artifacts from the flags
trials=3
jobs=auto
device=auto
run=uni
task=
fresh=--overwrite  # train.py refuses a run folder holding an earlier run unless told what to do with it
n=$#
prev=
while [ "$n" -gt 0 ]; do  # keep every flag but --trials and --jobs for train.py
  a=$1; shift; n=$((n - 1))
  case $a in
    --trials|--jobs) v=$1; shift; n=$((n - 1)); [ "$a" = --trials ] && trials=$v || jobs=$v; prev=; continue ;;
    --trials=*) trials=${a#*=}; prev=; continue ;;
    --jobs=*) jobs=${a#*=}; prev=; continue ;;
    --paradigm=*) run=${a#*=} ;;
    --task=*) task=${a#*=} ;;
    --device=*) device=${a#*=} ;;
    --resume|--resume=*) fresh= ;;
  esac
  case $prev in
    --paradigm) run=$a ;;
    --task) task=$a ;;
    --device) device=$a ;;
  esac
  set -- "$@" "$a"
  prev=$a
done
check_trials --trials "$trials"
[ "$run" = task ] && run=task_$task
dataset_ready "$data"
extra=$(i=$((trials + 1)); while [ -f "$artifacts/$run/exp$i/best.pt" ]; do printf ' exp%s' "$i"; i=$((i + 1)); done)
[ -z "$extra" ] || echo "note: $artifacts/$run also holds$extra from an earlier run, which evaluate.py reports" \
  "with these $trials trial(s); move them away for a report of these alone"
trial_pool "$trials" "$jobs" "$device"

if [ "$TRIAL_JOBS" -eq 1 ]; then  # one at a time: train.py's own output and progress bars, every core
  i=1
  while [ "$i" -le "$trials" ]; do
    echo "== trial $i/$trials (seed $((i - 1)))"
    # "$@" may name --data again (the same) or --threads (the caller's choice wins)
    # shellcheck disable=SC2086  # fresh: one flag or nothing
    $PY train.py --data "$data" --seed $((i - 1)) --trial "exp$i" --threads "$TRIAL_THREADS" $fresh "$@"
    i=$((i + 1))
  done
  exit 0
fi

mkdir -p "$artifacts/$run"
i=1
while [ "$i" -le "$trials" ]; do
  read -r _ <&9  # a free slot
  log=$artifacts/$run/exp$i.log
  echo "== trial $i/$trials (seed $((i - 1))): $run/exp$i started, $TRIAL_THREADS torch thread(s), log $log"
  (
    t0=$(date +%s)
    # shellcheck disable=SC2086  # fresh: one flag or nothing
    $PY train.py --data "$data" --seed $((i - 1)) --trial "exp$i" --threads "$TRIAL_THREADS" $fresh --no-progress "$@" \
      >"$log" 2>&1 &
    tp=$!
    trap 'kill "$tp" 2>/dev/null' TERM
    rc=0
    wait "$tp" || rc=$?
    if [ "$rc" -eq 0 ]; then
      echo "== $run/exp$i done in $(($(date +%s) - t0)) s: $(grep '^epoch' "$log" | tail -n 1)"
    else
      echo "error: $run/exp$i failed (exit $rc); the end of $log:" >&2
      tail -n 15 "$log" >&2
    fi
    echo >&9  # the slot is free again
    exit "$rc"
  ) &
  pids="$pids $!"
  i=$((i + 1))
done
wait_children "of $trials $run trial(s)"
