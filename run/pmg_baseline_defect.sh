#!/bin/sh
# PMG, task-centric: the defect task's two classes.
# sh run/pmg_baseline_defect.sh [--trials 3] [--profile paper|quick|auto] [any train.py flag]
exec sh "$(dirname "$0")/train_trials.sh" --paradigm task --task defect "$@"
