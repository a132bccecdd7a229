#!/bin/sh
# Shared by run/pmg_*.sh: train.py for --trials N (default 3; seeds 0..N-1, runs exp1..expN),
# after generating the embedded dataset when the default --data folder has none.
#   sh run/train_trials.sh --paradigm uni [--trials 3] [--profile paper|quick|auto] [--data DIR] [train.py flags]
set -e
cd "$(dirname "$0")/.."
. run/venv.sh
trials=3
data=datasets/sofar_embedded
n=$#
while [ "$n" -gt 0 ]; do
  a=$1; shift; n=$((n - 1))
  case $a in
    --trials) trials=$1; shift; n=$((n - 1)) ;;
    --trials=*) trials=${a#*=} ;;
    --data) data=$1; shift; n=$((n - 1)) ;;
    --data=*) data=${a#*=} ;;
    *) set -- "$@" "$a" ;;
  esac
done
if [ ! -f "$data/dataset.yaml" ]; then
  if [ "$data" != datasets/sofar_embedded ]; then
    echo "error: $data/dataset.yaml not found; point --data at a dataset folder (see README)" >&2
    exit 2
  fi
  echo "no dataset at $data: generating the embedded SOFAR-like dataset"
  $PY -m data.generate --out "$data"
fi
i=1
while [ "$i" -le "$trials" ]; do
  echo "== trial $i/$trials (seed $((i - 1)))"
  $PY train.py --data "$data" --seed $((i - 1)) --trial "exp$i" "$@"
  i=$((i + 1))
done
