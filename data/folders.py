"""Image files in a dataset's folders, found without opening any and without leaving the dataset.

Only names with an image extension count. An entry that is no regular file (a FIFO, a socket, a
folder with an image's name, a broken link) is skipped and named on stderr, never opened: opening a
FIFO would block. Symbolic links are followed only within the dataset root (`bound`) and never in a
loop; one that leads out of it is a SpecError unless the spec allows it (data/spec.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

from data.images import file_kind

SPEC_FILE = "dataset.yaml"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class SpecError(ValueError):
    """A dataset or its spec is wrong; the message names the file and the fix."""


def follow(path: Path, bound: Path) -> Path | None:
    """`path` with its symbolic links resolved, None for a broken link. A link loop, or a link that
    leads out of `bound`, is a SpecError naming the link and where it leads."""
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        return None
    except (RuntimeError, OSError):  # a loop: RuntimeError up to Python 3.12, OSError (ELOOP) after
        raise SpecError(f"{path}: symbolic link loop; remove the link or point it at a file") from None
    if not real.is_relative_to(bound.resolve()):
        # name the outermost link below `bound`: the one to remove or to point elsewhere
        links = [a for a in (path, *path.parents) if a != bound and a.is_relative_to(bound) and a.is_symlink()]
        link = links[-1] if links else path
        raise SpecError(f"{link}: symbolic link to {link.resolve()}, outside the dataset root {bound}; copy the "
                        f"data into the dataset, or add 'allow_outside_root: true' to its {SPEC_FILE}")
    return real


def scan_images(folder: Path, bound: Path | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files, skipped entries with what they are) directly in `folder`; nothing is opened.

    Only names with an image extension count. One that is no regular file (a FIFO, a socket, a
    folder, a broken link) is skipped: opening a FIFO would block. Links are followed only within
    `bound` (default: `folder` itself) and never in a loop; see `follow`.
    """
    folder = Path(folder)
    images, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        real = follow(p, bound or folder) if p.is_symlink() else p
        kind = "a broken symbolic link" if real is None else file_kind(real.stat().st_mode)
        if kind:
            skipped.append((p, kind))
        else:
            images.append(p)
    return images, skipped


_reported: set[Path] = set()  # skipped entries already named on stderr (a folder is listed many times)


def list_images(folder: Path, bound: Path | None = None) -> list[Path]:
    """The image files of `scan_images`; each skipped entry is named once on stderr."""
    images, skipped = scan_images(folder, bound)
    for p, kind in skipped:
        if p not in _reported:
            _reported.add(p)
            print(f"warning: {p}: skipped, {kind} (only regular files are read as images)", file=sys.stderr)
    return images
