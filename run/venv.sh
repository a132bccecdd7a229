# Sourced by the run/ scripts: create .venv, install requirements.txt (which includes
# requirements-serve.txt) when either changed and this project (editable) when pyproject.toml
# changed. Sets PY to the venv's python.
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
# The project itself, editable (pyproject.toml): `import utils`, `import evaluation`, ... work from
# any folder, notebooks and tests included; the code is read from this checkout, so edits need no reinstall.
if ! cmp -s pyproject.toml .venv/project.installed; then
  echo "installing this project into .venv (pip install --no-deps -e .)"
  $PY -m pip install --quiet --disable-pip-version-check --no-deps -e .
  cp pyproject.toml .venv/project.installed
fi
