"""Tables of mean ± std over trials: Markdown (best per column in bold, or the row a significance
rule picks) and CSV.

A notebook shows a ReportTable by displaying it (`_repr_markdown_`: title, table, note)."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def mean_std(values) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())  # population std over trials (numpy default)


def fmt(values, digits: int = 3) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "—"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


class _Rows:
    """What both tables share: rows of cells, Markdown with title and note, CSV of `csv_fields` per column."""
    CSV_FIELDS: tuple[str, ...] = ()
    FIRST: str = "method"

    def add(self, name: str, cells: dict) -> None:
        self.rows.append((name, cells))

    def _repr_markdown_(self) -> str:
        return "\n\n".join(part for part in (f"### {self.title}", self.markdown(), self.note) if part)

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([self.FIRST, *[f"{c} {k}" for c in self.columns for k in self.CSV_FIELDS]])
            for name, cells in self.rows:
                w.writerow([name, *[v for c in self.columns for v in self.csv_cells(cells.get(c))]])


@dataclass
class ReportTable(_Rows):
    title: str
    columns: list[str]
    rows: list[tuple[str, dict[str, list[float]]]] = field(default_factory=list)  # name -> column -> per-trial values
    lower_is_better: set[str] = field(default_factory=set)
    no_bold: set[str] = field(default_factory=set)
    digits: int = 3
    note: str = ""
    column_digits: dict[str, int] = field(default_factory=dict)  # overrides `digits` per column
    # column -> the one row to bold (None: no row), decided by a significance rule
    # (evaluation.significance); columns not in it bold their best mean
    bold: dict[str, str | None] = field(default_factory=dict)

    CSV_FIELDS = ("mean", "std", "n")

    @staticmethod
    def csv_cells(values) -> list:
        vals = [x for x in values or [] if x is not None and not math.isnan(x)]
        m, s = mean_std(vals)
        return ["" if math.isnan(m) else f"{m:.6g}", "" if math.isnan(s) else f"{s:.6g}", len(vals)]

    def best(self) -> dict[str, float]:
        out = {}
        for c in self.columns:
            means = [mean_std(cells.get(c, []))[0] for _, cells in self.rows]
            means = [m for m in means if not math.isnan(m)]
            if len(means) >= 2 and c not in self.no_bold:
                out[c] = min(means) if c in self.lower_is_better else max(means)
        return out

    def markdown(self) -> str:
        best = self.best()
        chosen = {c: mean_std(dict(self.rows)[r].get(c, []))[0] for c, r in self.bold.items() if r is not None}
        lines = [f"| method | {' | '.join(self.columns)} |", "|---" * (len(self.columns) + 1) + "|"]
        for name, cells in self.rows:
            parts = []
            for c in self.columns:
                d = self.column_digits.get(c, self.digits)
                text = fmt(cells.get(c, []), d)
                m = mean_std(cells.get(c, []))[0]
                if c in self.bold:  # the chosen row, and rows equal to it as shown (its own paradigm's)
                    if c in chosen and not math.isnan(m) and round(m, d) == round(chosen[c], d):
                        text = f"**{text}**"
                elif c in best and not math.isnan(m) and round(m, d) == round(best[c], d):
                    text = f"**{text}**"
                parts.append(text)
            lines.append(f"| {name} | {' | '.join(parts)} |")
        return "\n".join(lines)


def interval_text(r: dict | None, digits: int = 3) -> str:
    """'+0.012 [-0.010, +0.034]' of a {value, lo, hi} interval; '—' for none."""
    if not r or math.isnan(r.get("value", float("nan"))):
        return "—"
    return f"{r['value']:+.{digits}f} [{r['lo']:+.{digits}f}, {r['hi']:+.{digits}f}]"


@dataclass
class IntervalTable(_Rows):
    """A table of paired differences with their 95 % intervals ({value, lo, hi} per cell): bold where
    the interval excludes 0 on the better side (`lower_is_better` rows: below 0)."""
    title: str
    columns: list[str]
    rows: list[tuple[str, dict[str, dict]]] = field(default_factory=list)
    lower_is_better: set[str] = field(default_factory=set)
    note: str = ""
    digits: int = 3
    CSV_FIELDS = ("value", "lo", "hi", "trials")
    FIRST = "measure"

    @staticmethod
    def csv_cells(r) -> list:
        r = r or {}
        return [f"{r[k]:.6g}" if k in r and not math.isnan(r[k]) else "" for k in ("value", "lo", "hi")] + \
            [r.get("trials", "")]

    def better(self, row: str, r: dict | None) -> bool:
        if not r or math.isnan(r.get("lo", float("nan"))):
            return False
        return r["hi"] < 0 if row in self.lower_is_better else r["lo"] > 0

    def markdown(self) -> str:
        lines = [f"| measure | {' | '.join(self.columns)} |", "|---" * (len(self.columns) + 1) + "|"]
        for name, cells in self.rows:
            parts = [interval_text(cells.get(c), self.digits) for c in self.columns]
            parts = [f"**{p}**" if self.better(name, cells.get(c)) else p for p, c in zip(parts, self.columns)]
            lines.append(f"| {name} | {' | '.join(parts)} |")
        return "\n".join(lines)
