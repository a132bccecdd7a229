"""Procedural generator of a SOFAR-like stand-in dataset (the real SOFAR-Image set is private).

`generate(out, ...)` writes the class splits, external-validation, OOD and multi-label sets,
`dataset.yaml` and a montage; `python -m data.generate --out DIR` is the command line.
"""
from .build import generate

__all__ = ["generate"]
