#!/bin/sh
# PMG, task-centric: the defect task's two classes (SOFAR's and the embedded dataset's task names;
# for a task of your own dataset: sh run/train_trials.sh --paradigm task --task NAME).
# sh run/pmg_baseline_defect.sh [--trials 3] [--profile paper|quick|auto] [any train.py flag]
exec sh "$(dirname "$0")/train_trials.sh" --paradigm task --task defect "$@"
