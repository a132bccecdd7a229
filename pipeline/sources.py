"""Where new images come from: a folder tree or a manifest CSV, as (image id, path, captured date).

- Folder tree: every regular file under it with an image extension (.jpg .jpeg .png .bmp .webp
  .tif .tiff, any case), recursively; captured date = the file's modification time as a date in
  `--tz` (UTC by default). Nothing is opened while listing. A folder stays inside itself: a
  symbolic link that leads out of it, a link loop, a broken link, and a FIFO, socket, device or
  folder with an image's name are skipped, counted and named (`warning: PATH: skipped, WHY`);
  a link to a folder is not walked (inside the source its images are listed under their own
  path). A link to a file inside the source is listed under the link's name.
- Manifest: a CSV with a header holding `path` and optionally `captured_date` (YYYY-MM-DD or an
  ISO timestamp; its date part is used) and `image_id`. Relative paths are relative to the
  manifest's folder; a missing captured date falls back to the file's mtime. Every listed path
  becomes a row, so a missing file is an `error` row (in batch mode; `produce` waits for it).

Image id: the path relative to the folder (POSIX slashes), or the manifest's path as written,
then `#` and the first 16 hex digits of the file's SHA-256: `day1/IMG_0001.jpg#3f2a...`. The path
alone is not an identity: `--source uploads/day1` and later `--source uploads/day2` both list
`IMG_0001.jpg`, and a camera's file counter wraps; the hash keeps different photos apart and the
same photo listed again on one id. A manifest's own `image_id` column is used as it is; a file
that cannot be read when listed has the bare path as id (it has no content to hash).

Ids are bounded (`ID_CHARS`): a path or manifest id longer than ID_PATH_CHARS characters is
replaced in the id by `~`, the first 16 hex digits of its SHA-256, `/` and its last characters
(`~5be1c0d2e3f4a5b6/...deep/IMG_0001.jpg#3f2a...`), so that no id outgrows a database's index
(PostgreSQL's btree refuses an index row over about 2.7 KB). Shorter ones are kept as they are,
so the ids already in a table stay valid. The full path stays in the row's `source`.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from data.folders import IMAGE_EXTENSIONS
from data.images import ImageError, content_hash, file_kind, printable

HASH_CHARS = 16  # 64 bits of SHA-256: the id also carries the path, so collisions need both
ID_PATH_CHARS = 200  # a longer path (or manifest id) is shortened in the id: `bounded`
ID_CHARS = ID_PATH_CHARS + 1 + HASH_CHARS  # the longest id: path part, '#', content hash
# The longest id a queued message may carry (one published by hand or by an older producer): well
# under PostgreSQL's btree limit for an index row (2704 bytes, the model version included).
MAX_ID_BYTES = 2000


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


def zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise SourceError(f"--tz {tz}: unknown time zone; give an IANA name such as Asia/Seoul or UTC") from None


def mtime_date(path: Path, tz: str | None = None) -> str | None:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, zone(tz)).date().isoformat()
    except (OSError, ValueError):  # gone, or a name no file can have (a NUL byte)
        return None


def parse_date(text: str, where: str) -> str:
    try:
        return dt.date.fromisoformat(text.strip()[:10]).isoformat()
    except ValueError:
        raise SourceError(f"{where}: captured_date '{text}' is not a date (YYYY-MM-DD)") from None


def resolve_day(text: str, tz: str | None = None, where: str = "--date", now: dt.datetime | None = None) -> str:
    """`today`, `yesterday` (in time zone `tz`, at `now`) or YYYY-MM-DD, as YYYY-MM-DD."""
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(zone(tz)).date()
    relative = {"today": now, "yesterday": now - dt.timedelta(days=1)}
    if text in relative:
        return relative[text].isoformat()
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise SourceError(f"{where} '{text}': give YYYY-MM-DD, today or yesterday") from None


def day_range(first: str, last: str, max_days: int = 366) -> list[str]:
    """Every day from `first` to `last`, both included."""
    a, b = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    if b < a:
        raise SourceError(f"--from {first} is after --to {last}")
    if (b - a).days >= max_days:
        raise SourceError(f"--from {first} --to {last}: more than {max_days} days; publish it in parts")
    return [(a + dt.timedelta(days=k)).isoformat() for k in range((b - a).days + 1)]


def list_source(source: str | Path, day=None, tz: str | None = None) -> list[SourceImage]:
    """The images of `scan_source`; each skipped entry is named on stderr."""
    items, skipped = scan_source(source, day, tz)
    warn_skipped(skipped)
    return items


def scan_source(source: str | Path, day=None, tz: str | None = None
                ) -> tuple[list[SourceImage], list[tuple[str, str]]]:
    """(every image of a folder tree or manifest, sorted by image id; only those captured on `day`
    (a YYYY-MM-DD or a collection of them) when given, and the (path, why) entries of a folder
    that were skipped). Only the kept files are hashed."""
    source = Path(source)
    skipped = []
    if source.is_dir():
        files, skipped = walk_folder(source)
        items = [(p.relative_to(source).as_posix(), p, mtime_date(p, tz), False) for p in files]
    elif source.is_file():
        items = read_manifest(source, tz)
    else:
        raise SourceError(f"{source}: no such folder or manifest file")
    if day is not None:
        days = {parse_date(d, "--date") for d in ([day] if isinstance(day, str) else day)}
        items = [i for i in items if i[2] in days]
    return sorted((SourceImage(bounded(name) if fixed else content_id(name, p), str(p), date)
                   for name, p, date, fixed in items), key=lambda i: i.image_id), skipped


def warn_skipped(skipped: list[tuple[str, str]]) -> None:
    for path, why in skipped:
        print(f"warning: {path}: skipped, {why} (only regular files inside the source are read)", file=sys.stderr)


def walk_folder(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """(regular image files under `root`, (path, why) of the entries skipped). Symbolic links are
    resolved, never followed out of `root` and never walked into as folders, so never in a loop."""
    top = root.resolve()
    files, skipped, stack = [], [], [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            skipped.append((str(folder), f"a folder that cannot be listed ({e.strerror})"))
            continue
        for entry in entries:
            p, image = Path(entry.path), Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue  # gone since the listing
            if stat.S_ISLNK(mode):
                why, target = link_target(p, top)
                if why is None and target == "file" and image:
                    files.append(p)
                elif why and (image or target in ("folder", "loop")):
                    skipped.append((str(p), why))
            elif stat.S_ISDIR(mode):
                stack.append(p)
            elif image and file_kind(mode):
                skipped.append((str(p), file_kind(mode)))
            elif image and printable(p) != str(p):
                skipped.append((printable(p), "its name is not valid UTF-8, which the table and the queue cannot "
                                              "hold; rename it (e.g. convmv -f cp949 -t utf-8 --notest)"))
            elif image:
                files.append(p)
    return files, sorted(skipped)


def link_target(link: Path, top: Path) -> tuple[str | None, str]:
    """(why the symbolic link `link` is skipped, or None; what it leads to: file, folder, loop or
    other). A link to a folder inside `top` is not walked: its images are listed under their own
    path."""
    try:
        real = link.resolve(strict=True)
    except FileNotFoundError:
        return "a broken symbolic link", "other"
    except (RuntimeError, OSError):  # a loop: RuntimeError up to Python 3.12, OSError (ELOOP) after
        return "a symbolic link loop", "loop"
    mode = real.stat().st_mode
    target = "folder" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"
    if not real.is_relative_to(top):
        return (f"a symbolic link to {real}, outside the source folder {top} (copy the data into the "
                f"source folder, or list the files in a manifest)"), target
    if target == "other":
        return f"a symbolic link to {file_kind(mode)}", target
    return None, target


def bounded(name: str) -> str:
    """`name` as the path part of an id: as it is up to ID_PATH_CHARS characters, else `~`, 16 hex
    digits of its SHA-256, `/` and its tail (the file's own name), ID_PATH_CHARS in all."""
    if len(name) <= ID_PATH_CHARS:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:HASH_CHARS]
    return f"~{digest}/{name[-(ID_PATH_CHARS - HASH_CHARS - 2):].lstrip('/')}"


def content_id(name: str, path: Path) -> str:
    try:
        return f"{bounded(name)}#{content_hash(path)[:HASH_CHARS]}"
    except (ImageError, OSError):
        return bounded(name)


def read_manifest(path: Path, tz: str | None = None) -> list[tuple[str, Path, str | None, bool]]:
    """(id or path as written, file, captured date, whether the id is the manifest's own) rows."""
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
            image_id = (row.get("image_id") or "").strip()
            if (image_id or raw) in seen:
                raise SourceError(f"{path}:{n}: image id '{image_id or raw}' listed twice")
            seen.add(image_id or raw)
            date = row.get("captured_date")
            date = parse_date(date, f"{path}:{n}") if date and date.strip() else mtime_date(p, tz)
            items.append((image_id or raw, p, date, bool(image_id)))
    return items
