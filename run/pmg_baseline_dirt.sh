#!/bin/sh
# usage: sh run/pmg_baseline_dirt.sh [--trials 3] [--jobs auto|N] [--profile auto|quick|paper]
#          [--data datasets/sofar_embedded] [--artifacts artifacts] [--device auto] [train.py flags]
#
# PMG, task-centric: the dirt task's two classes (a task of the embedded dataset and
# SOFAR; for a task of your own dataset: sh run/train_trials.sh --paradigm task --task NAME).
# It is `sh run/train_trials.sh --paradigm task --task dirt` (its --help says what each flag does): --trials
# runs (seeds 0..N-1) into ARTIFACTS/<run>/exp1..expN; every other flag goes to train.py
# (python train.py --help).
. "$(dirname "$0")/help.sh"
exec sh "$(dirname "$0")/train_trials.sh" --paradigm task --task dirt "$@"
