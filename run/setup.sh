# Sourced by run/reproduce.sh, run/ablations.sh, run/train_trials.sh and run/extend.sh (after
# run/help.sh). Paths the caller gave relative to the folder they stand in (--data, --artifacts,
# --out; --pretrained and --resume when they name a file there) are made absolute in "$@" and the
# last --data, --artifacts and --out are kept in $data, $artifacts and $results (defaults: the
# embedded dataset, artifacts, results); --output-dir, the old name of --artifacts, is taken as it
# with a note. Then the shell moves to the repository root, sources run/venv.sh (sets PY) and
# defines the helpers below.
here=$(pwd)
from_caller() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "${here%/}/$1" ;; esac; }
data=datasets/sofar_embedded
artifacts=artifacts
results=results
n=$#
prev=
while [ "$n" -gt 0 ]; do
  a=$1; shift; n=$((n - 1))
  case $a in
    --output-dir|--output-dir=*)
      echo "note: --output-dir is now --artifacts" >&2
      a=--artifacts${a#--output-dir} ;;
  esac
  case $prev in
    --data|--artifacts|--out) a=$(from_caller "$a") ;;
    --pretrained|--resume) if [ -e "$a" ]; then a=$(from_caller "$a"); fi ;;
  esac
  case $a in
    --data=*|--artifacts=*|--out=*) a=${a%%=*}=$(from_caller "${a#*=}") ;;
    --pretrained=*|--resume=*) if [ -e "${a#*=}" ]; then a=${a%%=*}=$(from_caller "${a#*=}"); fi ;;
  esac
  case $prev in
    --data) data=$a ;;
    --artifacts) artifacts=$a ;;
    --out) results=$a ;;
  esac
  case $a in
    --data=*) data=${a#*=} ;;
    --artifacts=*) artifacts=${a#*=} ;;
    --out=*) results=${a#*=} ;;
  esac
  set -- "$@" "$a"
  prev=$a
done
cd "$(dirname "$0")/.."
. run/venv.sh

# dataset_ready DIR: generate the embedded dataset when DIR is the default folder and has none;
# any other folder must hold a dataset.yaml.
dataset_ready() {
  [ -f "$1/dataset.yaml" ] && return 0
  if [ "$1" != datasets/sofar_embedded ]; then
    echo "error: $1/dataset.yaml not found; point --data at a dataset folder (see README)" >&2
    exit 2
  fi
  echo "no dataset at $1: generating the embedded SOFAR-like dataset"
  $PY -m data.generate --out "$1"
}

# check_trials FLAG VALUE: exits 2 naming FLAG unless VALUE is a whole number of at least 1, so a
# typo stops a script before anything trains, not after.
check_trials() {
  case $2 in
    ''|*[!0-9]*) ;;
    *) [ "$2" -ge 1 ] && return 0 ;;
  esac
  echo "error: $1 takes a number of trials of at least 1, not '$2'" >&2
  exit 2
}

# trial_pool RUNS JOBS|auto DEVICE: how many of the RUNS training runs share the machine at a time
# (TRIAL_JOBS) and torch threads for each (TRIAL_THREADS), from `python -m utils trial-jobs`: as
# many at a time as there are runs, up to one per core and 4 in all, the cores shared among them
# (one run gets every core); one at a time on a GPU. Runs take a token from a pool of TRIAL_JOBS
# tokens (a FIFO, as make's jobserver) and give it back when they end. A script that starts several
# run/train_trials.sh at once (run/reproduce.sh, run/ablations.sh) opens the pool first, for the
# runs of them all; they find it in TRIAL_POOL and share it.
trial_pool() {
  if [ -n "${TRIAL_POOL:-}" ] && [ -p "$TRIAL_POOL" ]; then
    exec 9<>"$TRIAL_POOL"
    return 0
  fi
  jt=$($PY -m utils trial-jobs --runs "$1" --jobs "$2" --device "$3") || exit 2
  set -- $jt
  TRIAL_JOBS=$1 TRIAL_THREADS=$2
  TRIAL_POOL=$(mktemp -d)/tokens
  mkfifo "$TRIAL_POOL"
  trap 'rm -rf "${TRIAL_POOL%/tokens}"' EXIT
  exec 9<>"$TRIAL_POOL"
  i=0
  while [ "$i" -lt "$TRIAL_JOBS" ]; do echo >&9; i=$((i + 1)); done
  export TRIAL_POOL TRIAL_JOBS TRIAL_THREADS
}

# Scripts that train several things at once keep their background children's pids in $pids:
# launch CMD... runs CMD now when one run trains at a time (TRIAL_JOBS 1), else in the background;
# wait_children WHAT waits for them all and exits naming how many failed. On Ctrl-C or TERM the
# children are stopped (each passes it on to its own): a non-interactive shell's background
# children ignore Ctrl-C, so without this a stopped script would leave its trainings running.
pids=
trap 'trap - INT TERM; kill $pids 2>/dev/null; wait; exit 130' INT TERM
launch() {
  if [ "${TRIAL_JOBS:-1}" -eq 1 ]; then
    "$@"
  else
    "$@" &
    pids="$pids $!"
  fi
}
wait_children() {
  failed=0
  for p in $pids; do wait "$p" || failed=$((failed + 1)); done
  pids=
  [ "$failed" -eq 0 ] || { echo "error: $failed $1 failed (see above)" >&2; exit 1; }
}
