#!/bin/sh
# usage: [TRIALS=1] [CLASS=washer_fluid] [ROOT=artifacts/extend] [VARIANTS="heads replay50"] [REUSE=1]
#        sh run/extend.sh [train.py flags for both trainings, e.g. --epochs 5]
#
# Adding a task without retraining from scratch, measured (extend.py): hold one class out of the
# embedded dataset, train uni on the rest, add the class back to the data (python -m data.concat
# add), then per trial: extend the model (imprint + replay fine-tune), the imprinted model without
# fine-tune, the naive extension (--replay 0) and a full retrain on the whole label space, each
# released beside its checkpoint (ROOT/expN/<row>/bundles/); evaluate them all into ROOT/EXTEND.md.
# Settings are environment variables (defaults in brackets):
#   TRIALS [1]               trials, seeds 0..N-1, in ROOT/exp1..expN
#   CLASS [washer_fluid]     the class held out and added back
#   ROOT [artifacts/extend]  where the data, the runs and EXTEND.md go
#   PROFILE [quick]          train.py --profile of both trainings
#   TRAIN_IMAGES [100], VAL_IMAGES [20], TEST_IMAGES [40] per class, EXT_IMAGES [40], OOD_IMAGES [50]:
#                            the generated dataset's sizes (the generator's defaults)
#   STEPS, REPLAY, LR, TRAIN extend.py's --steps, --replay, --lr, --train (its defaults when unset)
#   VARIANTS [none]          more extension rows from the same parent, any of: all heads classifier
#                            replay50 replay90 share10 share40 lr5e-4 lr1e-2 (each changes one default)
#   REUSE [0]                1: keep a trial's rows that are there (best.pt and time) and run only
#                            the missing ones (the data is kept too), e.g. to add VARIANTS to a
#                            finished experiment
# Paths are read from the folder you call it from.
. "$(dirname "$0")/help.sh"
set -e
. "$(dirname "$0")/setup.sh"
trials=${TRIALS:-1}
cls=${CLASS:-washer_fluid}
root=$(from_caller "${ROOT:-artifacts/extend}")
profile=${PROFILE:-quick}
old=$root/data/old
new=$root/data/$cls
full=$root/data/full
ext_flags="--no-progress${STEPS:+ --steps $STEPS}${REPLAY:+ --replay $REPLAY}${LR:+ --lr $LR}${TRAIN:+ --train $TRAIN}"

reuse=${REUSE:-0}

# variant_flags NAME: the extend.py flags of a VARIANTS row (each changes one default)
variant_flags() {
  case $1 in
    all) echo "--train all" ;;
    heads) echo "--train heads" ;;
    classifier) echo "--train classifier" ;;
    replay50) echo "--replay 0.5" ;;
    replay90) echo "--replay 0.9" ;;
    share10) echo "--share 0.1" ;;
    share40) echo "--share 0.4" ;;
    lr5e-4) echo "--lr 5e-4" ;;
    lr1e-2) echo "--lr 1e-2" ;;
    *) echo "error: VARIANTS: unknown variant '$1' (all, heads, classifier, replay50, replay90, share10, share40, lr5e-4, lr1e-2)" >&2
       return 1 ;;
  esac
}
for v in ${VARIANTS:-}; do variant_flags "$v" >/dev/null || exit 2; done

start=$(date +%s)
if [ "$reuse" = 1 ] && [ -f "$full/dataset.yaml" ]; then
  echo "==== data: reusing $old and $full (REUSE=1)"
else
  echo "==== data: $old without $cls, $new with it alone, $full = both (python -m data.concat add)"
  $PY -m data.generate --out "$old" --hold-out "$cls" --hold-out-dir "$new" --force --no-montage \
      --train "${TRAIN_IMAGES:-100}" --val "${VAL_IMAGES:-20}" --test "${TEST_IMAGES:-40}" \
      --ext "${EXT_IMAGES:-40}" --ood "${OOD_IMAGES:-50}"
  $PY -m data.concat add --dataset "$old" --task-data "$new" --out "$full" --force --link hardlink
fi

# timed ROW COMMAND...: run it and append "ROW<TAB>seconds" to the trial's times.tsv; with REUSE=1
# a row whose best.pt is there already is kept as it is
timed() {
  row=$1; shift
  if [ "$reuse" = 1 ] && [ -n "$(find "$dir/$row" -name best.pt 2>/dev/null | head -n 1)" ]; then
    echo "==== $row: reusing $dir/$row"
    return 0
  fi
  rm -rf "${dir:?}/$row"
  t0=$(date +%s)
  "$@"
  printf '%s\t%s\n' "$row" "$(($(date +%s) - t0))" >> "$dir/times.tsv"
}

# retrain [train.py flags]: the full retrain of trial $i, then its release bundle (python -m models.release)
retrain() {
  $PY train.py --data "$full" --paradigm uni --profile "$profile" --seed $seed --trial "exp$i" \
      --artifacts "$dir/full" --no-progress "$@"
  $PY -m models.release "$dir/full/uni/exp$i/best.pt" --out "$dir/full/bundles"
}

i=1
while [ "$i" -le "$trials" ]; do
  dir=$root/exp$i
  seed=$((i - 1))
  [ "$reuse" = 1 ] || rm -rf "$dir"
  mkdir -p "$dir"
  parent=$dir/before/uni/exp$i/best.pt
  echo "==== trial $i/$trials (seed $seed): uni on $old"
  timed before $PY train.py --data "$old" --paradigm uni --profile "$profile" --seed $seed --trial "exp$i" \
      --artifacts "$dir/before" --no-progress "$@"
  echo "==== extend.py: imprint + replay fine-tune"
  # shellcheck disable=SC2086  # ext_flags: flags and values, split on purpose
  timed extended $PY extend.py --checkpoint "$parent" --data "$full" --seed $seed --artifacts "$dir/extended" $ext_flags
  echo "==== extend.py --steps 0: imprinted only"
  timed imprint $PY extend.py --checkpoint "$parent" --data "$full" --seed $seed --artifacts "$dir/imprint" \
      --no-progress --steps 0
  echo "==== extend.py --replay 0: naive, the new class only"
  # shellcheck disable=SC2086
  timed naive $PY extend.py --checkpoint "$parent" --data "$full" --seed $seed --artifacts "$dir/naive" $ext_flags \
      --replay 0
  echo "==== full retrain on $full, and its release (extend.py releases too: both rows end servable)"
  timed full retrain "$@"
  for v in ${VARIANTS:-}; do
    echo "==== extend.py, variant $v: $(variant_flags "$v")"
    # shellcheck disable=SC2046,SC2086  # flags and values, split on purpose
    timed "$v" $PY extend.py --checkpoint "$parent" --data "$full" --seed $seed --artifacts "$dir/$v" $ext_flags \
        $(variant_flags "$v")
  done
  i=$((i + 1))
done
trained=$(date +%s)
echo "==== python -m evaluation.extension --root $root"
$PY -m evaluation.extension --root "$root" --old-data "$old" --data "$full"
end=$(date +%s)
echo "==== done in $((end - start)) s (data and training $((trained - start)) s, evaluation $((end - trained)) s): $root/EXTEND.md"
