#!/bin/sh
# PMG, efficiency-centric: one softmax head over every class.
# sh run/pmg_uni.sh [--trials 3] [--profile paper|quick|auto] [any train.py flag]
exec sh "$(dirname "$0")/train_trials.sh" --paradigm uni "$@"
