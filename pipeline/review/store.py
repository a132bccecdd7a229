"""The reviews table: the operators' corrections, kept apart from the prediction rows, which a
review never changes.

One row per correction, `<table>_reviews` beside the prediction table `<table>`: the reviewed row
(image id, model version), the reviewer, the time, the verdict and the labels. A verdict is
`correct` (the system's decision stands: its top-1 label for an ok row, irrelevant for an
OOD-rejected one), `labels` (the right label or labels, one or several, new ones allowed) or
`irrelevant` (no class: an OOD image). Rows are only added; an image's latest review counts.
"""
from __future__ import annotations

import datetime as dt
import json
import re

from pipeline.table import PredictionTable

VERDICTS = ("correct", "labels", "irrelevant")
LABEL = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")  # a class name that is also a folder name
COLUMNS = [
    ("image_id", "TEXT NOT NULL"), ("model_version", "TEXT NOT NULL"),
    ("reviewer", "TEXT NOT NULL"), ("reviewed_at", "TIMESTAMP WITH TIME ZONE NOT NULL"),
    ("verdict", f"TEXT NOT NULL CHECK (verdict IN ({', '.join(repr(v) for v in VERDICTS)}))"),
    ("labels", "TEXT NOT NULL"),  # a JSON list: the labels the image carries (empty when irrelevant)
]


class ReviewError(ValueError):
    """A correction that cannot be recorded; the message says why."""


def reviews_name(table: PredictionTable) -> str:
    return f"{table.name}_reviews"


def create(table: PredictionTable) -> None:
    name = reviews_name(table)
    table.execute_sql(f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(f'{c} {t}' for c, t in COLUMNS)})")
    table.execute_sql(f"CREATE INDEX IF NOT EXISTS {name}_row_idx ON {name} (image_id, model_version, reviewed_at)")


def decided_labels(row: dict, verdict: str, labels: list[str]) -> list[str]:
    """The labels a verdict gives the prediction `row`: [] means irrelevant (OOD)."""
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict '{verdict}': use one of {', '.join(VERDICTS)}")
    if verdict == "irrelevant":
        return []
    if verdict == "correct":
        if row["status"] == "error":
            raise ReviewError("an error row has no decision to confirm; give its labels or mark it irrelevant")
        return [] if row["status"] == "ood" else [row["top1_label"]]
    labels = list(dict.fromkeys(label.strip() for label in labels if label.strip()))
    if not labels:
        raise ReviewError("give at least one label (tick one or type a new one)")
    for label in labels:
        if not LABEL.match(label):
            raise ReviewError(f"label '{label[:80]}': use lower-case letters, digits and _ "
                              f"(it becomes a class folder name)")
    return sorted(labels)


def record(table: PredictionTable, row: dict, reviewer: str, verdict: str, labels: list[str]) -> dict:
    """Add one review of the prediction `row`; returns what was stored."""
    reviewer = reviewer.strip()
    if not reviewer or len(reviewer) > 100:
        raise ReviewError("give the reviewer's name (1 to 100 characters)")
    review = {"image_id": row["image_id"], "model_version": row["model_version"], "reviewer": reviewer,
              "reviewed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
              "verdict": verdict, "labels": json.dumps(decided_labels(row, verdict, labels))}
    names = [c for c, _ in COLUMNS]
    table.execute_sql(f"INSERT INTO {reviews_name(table)} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
               [review[c] for c in names])
    return review


def of_row(table: PredictionTable, image_id: str, version: str) -> list[dict]:
    """The reviews of one prediction row, newest first."""
    return [_plain(r) for r in table.execute_sql(
        f"SELECT * FROM {reviews_name(table)} WHERE image_id = ? AND model_version = ? "
        f"ORDER BY reviewed_at DESC", [image_id, version], fetch=True)]


def latest(table: PredictionTable) -> list[dict]:
    """Each reviewed image's latest review, joined with its prediction row's source and status."""
    rows = table.execute_sql(
        f"SELECT r.*, p.source, p.status, p.top1_label FROM {reviews_name(table)} r "
        f"JOIN {table.name} p ON p.image_id = r.image_id AND p.model_version = r.model_version "
        f"ORDER BY r.image_id, r.reviewed_at", (), fetch=True)
    return list({r["image_id"]: _plain(r) for r in rows}.values())  # the last one per image wins


def _plain(r: dict) -> dict:
    out = dict(r)
    out["labels"] = json.loads(out["labels"])
    if isinstance(out["reviewed_at"], dt.datetime):
        out["reviewed_at"] = out["reviewed_at"].isoformat()
    return out
