#!/bin/sh
# usage: sh run/reproduce.sh [--trials 3] [--jobs auto|N] [--profile auto|quick|paper]
#          [--data datasets/sofar_embedded] [--artifacts artifacts] [--out results]
#          [--variants | --variants=N | --no-variants] [--device auto] [train.py flags]
#
# The main job: create .venv, generate the embedded dataset if absent, check the dataset
# (python -m data.spec), train every paradigm --trials times (seeds 0..N-1): uni, multi (when the
# spec has a 'multitask:' section) and one task-centric model per task of the spec; evaluate every
# trial and write OUT/REPORT.md; release the efficiency-centric (uni) trial with the highest
# validation accuracy, its model card holding the report's figures, to ARTIFACTS/bundles/<id>
# (python -m models.release --best; what serving reads).
#   --trials N     trials per paradigm (default 3)
#   --jobs         training runs side by side, over all paradigms (default auto: as many as there
#                  are runs, up to one per core and 4 in all, the cores shared out; one on a GPU;
#                  see run/train_trials.sh); each paradigm's runs then log to ARTIFACTS/<run>/expN.log
#   --data DIR     dataset folder (default datasets/sofar_embedded, generated when absent)
#   --artifacts    the folder of training runs (default artifacts)
#   --out DIR      where the report goes (default results)
#   --variants     the RQ3 ablation: the uni model trained again with the other --mix setting
#                  (CutMix, or none when you pass --mix cutmix|mixup) into ARTIFACTS_variants/, so
#                  the report compares training with and without mixing. Default: one trial;
#                  --variants: every trial; --variants=N: N trials; --no-variants: none
#                  (run/ablations.sh trains it too)
# Every other flag goes to every training run (run/train_trials.sh passes it on to train.py;
# python train.py --help); --device, --workers and --no-progress go to evaluate.py as well.
# Paths are read from the folder you call it from. How long it takes: docs/results.md.
. "$(dirname "$0")/help.sh"
set -e
. "$(dirname "$0")/setup.sh"  # sets data, artifacts, results from the flags
eval_flags=
variant_trials='--trials 1'  # --variants: every trial (empty); --variants=N: '--trials N'; off
trials=3
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
    --trials=*) trials=${a#*=} ;;
    --jobs=*) jobs=${a#*=} ;;
    --device=*) device=${a#*=} ;;
    --mix=*) mix=${a#*=} ;;
  esac
  case $prev in
    --device|--workers) eval_flags="$eval_flags $prev $a" ;;
  esac
  case $prev in
    --trials) trials=$a ;;
    --jobs) jobs=$a ;;
    --device) device=$a ;;
    --mix) mix=$a ;;
  esac
  set -- "$@" "$a"
  prev=$a
done
check_trials --trials "$trials"

# Everything that can be wrong with the dataset fails here, not after an hour of training.
dataset_ready "$data"
$PY -m data.spec "$data" --splits train,val,test  # the report evaluates on test
tasks=$($PY -m data.spec "$data" --tasks)
multitask=$($PY -m data.spec "$data" --multitask)
[ -n "$tasks" ] || echo "note: $data/dataset.yaml has no 'tasks:': no task-centric models to train"
[ "$multitask" = yes ] || echo "note: $data/dataset.yaml has no 'multitask:' section: skipping the multi-task model"

case $variant_trials in  # the runs this script trains, for the pool's share of the cores
  off) variant_runs=0 ;;
  '') variant_runs=$trials ;;
  *) variant_runs=${variant_trials#--trials } ;;
esac
models=1  # uni, multi when there, one per task
[ "$multitask" = yes ] && models=2
for task in $tasks; do models=$((models + 1)); done
trial_pool $((models * trials + variant_runs)) "$jobs" "$device"
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
  train run/pmg_uni.sh "$@" --mix "$other" $variant_trials --artifacts "${artifacts}_variants/$name"
  eval_flags="$eval_flags --variant $name=${artifacts}_variants/$name"
fi
wait_children "paradigm(s)' training"
trained=$(date +%s)
echo "==== evaluate.py report --artifacts $artifacts --data $data --out $results$eval_flags"
# shellcheck disable=SC2086  # eval_flags: flags and plain values, split on purpose
$PY evaluate.py report --artifacts "$artifacts" --data "$data" --out "$results" $eval_flags
echo "==== python -m evaluation.notebooks --out $results/notebooks"  # the notebooks with their outputs, as HTML
$PY -m evaluation.notebooks --artifacts "$artifacts" --data "$data" --cache-dir "$results/cache" --out "$results/notebooks"
evaluated=$(date +%s)
echo "==== python -m models.release --best $artifacts/uni --report $results --out $artifacts/bundles"
$PY -m models.release --best "$artifacts/uni" --data "$data" --report "$results" --out "$artifacts/bundles" \
    --device "$device"
end=$(date +%s)
echo "==== done in $((end - start)) s (training $((trained - start)) s, evaluation $((evaluated - trained)) s," \
     "release $((end - evaluated)) s): $results/REPORT.md; the release bundle is in $artifacts/bundles"
