#!/bin/sh
# train.py for --trials N (default 3; seeds 0..N-1, runs exp1..expN) in any paradigm, after
# generating the embedded dataset when the default --data folder has none. run/pmg_*.sh and
# run/reproduce.sh call it; call it yourself for a task of your own dataset:
#   sh run/train_trials.sh --paradigm uni|multi|task [--task NAME] [--trials 3] [--profile paper|quick|auto]
#                          [--data DIR] [train.py flags]
# Paths are read from the folder you call it from.
set -e
. "$(dirname "$0")/setup.sh"  # sets data from the flags
trials=3
n=$#
while [ "$n" -gt 0 ]; do  # keep every flag but --trials for train.py
  a=$1; shift; n=$((n - 1))
  case $a in
    --trials) trials=$1; shift; n=$((n - 1)) ;;
    --trials=*) trials=${a#*=} ;;
    *) set -- "$@" "$a" ;;
  esac
done
dataset_ready "$data"
i=1
while [ "$i" -le "$trials" ]; do
  echo "== trial $i/$trials (seed $((i - 1)))"
  $PY train.py --data "$data" --seed $((i - 1)) --trial "exp$i" "$@"  # "$@" may name --data again: the same
  i=$((i + 1))
done
