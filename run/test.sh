#!/bin/sh
# The whole test suite, in .venv (created and installed on first use). Extra args go to pytest.
set -e
cd "$(dirname "$0")/.."
. run/venv.sh
exec $PY -m pytest -q -p no:cacheprovider "$@" tests
