"""Entry point: `python -m pipeline --help`."""
from pipeline.cli import run

run()
