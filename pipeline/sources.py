"""Where new images come from: a folder tree or a manifest CSV, as (image id, path, captured date).

- Folder tree: every file under it with an image extension (.jpg .jpeg .png .bmp .webp .tif
  .tiff, any case), recursively; image id = the path relative to the folder (POSIX slashes);
  captured date = the file's modification time as a UTC date (YYYY-MM-DD).
- Manifest: a CSV with a header holding `path` and optionally `captured_date` (YYYY-MM-DD or an
  ISO timestamp; its date part is used) and `image_id`. Relative paths are relative to the
  manifest's folder; image id defaults to the path as written; a missing captured date falls back
  to the file's mtime. Every listed path becomes a row, so a missing file is an `error` row.
"""
from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from data.spec import IMAGE_EXTENSIONS


class SourceError(ValueError):
    """A source that cannot be listed; the message names it and the fix."""


@dataclass(frozen=True)
class SourceImage:
    """One image to predict: its id in the table, where to read it, the day it was captured."""
    image_id: str
    path: str
    captured_date: str | None

    @classmethod
    def from_fields(cls, f: dict) -> "SourceImage":
        return cls(f["image_id"], f["path"], f.get("captured_date") or None)


def mtime_date(path: Path) -> str | None:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).date().isoformat()
    except OSError:
        return None


def parse_date(text: str, where: str) -> str:
    try:
        return dt.date.fromisoformat(text.strip()[:10]).isoformat()
    except ValueError:
        raise SourceError(f"{where}: captured_date '{text}' is not a date (YYYY-MM-DD)") from None


def list_source(source: str | Path, day: str | None = None) -> list[SourceImage]:
    """Every image of a folder tree or manifest, sorted by image id; only `day`'s when given."""
    source = Path(source)
    if source.is_dir():
        items = [SourceImage(p.relative_to(source).as_posix(), str(p), mtime_date(p))
                 for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    elif source.is_file():
        items = read_manifest(source)
    else:
        raise SourceError(f"{source}: no such folder or manifest file")
    if day is not None:
        day = parse_date(day, "--date")
        items = [i for i in items if i.captured_date == day]
    return sorted(items, key=lambda i: i.image_id)


def read_manifest(path: Path) -> list[SourceImage]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise SourceError(f"{path}: a manifest is a CSV whose header has a 'path' column "
                              f"(and optionally captured_date, image_id); got {reader.fieldnames}")
        items, seen = [], set()
        for n, row in enumerate(reader, start=2):
            raw = (row.get("path") or "").strip()
            if not raw:
                raise SourceError(f"{path}:{n}: empty path")
            p = Path(raw) if Path(raw).is_absolute() else path.parent / raw
            image_id = (row.get("image_id") or "").strip() or raw
            if image_id in seen:
                raise SourceError(f"{path}:{n}: image id '{image_id}' listed twice")
            seen.add(image_id)
            date = row.get("captured_date")
            date = parse_date(date, f"{path}:{n}") if date and date.strip() else mtime_date(p)
            items.append(SourceImage(image_id, str(p), date))
    return items
