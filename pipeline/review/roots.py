"""The source roots of the review page: every image it shows is read from inside one of them, and
shown as a small JPEG made on the fly (never the file's own bytes).

A row's `source` is the path `predict` was given (absolute, or relative to where it ran); it is
looked for as written and under each root, and used only when its real path (symbolic links
followed) lies inside a root. A request names an image as (root number, path under the root):
an absolute path, a `..` part, a NUL byte or a link whose target leaves the root is refused, so a
request can never reach a file outside the roots, however it is spelled or encoded.
"""
from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path

from data.images import ImageError, load_rgb

SIDES = {"thumb": 160, "large": 640}
CACHE_ENTRIES = 4096  # thumbnails of 160 px are a few KiB each: tens of MiB at most


class RootError(ValueError):
    """A --source root that cannot be used."""


class Roots:
    def __init__(self, roots):
        self.roots = []
        for r in roots:
            if not Path(r).is_dir():
                raise RootError(f"--source {r}: no such folder; give the folder(s) the table's images were "
                                f"predicted from")
            self.roots.append(os.path.realpath(r))

    def inside(self, real: str) -> int | None:
        """The number of the root that holds the real path `real`, or None."""
        for n, root in enumerate(self.roots):
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                return n
        return None

    def locate(self, source: str) -> tuple[int, str] | None:
        """(root number, path under it) of a row's source file, or None when it is not a file inside
        a root."""
        if not source or "\x00" in source:
            return None
        candidates = [source] if os.path.isabs(source) else [source, *(os.path.join(r, source) for r in self.roots)]
        for c in candidates:
            real = os.path.realpath(c)
            n = self.inside(real)
            if n is not None and os.path.isfile(real):
                return n, os.path.relpath(real, self.roots[n])
        return None

    def resolve(self, n: int, rel: str) -> str | None:
        """The real path of `rel` under root `n` when it is a file inside that root, else None."""
        if not 0 <= n < len(self.roots) or not rel or "\x00" in rel or "\\" in rel or os.path.isabs(rel):
            return None
        if any(part in ("..", ".") for part in rel.split("/")):
            return None
        real = os.path.realpath(os.path.join(self.roots[n], rel))
        return real if self.inside(real) == n and os.path.isfile(real) else None


def thumbnail(real: str, side: int) -> bytes:
    """The image at `real` as a JPEG at most `side` px on its longer side; ImageError if it cannot be
    read. Cached by path, size and modification time, so a replaced file is made again."""
    st = os.stat(real)
    return _thumbnail(real, st.st_mtime_ns, st.st_size, side)


@lru_cache(maxsize=CACHE_ENTRIES)
def _thumbnail(real: str, mtime_ns: int, size: int, side: int) -> bytes:
    im = load_rgb(real, (side, side))
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


__all__ = ["Roots", "RootError", "thumbnail", "ImageError", "SIDES"]
