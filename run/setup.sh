# Sourced first by run/reproduce.sh, run/ablations.sh and run/train_trials.sh. Paths the caller
# gave relative to the folder they stand in (--data, --output-dir, --out; --pretrained and --resume
# when they name a file there) are made absolute in "$@" and the last --data, --output-dir and
# --out are kept in $data, $artifacts and $results (defaults: the embedded dataset, artifacts,
# results); then the shell moves to the repository root, sources run/venv.sh (sets PY) and defines
# dataset_ready.
here=$(pwd)
from_caller() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "${here%/}/$1" ;; esac; }
data=datasets/sofar_embedded
artifacts=artifacts
results=results
n=$#
prev=
while [ "$n" -gt 0 ]; do
  a=$1; shift; n=$((n - 1))
  case $prev in
    --data|--output-dir|--out) a=$(from_caller "$a") ;;
    --pretrained|--resume) if [ -e "$a" ]; then a=$(from_caller "$a"); fi ;;
  esac
  case $a in
    --data=*|--output-dir=*|--out=*) a=${a%%=*}=$(from_caller "${a#*=}") ;;
    --pretrained=*|--resume=*) if [ -e "${a#*=}" ]; then a=${a%%=*}=$(from_caller "${a#*=}"); fi ;;
  esac
  case $prev in
    --data) data=$a ;;
    --output-dir) artifacts=$a ;;
    --out) results=$a ;;
  esac
  case $a in
    --data=*) data=${a#*=} ;;
    --output-dir=*) artifacts=${a#*=} ;;
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
