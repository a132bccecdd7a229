"""Datasets: the spec, the generator, concatenation and loading."""
