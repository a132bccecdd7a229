"""Read-only queries of the review page over the prediction table, as parameterised SQL that
SQLite and PostgreSQL both run (through PredictionTable, which translates the placeholders).

A filter is a `Filters` value parsed from the page's query string; every value reaches the
database as a parameter, and sort orders come from a fixed table, never from the request. The
indexes in `INDEXES` serve the overview and the first page of each filter (bench/bench_review.py).
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, fields

from pipeline.table import PredictionTable

PAGE_SIZE = 48
MARGIN = "(top1_prob - top2_prob)"
# OOD score: higher = in-distribution, so ascending shows the most out-of-distribution first.
SORTS = {
    "ood": "ood_score ASC NULLS LAST",
    "margin": f"{MARGIN} ASC NULLS LAST",
    "recent": "captured_date DESC NULLS LAST",
}
STATUSES = ("ok", "ood", "error")
GRID_COLUMNS = ("image_id, model_version, source, captured_date, status, top1_label, top1_prob, "
                "top2_label, top2_prob, ood_score, is_ood")

# name suffix -> indexed columns; the day index of PredictionTable.create serves the date filter.
INDEXES = {
    "overview_idx": "captured_date, model_version, status, top1_label",
    "status_ood_idx": "status, ood_score",
    "top1_ood_idx": "top1_label, ood_score",
    "top2_ood_idx": "top2_label, ood_score",
    "version_ood_idx": "model_version, ood_score",
    "margin_idx": f"{MARGIN}",
    "status_margin_idx": f"status, {MARGIN}",
}


class FilterError(ValueError):
    """A filter value the page cannot use; the message names it."""


@dataclass(frozen=True)
class Filters:
    """The grid's filters, as the query string gives them (empty = not filtered)."""
    top1: str = ""
    top2: str = ""
    status: str = ""
    margin_below: str = ""
    version: str = ""
    day: str = ""
    sort: str = "ood"
    page: int = 1

    @classmethod
    def parse(cls, params) -> "Filters":
        """Filters from a mapping of query parameters; FilterError for a value that cannot be one."""
        raw = {f.name: str(params.get(f.name, "")).strip()[:200] for f in fields(cls)}
        raw["sort"] = raw["sort"] or "ood"
        if raw["sort"] not in SORTS:
            raise FilterError(f"sort '{raw['sort']}': use one of {', '.join(SORTS)}")
        if raw["status"] and raw["status"] not in STATUSES:
            raise FilterError(f"status '{raw['status']}': use one of {', '.join(STATUSES)}")
        if raw["margin_below"]:
            try:
                value = float(raw["margin_below"])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise FilterError(f"margin_below '{raw['margin_below']}': give a number such as 0.1")
        if raw["day"]:
            try:
                dt.date.fromisoformat(raw["day"])
            except ValueError:
                raise FilterError(f"day '{raw['day']}': give a date as YYYY-MM-DD") from None
        try:
            page = int(raw["page"] or 1)
        except ValueError:
            page = 0
        if not 1 <= page <= 100_000:
            raise FilterError(f"page '{raw['page']}': give a whole number from 1")
        return cls(**{**raw, "page": page})

    def where(self) -> tuple[str, list]:
        """The WHERE clause (possibly empty) and its parameters."""
        terms, params = [], []
        for column, value in (("top1_label", self.top1), ("top2_label", self.top2), ("status", self.status),
                              ("model_version", self.version), ("captured_date", self.day)):
            if value:
                terms.append(f"{column} = ?")
                params.append(value)
        if self.margin_below:
            terms.append(f"{MARGIN} < ?")
            params.append(float(self.margin_below))
        return ("WHERE " + " AND ".join(terms) if terms else ""), params

    def query(self, **change) -> dict[str, str]:
        """The non-empty filters as query parameters, with `change` applied (for links)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)} | change
        return {k: str(v) for k, v in values.items() if v not in ("", None) and not (k == "page" and v == 1)}


def create_indexes(table: PredictionTable) -> None:
    """The indexes of the review's filters and overview (kept if they exist)."""
    for suffix, columns in INDEXES.items():
        table.execute_sql(f"CREATE INDEX IF NOT EXISTS {table.name}_{suffix} ON {table.name} ({columns})")


def page(table: PredictionTable, f: Filters) -> tuple[list[dict], bool]:
    """(the rows of page `f.page`, whether another page follows)."""
    where, params = f.where()
    order = f"{SORTS[f.sort]}, image_id, model_version"
    rows = table.query(f"{where} ORDER BY {order} LIMIT ? OFFSET ?",
                       [*params, PAGE_SIZE + 1, (f.page - 1) * PAGE_SIZE], GRID_COLUMNS)
    return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


def row(table: PredictionTable, image_id: str, version: str) -> dict | None:
    rows = table.query("WHERE image_id = ? AND model_version = ?", [image_id, version])
    return rows[0] if rows else None


def overview(table: PredictionTable) -> list[dict]:
    """Per (day, model version), newest day first: ok / ood / error counts and the ok rows per top-1
    label ({label: count}); one scan of the overview index, in its order."""
    groups: dict[tuple, dict] = {}
    for r in table.query("GROUP BY captured_date, model_version, status, top1_label", (),
                         "captured_date, model_version, status, top1_label, COUNT(*) AS n"):
        g = groups.setdefault((r["captured_date"], r["model_version"]), {
            "day": r["captured_date"], "version": r["model_version"], "ok": 0, "ood": 0, "error": 0, "labels": {}})
        g[r["status"]] += r["n"]
        if r["status"] == "ok":
            g["labels"][r["top1_label"]] = r["n"]
    return sorted(groups.values(), key=lambda g: (g["day"] or "", g["version"]), reverse=True)


def versions(table: PredictionTable) -> list[str]:
    return [r["model_version"] for r in table.query("GROUP BY model_version ORDER BY model_version", (),
                                                    "model_version")]
