#!/bin/sh
# usage: sh run/pmg_uni.sh [--trials 3] [--jobs auto|N] [--profile auto|quick|paper]
#          [--data datasets/sofar_embedded] [--artifacts artifacts] [--device auto] [train.py flags]
#
# PMG, efficiency-centric: one softmax head over every class.
# It is `sh run/train_trials.sh --paradigm uni` (its --help says what each flag does): --trials
# runs (seeds 0..N-1) into ARTIFACTS/<run>/exp1..expN; every other flag goes to train.py
# (python train.py --help).
. "$(dirname "$0")/help.sh"
exec sh "$(dirname "$0")/train_trials.sh" --paradigm uni "$@"
