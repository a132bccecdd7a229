#!/bin/sh
# usage: sh run/test.sh [pytest flags, e.g. -k spec -x]
#
# The whole test suite (tests/), by pytest in .venv (created and installed on first use); every
# argument but -h/--help goes to pytest (pytest's own help: .venv/bin/python -m pytest --help).
. "$(dirname "$0")/help.sh"
set -e
cd "$(dirname "$0")/.."
. run/venv.sh
exec $PY -m pytest -q -p no:cacheprovider "$@" tests
