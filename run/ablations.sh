#!/bin/sh
# usage: sh run/ablations.sh [--trials 3]
#          [--only plain,plain_time,zeros,bn_all,steps,mix_cutmix,mix_mixup,aug_shift,aug_trivialaugment,aug_augmix]
#          [--jobs auto|N] [--data datasets/sofar_embedded] [--artifacts artifacts] [--out results]
#          [--device auto] [train.py flags]
#
# The ablations a reviewer asks for, beside the main runs that run/reproduce.sh trained (pass the
# same --data, --artifacts and --trials); each variant is trained into ARTIFACTS_variants/<name>/
# and evaluated with `evaluate.py report --variant`, which adds its ablation tables to
# OUT/REPORT.md. --only picks variants (default: all of them):
#   plain        the efficiency-centric model by plain fine-tuning (--method plain), same epochs
#   plain_time   plain fine-tuning for as long as PMG trained (epochs scaled by the seconds per
#                epoch in the two runs' summary.csv: equal wall-clock)
#   zeros        PyTorch 1.x zero_grad semantics (--zero-grad zeros, the paper's code)
#   bn_all       every BatchNorm layer updates its running statistics in every PMG step, as the
#                reference's full forward does (--bn-stats all)
#   steps        every task-centric model under the equal-compute budget (--budget steps: as many
#                optimizer steps as the efficiency-centric model)
#   mix_cutmix   the efficiency-centric model with CutMix (reproduce.sh trains one trial of it, every
#                trial with --variants; kept when every trial is there)
#   mix_mixup    the efficiency-centric model with mixup
#   aug_shift, aug_trivialaugment, aug_augmix
#                the efficiency-centric model with that training augmentation (--augment shift |
#                trivialaugment | augmix): robustness on the external sets
# --trials N: trials per variant (default 3). --jobs: runs side by side, the rule of
# run/train_trials.sh (default auto), so the variants' seconds per epoch compare with the main
# runs' when both use the default. --data, --artifacts and --out default as in run/reproduce.sh;
# every other flag goes to every training run (python train.py --help).
# Paths are read from the folder you call it from.
. "$(dirname "$0")/help.sh"
set -e
. "$(dirname "$0")/setup.sh"  # sets data, artifacts, results from the flags
only=plain,plain_time,zeros,bn_all,steps,mix_cutmix,mix_mixup,aug_shift,aug_trivialaugment,aug_augmix
trials=3
jobs=auto
device=auto
n=$#
while [ "$n" -gt 0 ]; do  # keep every flag but --out, --only, --trials and --jobs for training
  a=$1; shift; n=$((n - 1))
  case $a in
    --out|--only|--trials|--jobs) v=$1; shift; n=$((n - 1)) ;;
    --out=*|--only=*|--trials=*|--jobs=*) v=${a#*=}; a=${a%%=*} ;;
    --device) device=$1; set -- "$@" "$a"; continue ;;
    --device=*) device=${a#*=}; set -- "$@" "$a"; continue ;;
    *) set -- "$@" "$a"; continue ;;
  esac
  case $a in
    --only) only=$v ;;
    --trials) trials=$v ;;
    --jobs) jobs=$v ;;
  esac
done
check_trials --trials "$trials"
if [ ! -f "$artifacts/uni/exp1/best.pt" ]; then
  echo "error: $artifacts/uni/exp1/best.pt not found; train the main runs first (sh run/reproduce.sh)" >&2
  exit 2
fi
wanted() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
variant_flags=
runs=0  # the runs this script trains, for the pool's share of the cores
for name in plain plain_time zeros bn_all mix_mixup aug_shift aug_trivialaugment aug_augmix; do
  if wanted $name; then runs=$((runs + trials)); fi
done
if wanted steps; then
  for task in $($PY -m data.spec "$data" --tasks); do runs=$((runs + trials)); done
fi
if wanted mix_cutmix && [ ! -f "${artifacts}_variants/mix_cutmix/uni/exp$trials/best.pt" ]; then
  runs=$((runs + trials))
fi
[ "$runs" -gt 0 ] || runs=1
trial_pool "$runs" "$jobs" "$device"
train() {  # train NAME PARADIGM-FLAGS...: one variant of one paradigm, all trials
  name=$1; shift
  echo "==== $name: run/train_trials.sh $* --trials $trials"
  sh run/train_trials.sh "$@" --trials "$trials" --artifacts "${artifacts}_variants/$name"
}
plain_variants() {  # plain, then plain_time, whose epochs come from plain's seconds per epoch
  train plain --paradigm uni --data "$data" "$@" --method plain
  wanted plain_time || return 0
  epochs=$($PY -c "
import sys
from utils import read_summary
pmg, plain = (read_summary(sys.argv[i]) for i in (1, 2))
per_epoch = sum(float(r['train_seconds']) for r in plain) / len(plain)
print(max(1, round(sum(float(r['train_seconds']) for r in pmg) / per_epoch)))
" "$artifacts/uni/exp1" "${artifacts}_variants/plain/uni/exp1")
  echo "plain fine-tuning for the wall-clock of PMG: $epochs epochs"
  train plain_time --paradigm uni --data "$data" "$@" --method plain --epochs "$epochs"
}
steps_variant() {  # every task-centric model under the equal-compute budget
  for task in $($PY -m data.spec "$data" --tasks); do
    train steps --paradigm task --task "$task" --data "$data" "$@" --budget steps
  done
}
add() { variant_flags="$variant_flags --variant $1=${artifacts}_variants/$1"; }

if wanted plain || wanted plain_time; then
  launch plain_variants "$@"
  add plain
fi
if wanted plain_time; then
  add plain_time
fi
if wanted zeros; then
  launch train zeros --paradigm uni --data "$data" "$@" --zero-grad zeros
  add zeros
fi
if wanted bn_all; then
  launch train bn_all --paradigm uni --data "$data" "$@" --bn-stats all
  add bn_all
fi
if wanted steps; then
  launch steps_variant "$@"
  add steps
fi
if wanted mix_cutmix; then
  [ -f "${artifacts}_variants/mix_cutmix/uni/exp$trials/best.pt" ] || \
    launch train mix_cutmix --paradigm uni --data "$data" "$@" --mix cutmix
  add mix_cutmix
fi
if wanted mix_mixup; then
  launch train mix_mixup --paradigm uni --data "$data" "$@" --mix mixup
  add mix_mixup
fi
for policy in shift trivialaugment augmix; do
  if wanted "aug_$policy"; then
    launch train "aug_$policy" --paradigm uni --data "$data" "$@" --augment "$policy"
    add "aug_$policy"
  fi
done
wait_children "variant(s)' training"
echo "==== evaluate.py report --artifacts $artifacts --data $data --out $results$variant_flags"
# shellcheck disable=SC2086  # variant_flags: flags and plain values, split on purpose
$PY evaluate.py report --artifacts "$artifacts" --data "$data" --out "$results" $variant_flags
