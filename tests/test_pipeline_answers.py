"""Each row's task answers (bundle.json `tasks`: the rule the release chose per binary task) in the
prediction table: written for ok and ood rows, NULL for error rows and for a bundle without task
rules, added to a table written before the column existed, and asked for by `query --answer`.
That the answers are the checkpoint's own in torch: tests/test_serving.py."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from tests.builders import write_bad_files, write_images
from tests.test_pipeline_support import pipeline_cli


def old_table(db) -> None:
    """The prediction table as a version before `task_answers` wrote it."""
    from pipeline.table import COLUMNS
    conn = sqlite3.connect(db)
    cols = ", ".join(f"{c} {t}" for c, t in COLUMNS if c != "task_answers")
    conn.execute(f"CREATE TABLE predictions ({cols}, PRIMARY KEY (image_id, model_version))")
    conn.commit()
    conn.close()


def test_rows_carry_the_task_answers_and_query_selects_by_them(bundles, tmp_path):
    from pipeline.batch import run_batch
    from pipeline.bundle import Bundle
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    from pipeline.table import PredictionTable
    write_images(tmp_path / "src" / "good", 12)
    write_bad_files(tmp_path / "src" / "bad")
    db = tmp_path / "p.db"
    old_table(db)
    pipeline_cli("predict", "--bundle", bundles["uni"], "--source", tmp_path / "src", "--table", db,
                 "--workers", "0", "--no-progress")
    table = PredictionTable(str(db))
    assert "task_answers" in table.columns()
    rows = {r["image_id"]: r for r in table.query()}
    tasks = Bundle.load(bundles["uni"]).manifest["tasks"]
    assert set(tasks) == {"defect", "dirt"}
    for r in rows.values():
        if r["status"] == "error":
            assert r["task_answers"] is None
        else:  # compact JSON with sorted keys, one of each task's classes
            answers = json.loads(r["task_answers"])
            assert r["task_answers"] == json.dumps(answers, separators=(",", ":"), sort_keys=True)
            assert answers.keys() == tasks.keys() and all(c in tasks[t]["classes"] for t, c in answers.items())

    # An OOD row carries the answers an accepted row would; a bundle without task rules writes NULL.
    pred, items = Predictor.load(bundles["uni"]), list_source(tmp_path / "src" / "good")
    rejected, untasked = [], []
    run_batch(Predictor.load(bundles["uni"], threshold=1e9), None, items, 4, 0, False, on_rows=rejected.extend)
    b = pred.bundle
    plain = Predictor(Bundle(b.path, {k: v for k, v in b.manifest.items() if k != "tasks"}, b.arrays),
                      pred.session, pred.score, pred.threshold)
    run_batch(plain, PredictionTable(str(db), "untasked"), items, 4, 0, False, on_rows=untasked.extend)
    assert [r["status"] for r in rejected] == ["ood"] * 12
    assert {r["source"]: r["task_answers"] for r in rejected} == {
        r["source"]: r["task_answers"] for r in rows.values() if "/good/" in r["source"]}
    assert untasked and all(r["task_answers"] is None for r in untasked)
    assert all(r["task_answers"] is None for r in PredictionTable(str(db), "untasked").query())

    # The manifest's rule answers: an image the head puts in a third class (dirt) is the defect
    # task's positive by `restricted` (defect beats normal) and its negative by `argmax`.
    names = list(pred.heads.heads[0][2])
    z = np.full((1, len(names)), -5.0, np.float32)
    z[0, names.index("dirt")], z[0, names.index("defect")] = 3.0, 1.0
    # By `threshold` the margin (defect minus normal logit, here 6) is compared with the fitted threshold.
    for rule, threshold, said in (("restricted", 0.0, "defect"), ("argmax", 0.0, "normal"),
                                  ("threshold", 5.5, "defect"), ("threshold", 6.5, "normal")):
        one = {"defect": {**tasks["defect"], "rule": rule, "threshold": threshold}}
        ruled = Predictor(Bundle(b.path, {**b.manifest, "tasks": one}, b.arrays), pred.session, pred.score,
                          pred.threshold)
        assert ruled.task_answers(z) == [f'{{"defect":"{said}"}}']
    with pytest.raises(ValueError, match="task 'defect': classes \\['normal', 'defect'\\] with rule 'nearest'"):
        Predictor(Bundle(b.path, {**b.manifest, "tasks": {"defect": {**tasks["defect"], "rule": "nearest"}}},
                         b.arrays), pred.session, pred.score, pred.threshold)
    with pytest.raises(ValueError, match="task 'defect': threshold 'high' is not a finite number"):
        Predictor(Bundle(b.path, {**b.manifest, "tasks": {"defect": {**tasks["defect"], "threshold": "high"}}},
                         b.arrays), pred.session, pred.score, pred.threshold)

    # query --answer: exactly the day's ok rows with that answer; several must all hold.
    day = next(iter(rows.values()))["captured_date"]
    ok = {i: json.loads(r["task_answers"]) for i, r in rows.items() if r["status"] == "ok"}

    def query(*answers, name="predictions", check=True):
        flags = [f for a in answers for f in ("--answer", a)]
        return pipeline_cli("query", "--table", db, "--table-name", name, "--date", day, *flags, check=check)

    def ids(proc):
        return sorted(json.loads(line)["image_id"] for line in proc.stdout.splitlines())

    seen = []
    for cls in tasks["defect"]["classes"]:
        got = ids(query(f"defect={cls}"))
        assert got == sorted(i for i, a in ok.items() if a["defect"] == cls)
        seen += got
    assert sorted(seen) == sorted(ok)
    both = query("defect=normal", "dirt=normal")
    assert ids(both) == sorted(i for i, a in ok.items() if a == {"defect": "normal", "dirt": "normal"})
    assert all(json.loads(json.loads(line)["task_answers"]) == {"defect": "normal", "dirt": "normal"}
               for line in both.stdout.splitlines())

    typo = query("defekt=defect", check=False)
    assert typo.returncode == 1 and not typo.stdout and "Traceback" not in typo.stderr
    assert typo.stderr.strip() == (f"error: --answer defekt=defect: no row of {db}#predictions answers task "
                                   f"'defekt'; the tasks answered there: defect, dirt")
    none = query("defect=defect", name="untasked", check=False)
    assert none.returncode == 1 and "released without task rules" in none.stderr
    never = query("defect=dirt")
    assert not never.stdout and "note: --answer defect=dirt" in never.stderr and "normal" in never.stderr
    bad = query("defect", check=False)
    assert bad.returncode == 2 and "give TASK=CLASS" in bad.stderr
    neither = pipeline_cli("query", "--table", db, "--date", day, check=False)
    assert neither.returncode == 1 and "--answer TASK=CLASS" in neither.stderr and "defect=" in neither.stderr
