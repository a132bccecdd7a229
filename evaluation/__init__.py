"""Evaluation of trained checkpoints: RQ1 task accuracy/F1, RQ2 OOD AUROC, RQ3 top-2 on
multi-label images, calibration and efficiency, and the report over every trial.

`evaluate.py` is the command line; `evaluation.checkpoint.evaluate_checkpoint` evaluates one
checkpoint and `evaluation.report.build_report` collects a whole artifacts folder;
`python -m evaluation.notebooks` renders the notebooks with their outputs as HTML.
"""
