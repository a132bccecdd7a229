#!/bin/sh
# The main job: create .venv, generate the embedded dataset if absent, train every paradigm
# (--trials N, default 3), evaluate every trial and write results/REPORT.md.
#   sh run/reproduce.sh [--trials 3] [--profile auto|quick|paper] [--data DIR] [train.py flags]
# Flags are passed to every run/pmg_*.sh (which pass unknown ones on to train.py).
set -e
cd "$(dirname "$0")/.."
. run/venv.sh
data=datasets/sofar_embedded
artifacts=artifacts
eval_flags=
prev=
for a in "$@"; do
  [ "$a" = --no-progress ] && eval_flags=--no-progress
  case $prev in --data) data=$a ;; --output-dir) artifacts=$a ;; esac
  case $a in --data=*) data=${a#*=} ;; --output-dir=*) artifacts=${a#*=} ;; esac
  prev=$a
done
start=$(date +%s)
for script in pmg_uni pmg_multi pmg_baseline_defect pmg_baseline_dirt; do
  echo "==== run/$script.sh $*"
  sh "run/$script.sh" "$@"
done
trained=$(date +%s)
echo "==== evaluate.py report --artifacts $artifacts --data $data --out results"
$PY evaluate.py report --artifacts "$artifacts" --data "$data" --out results $eval_flags
end=$(date +%s)
echo "==== done in $((end - start)) s (training $((trained - start)) s, evaluation $((end - trained)) s): results/REPORT.md"
