#!/bin/sh
# The main job: create .venv, generate the embedded dataset if absent, train every paradigm.
#   sh run/reproduce.sh [--trials 3] [--profile auto|quick|paper] [--data DIR] [train.py flags]
# Flags are passed to every run/pmg_*.sh (which pass unknown ones on to train.py).
set -e
cd "$(dirname "$0")/.."
. run/venv.sh
start=$(date +%s)
for script in pmg_uni pmg_multi pmg_baseline_defect pmg_baseline_dirt; do
  echo "==== run/$script.sh $*"
  sh "run/$script.sh" "$@"
done
echo "==== trained every paradigm in $(( $(date +%s) - start )) s; checkpoints under artifacts/"
