"""Shared drawing helpers for the procedural SOFAR-like generator.

Scenes are drawn as float32 RGB arrays in [0, 1] at twice the output size; `finish` then
downsamples, adds sensor noise and encodes a JPEG the way a phone upload would look.
"""
from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


@functools.lru_cache(maxsize=8)
def grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of an S x S canvas; shared, so read-only."""
    y, x = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def smooth_noise(rng, S: int, cells: int = 4) -> np.ndarray:
    """Low-frequency noise in about [0, 1]: a random cells x cells grid upsampled bicubically."""
    g = rng.random((cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(g, mode="F").resize((S, S), Image.BICUBIC))


def fractal_noise(rng, S: int, cells=(3, 7, 17), weights=(0.55, 0.3, 0.15)) -> np.ndarray:
    out = np.zeros((S, S), np.float32)
    for c, w in zip(cells, weights):
        out += w * smooth_noise(rng, S, c)
    return out


def grain(rng, S: int, amount: float) -> np.ndarray:
    """Per-pixel texture (asphalt grit, fabric fibres): zero-mean, std `amount`."""
    return rng.standard_normal((S, S), dtype=np.float32) * amount


def mask(S: int):
    """A blank 8-bit mask and its drawer; masks are drawn with PIL because it is fast and anti-aliases
    well enough once the 2x canvas is downsampled."""
    m = Image.new("L", (S, S), 0)
    return m, ImageDraw.Draw(m)


def arr(m: Image.Image, blur: float = 0.0) -> np.ndarray:
    if blur > 0:
        m = m.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(m, np.float32) * (1.0 / 255.0)


def blur_rgb(img: np.ndarray, radius: float) -> np.ndarray:
    return to_float(to_pil(img).filter(ImageFilter.GaussianBlur(radius)))


def over(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """In place: img = img * (1 - alpha) + colour * alpha (colour: RGB triple or image)."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * np.asarray(colour, np.float32)


def to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def to_float(im: Image.Image) -> np.ndarray:
    return np.asarray(im, np.float32) * (1.0 / 255.0)


def rgb(c) -> tuple[int, int, int]:
    """Float RGB in [0, 1] -> the int triple PIL drawing wants."""
    return tuple(int(np.clip(v, 0, 1) * 255 + 0.5) for v in c)


def jitter(rng, colour, amount: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 1)


def homography(src, dst) -> np.ndarray:
    """3x3 H with dst ~ H @ src for four point pairs."""
    A, b = [], []
    for (x, y), (X, Y) in zip(src, dst):
        A.append([x, y, 1, 0, 0, 0, -X * x, -X * y])
        b.append(X)
        A.append([0, 0, 0, x, y, 1, -Y * x, -Y * y])
        b.append(Y)
    h = np.linalg.solve(np.asarray(A, np.float64), np.asarray(b, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def perspective(im: Image.Image, rng, strength: float, fill=None) -> Image.Image:
    """A hand-held viewpoint: warp by a random homography. Without `fill` the source quad lies
    inside the drawing (corners only move inward), so no empty corner shows in the output."""
    S = im.size[0]
    j = strength * S
    out = [(0, 0), (S, 0), (S, S), (0, S)]
    if fill is None:
        src = [(x + (1 if x == 0 else -1) * rng.uniform(0, 2 * j),
                y + (1 if y == 0 else -1) * rng.uniform(0, 2 * j)) for x, y in out]
    else:
        src = [(x + rng.uniform(-j, j), y + rng.uniform(-j, j)) for x, y in out]
    coeffs = homography(out, src)
    return im.transform((S, S), Image.PERSPECTIVE, tuple(coeffs.flatten()[:8]), Image.BICUBIC,
                        fillcolor=fill)


def warp_flat(flat: Image.Image, rng, S: int, cover: float, turn: float) -> Image.Image:
    """A flat thing (paper, licence plate) seen in the photo: mapped onto a random convex quad of an
    S x S canvas, `cover` of the frame across, turned up to `turn` radians; RGBA, clear around it."""
    w, h = flat.size
    cx, cy = S * rng.uniform(0.35, 0.65), S * rng.uniform(0.35, 0.65)
    ang = rng.uniform(-turn, turn)
    k = cover * S / max(w, h)
    quad = []
    for px, py in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        x, y = px * k, py * k
        quad.append((cx + x * np.cos(ang) - y * np.sin(ang) + rng.normal(0, 0.05 * S),
                     cy + x * np.sin(ang) + y * np.cos(ang) + rng.normal(0, 0.05 * S)))
    H = homography(quad, [(0, 0), (w, 0), (w, h), (0, h)])  # output pixel -> flat pixel
    return flat.convert("RGBA").transform((S, S), Image.PERSPECTIVE, tuple(H.flatten()[:8]), Image.BICUBIC)


def vignette(S: int, strength: float) -> np.ndarray:
    x, y = grid(S)
    r2 = ((x / S - 0.5) ** 2 + (y / S - 0.5) ** 2) * 2.0
    return 1.0 - strength * r2


def tone(img: np.ndarray) -> np.ndarray:
    """Phone-camera highlight roll-off: linear to 0.8, then a soft shoulder toward 1."""
    hi = img > 0.8
    out = img.copy()
    out[hi] = 0.8 + 0.2 * (1.0 - np.exp(-(img[hi] - 0.8) / 0.2))
    return np.clip(out, 0.0, 1.0)


def finish(img: np.ndarray, size: int, rng, blur_p: float = 0.15) -> bytes:
    """Downsample, add sensor noise, JPEG-encode; returns the file bytes."""
    im = to_pil(img)
    if rng.random() < blur_p:  # missed focus / hand shake
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.7, 2.2) * im.size[0] / 192))
    im = im.resize((size, size), Image.LANCZOS)
    a = np.asarray(im, np.float32)
    sigma = rng.uniform(0.5, 5.5)  # ISO varies with light
    noise = rng.standard_normal(a.shape[:2], dtype=np.float32)[..., None] * sigma
    noise = noise + rng.standard_normal(a.shape, dtype=np.float32) * (sigma * 0.4)
    a = np.clip(a + noise + 0.5, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=int(rng.integers(70, 96)))
    return buf.getvalue()
