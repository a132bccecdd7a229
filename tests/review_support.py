"""A prediction table for the review tests: tiny images (one with a hostile file name) predicted by
the tiny uni bundle, with the OOD threshold at the median score so that about half are rejected."""
from __future__ import annotations

import re
from pathlib import Path
from statistics import median

from tests.builders import write_bad_files, write_images

HOSTILE = '"><svg onload=alert(1)>.jpg'


def predicted_table(bundle: Path, root: Path) -> tuple[Path, Path]:
    """(SQLite table file, source root) of `root`."""
    from pipeline.batch import run_batch
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    from pipeline.table import PredictionTable
    src = root / "src"
    write_images(src / "good", 16)
    write_images(src / "odd", 1, seed=3)[0].rename(src / HOSTILE)
    write_bad_files(src / "bad")
    items = list_source(src)
    rows = []
    run_batch(Predictor.load(bundle), None, items, 32, 0, False, on_rows=rows.extend)
    cut = median(r["ood_score"] for r in rows if r["status"] != "error")
    db = root / "p.db"
    run_batch(Predictor.load(bundle, threshold=cut), PredictionTable(str(db)), items, 32, 0, False)
    return db, src


def csrf_token(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)
