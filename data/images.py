"""Decoding one image file into RGB, with one clear error for every way a file can be bad.

Training, evaluation, concatenation and the pipeline all read images through `load_rgb`, so a
corrupt, truncated, empty, CMYK, 16-bit, RGBA or decompression-bomb file is handled the same way.
Only regular files are ever read: a FIFO opened for reading blocks until someone writes to it.
"""
from __future__ import annotations

import hashlib
import os
import stat
import warnings
from pathlib import Path

from PIL import ExifTags, Image, ImageFile, ImageOps

# Anything above this many pixels is refused rather than decoded (a decompression bomb would
# otherwise exhaust memory); phone photos are ~12-50 Mpx.
MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and what is wrong."""


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ('a FIFO', 'a socket', ...), for messages."""
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder",
             stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISLNK: "a symbolic link"}
    return next((kind for test, kind in kinds.items() if test(mode)), "not a file")


def printable(path: str | Path) -> str:
    """`path` as text that any terminal, log or database takes: bytes that are not UTF-8 (a CP949
    name from a Windows zip) as \\xNN escapes, a NUL byte as \\x00."""
    text = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
    return text.replace("\x00", "\\x00")


def open_regular(path: Path):
    """`path` opened for binary reading if it is a regular file, else ImageError naming what it is.

    The open does not block (O_NONBLOCK) and the check is on the opened file, so a FIFO or a device
    swapped in after a listing is refused, never waited on or read without end.
    """
    if "\x00" in str(path):  # os.open would raise ValueError: no file has such a name
        raise ImageError(f"{printable(path)}: the path holds a NUL byte; no file has such a name (fix the list "
                         f"or message that gave it)")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except OSError as e:  # a socket cannot be opened (ENXIO)
        raise ImageError(f"{path}: cannot be opened ({e.strerror}); remove it or replace it with a regular "
                         f"file") from None
    kind = file_kind(os.fstat(fd).st_mode)
    if kind:
        os.close(fd)
        raise ImageError(f"{path}: not a regular file ({kind}); remove it or replace it with a regular file")
    return os.fdopen(fd, "rb")


# JPEG DCT scaling (Pillow's `draft`) decodes at 1/2, 1/4 or 1/8 of the stored size for a fraction
# of the work. It is used only when the caller says what size the image will be resized to, and
# only down to REDUCING_GAP x that size (Pillow's own `thumbnail` rule): the resize that follows
# still antialiases from at least twice the target, so the result is the plain decode's to within
# resampling noise. A file smaller than 2 x REDUCING_GAP x the target decodes exactly as without it.
REDUCING_GAP = 2


def load_rgb(path: str | Path, size: tuple[int, int] | None = None) -> Image.Image:
    """Open `path` fully decoded as 8-bit RGB, or raise ImageError naming the file.

    `size` (width, height, as displayed): what the caller resizes the image to next. A JPEG at least
    2 * REDUCING_GAP times larger on both sides is then decoded at a reduced scale (DCT scaling),
    never below REDUCING_GAP * size; without `size`, or for smaller files, the full decode."""
    path = Path(path)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with open_regular(path) as f:
        return _decode_rgb(f, path, size)


def _draft(im: Image.Image, size: tuple[int, int]) -> None:
    """Ask the JPEG decoder for the smallest DCT scale that keeps REDUCING_GAP x `size`."""
    if im.format != "JPEG":
        return
    w, h = (REDUCING_GAP * max(1, int(v)) for v in size)
    if im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):  # stored sideways: swap
        w, h = h, w
    if min(im.width // w, im.height // h) >= 2:
        im.draft(None, (w, h))


def _decode_rgb(f, path: Path, size: tuple[int, int] | None = None) -> Image.Image:
    """load_rgb on an opened regular file; `path` is for the messages."""
    try:
        if os.fstat(f.fileno()).st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes); re-export or remove it")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"{path}: {im.width}x{im.height} pixels exceeds the limit of "
                                     f"{MAX_PIXELS:,} (possible decompression bomb); downscale it")
                if size is not None:
                    _draft(im, size)
                im.load()
                # A phone photo is stored sideways with an EXIF orientation tag: show it upright, in
                # training and serving alike (this is the one decoder).
                return to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: too many pixels (possible decompression bomb); downscale it") from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad files
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e}); "
                         f"re-export it or remove it") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any mode to RGB; 16-bit greyscale is scaled, transparency composited on white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray((a / top * 255).clip(0, 255).astype("uint8"), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def content_hash(path: str | Path) -> str:
    """SHA-256 of the file's bytes: the identity of an image across datasets."""
    h = hashlib.sha256()
    with open_regular(Path(path)) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
