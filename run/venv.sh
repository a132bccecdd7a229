# Sourced by the run/ scripts: create .venv and install requirements.txt (which includes
# requirements-serve.txt) when either changed. Sets PY to the venv's python.
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  python3 -m venv .venv
fi
PY=.venv/bin/python
if ! cat requirements.txt requirements-serve.txt | cmp -s - .venv/requirements.installed; then
  echo "installing requirements.txt into .venv (torch from the local wheel cache takes about a minute)"
  $PY -m pip install --quiet --disable-pip-version-check -r requirements.txt
  cat requirements.txt requirements-serve.txt > .venv/requirements.installed
fi
