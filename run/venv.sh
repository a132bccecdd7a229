# Sourced by the run/ scripts: create .venv and install requirements.txt when it changed.
# Sets PY to the venv's python.
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  python3 -m venv .venv
fi
PY=.venv/bin/python
if ! cmp -s requirements.txt .venv/requirements.installed; then
  echo "installing requirements.txt into .venv (torch from the local wheel cache takes about a minute)"
  $PY -m pip install --quiet --disable-pip-version-check -r requirements.txt
  cp requirements.txt .venv/requirements.installed
fi
