#!/bin/sh
# PMG, multi-task: binary heads + one softmax head.
# sh run/pmg_multi.sh [--trials 3] [--profile paper|quick|auto] [any train.py flag]
exec sh "$(dirname "$0")/train_trials.sh" --paradigm multi "$@"
