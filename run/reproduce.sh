#!/bin/sh
# The main job: create .venv, generate the embedded dataset if absent, check the dataset, train
# every paradigm (--trials N, default 3): uni, multi (when the spec has a 'multitask:' section)
# and one task-centric model per task of the spec; evaluate every trial and write OUT/REPORT.md.
# It also trains the uni model for one trial with the other --mix setting (CutMix, or none when
# you pass --mix cutmix|mixup), so that the report compares training with and without mixing (RQ3:
# the top-2 on multi-label images); --variants: for every trial, --variants=N: N trials,
# --no-variants: none (run/ablations.sh trains it too). Measured on a 2-core Intel VM, quick
# profile, 3 trials, runs side by side (README "Training"): 26 min 47 s with the default one
# variant trial on a fresh clone (2026-11-29, quiet; 60 s of it generating the dataset);
# 22 min 14 s with --no-variants (2026-11-28, quiet). Later on 2026-11-28, when that VM ran each
# training run ~30 % slower, the default took 32.1 min and --variants 38.4 min.
# --jobs: training runs side by side, over all paradigms (auto: one per core on CPU, up to 4; one
# on a GPU; see run/train_trials.sh); each paradigm's runs then log to OUTPUT_DIR/<run>/expN.log.
#   sh run/reproduce.sh [--trials 3] [--jobs auto|N] [--profile auto|quick|paper] [--data DIR]
#                       [--output-dir DIR] [--out results] [--[no-]variants[=N]] [train.py flags]
# Paths are read from the folder you call it from. Flags other than --out go to every training
# run (run/train_trials.sh passes unknown ones on to train.py); --device, --workers and
# --no-progress go to evaluate.py as well.
set -e
. "$(dirname "$0")/setup.sh"  # sets data, artifacts, results from the flags
eval_flags=
variant_trials='--trials 1'  # --variants: every trial (empty); --variants=N: '--trials N'; off
jobs=auto
device=auto
mix=none  # train.py's default
n=$#
prev=
while [ "$n" -gt 0 ]; do  # keep every flag but --out and --[no-]variants[=N] for training
  a=$1; shift; n=$((n - 1))
  case $a in
    --out) shift; n=$((n - 1)); prev=; continue ;;
    --out=*) prev=; continue ;;
    --variants) variant_trials=; prev=; continue ;;
    --variants=*) check_trials --variants "${a#*=}"; variant_trials="--trials ${a#*=}"; prev=; continue ;;
    --no-variants) variant_trials=off; prev=; continue ;;
    --no-progress|--device=*|--workers=*) eval_flags="$eval_flags $a" ;;
  esac
  case $a in
    --jobs=*) jobs=${a#*=} ;;
    --device=*) device=${a#*=} ;;
    --mix=*) mix=${a#*=} ;;
  esac
  case $prev in
    --device|--workers) eval_flags="$eval_flags $prev $a" ;;
  esac
  case $prev in
    --jobs) jobs=$a ;;
    --device) device=$a ;;
    --mix) mix=$a ;;
  esac
  set -- "$@" "$a"
  prev=$a
done

# Everything that can be wrong with the dataset fails here, not after an hour of training.
dataset_ready "$data"
$PY -m data.spec "$data"
tasks=$($PY -m data.spec "$data" --tasks)
multitask=$($PY -m data.spec "$data" --multitask)
[ -n "$tasks" ] || echo "note: $data/dataset.yaml has no 'tasks:': no task-centric models to train"
[ "$multitask" = yes ] || echo "note: $data/dataset.yaml has no 'multitask:' section: skipping the multi-task model"

trial_pool "$jobs" "$device"
train() {  # train SCRIPT FLAGS...: one paradigm's trials (beside the others when runs share the machine)
  echo "==== $*"
  launch sh "$@"
}
start=$(date +%s)
train run/pmg_uni.sh "$@"
if [ "$multitask" = yes ]; then
  train run/pmg_multi.sh "$@"
fi
for task in $tasks; do
  train run/train_trials.sh --paradigm task --task "$task" "$@"
done
if [ "$variant_trials" != off ]; then  # the RQ3 ablation: the other --mix setting than the main runs'
  [ "$mix" = none ] && other=cutmix || other=none
  name=mix_$other
  # shellcheck disable=SC2086  # variant_trials: a flag and its value, or nothing
  train run/pmg_uni.sh "$@" --mix "$other" $variant_trials --output-dir "${artifacts}_variants/$name"
  eval_flags="$eval_flags --variant $name=${artifacts}_variants/$name"
fi
wait_children "paradigm(s)' training"
trained=$(date +%s)
echo "==== evaluate.py report --artifacts $artifacts --data $data --out $results$eval_flags"
# shellcheck disable=SC2086  # eval_flags: flags and plain values, split on purpose
$PY evaluate.py report --artifacts "$artifacts" --data "$data" --out "$results" $eval_flags
end=$(date +%s)
echo "==== done in $((end - start)) s (training $((trained - start)) s, evaluation $((end - trained)) s): $results/REPORT.md"
