"""Out-of-distribution uploads: shop receipts and paper documents photographed on a table.

The paper is laid out flat (pseudo-glyph text, separators, tables, stamps), then mapped into the
photo by a random homography over a desk background, with a hand/phone shadow sometimes.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .common import fractal_noise, grain, grid, rgb, to_float, to_pil, tone, vignette, warp_flat

INK = (0.12, 0.12, 0.14)


def _table(rng, S) -> np.ndarray:
    X, Y = grid(S)
    if rng.random() < 0.5:  # wood: stretched noise along the grain
        c = np.array([0.45, 0.3, 0.18], np.float32) * rng.uniform(0.4, 1.1)
        ang = rng.uniform(0, np.pi)
        along = X * np.cos(ang) + Y * np.sin(ang)
        rings = np.sin(along / S * rng.uniform(20, 60) + 4 * fractal_noise(rng, S))
        tex = 1 + 0.12 * rings + grain(rng, S, 0.03)
    else:
        g = rng.uniform(0.08, 0.45)
        c = np.array([g, g * rng.uniform(0.95, 1.05), g * rng.uniform(0.9, 1.1)], np.float32)
        tex = 1 + 0.2 * (fractal_noise(rng, S) - 0.5) + grain(rng, S, 0.05)
    return np.clip(c * tex[..., None], 0, 1)


def text_line(d, rng, x, y, width, h, bold=False, colour=INK):
    """Pseudo-glyphs: one small block per character with random gaps between words."""
    cw = h * 0.62
    xe = x + width
    while x < xe - cw:
        if rng.random() < 0.16:
            x += cw
            continue
        gh = h * rng.uniform(0.55, 1.0)
        d.rectangle([x, y + h - gh, x + cw * (0.8 if bold else 0.6), y + h], fill=rgb(np.asarray(colour) * rng.uniform(0.7, 1.3)))
        x += cw


def _place(scene: Image.Image, paper: Image.Image, rng, cover: float) -> Image.Image:
    """Map the flat paper onto a random convex quad of the photo, over its soft shadow."""
    S = scene.size[0]
    warped = warp_flat(paper, rng, S, cover, turn=0.6)
    shadow = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    a = warped.getchannel("A").point(lambda v: v * 0.45)
    shadow.putalpha(a)
    out = scene.convert("RGBA")
    off = int(S * 0.012)
    out.alpha_composite(shadow, (off, off))
    out.alpha_composite(warped)
    return out.convert("RGB")


def _photo(img: np.ndarray, rng) -> np.ndarray:
    S = img.shape[0]
    X, Y = grid(S)
    if rng.random() < 0.5:  # the phone's / hand's shadow over part of the page
        a = rng.uniform(0, 2 * np.pi)
        edge = (X / S - 0.5) * np.cos(a) + (Y / S - 0.5) * np.sin(a) - rng.uniform(0.0, 0.35)
        img = img * (1 - rng.uniform(0.25, 0.55) * np.clip(edge / 0.05 + 0.5, 0, 1))[..., None]
    a = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(0.05, 0.4) * ((X / S - 0.5) * np.cos(a) + (Y / S - 0.5) * np.sin(a))
    warm = rng.uniform(-0.7, 0.9)  # indoor bulbs are warm
    img = img * (grad * vignette(S, rng.uniform(0, 0.4)))[..., None]
    img = img * np.array([1 + 0.1 * warm, 1, 1 - 0.14 * warm], np.float32) * np.exp(rng.uniform(np.log(0.6), np.log(1.25)))
    return tone(img)


def receipt(rng, S: int) -> np.ndarray:
    W, H = int(S * rng.uniform(0.45, 0.6)), int(S * rng.uniform(1.1, 1.6))
    paper = np.array([0.93, 0.93, 0.9], np.float32) * rng.uniform(0.85, 1.0)
    xx = np.linspace(-1, 1, W, dtype=np.float32)
    curl = 1 - rng.uniform(0.03, 0.15) * xx ** 2 + rng.uniform(-0.05, 0.05) * xx  # thermal paper curls
    im = to_pil(np.clip(paper * np.tile(curl[None, :, None], (H, 1, 1)), 0, 1))
    d = ImageDraw.Draw(im)
    m, lh = W * 0.08, S * rng.uniform(0.022, 0.03)
    y = m
    for _ in range(rng.integers(1, 3)):  # shop name, centred and bold
        w = W * rng.uniform(0.4, 0.7)
        text_line(d, rng, (W - w) / 2, y, w, lh * 1.5, bold=True)
        y += lh * 2.0
    for _ in range(rng.integers(1, 4)):  # address, phone
        w = W * rng.uniform(0.3, 0.75)
        text_line(d, rng, (W - w) / 2, y, w, lh)
        y += lh * 1.4

    def dashes(y):
        for x in np.arange(m, W - m, lh * 0.9):
            d.line([(x, y), (x + lh * 0.5, y)], fill=rgb(INK), width=max(1, int(lh / 5)))

    dashes(y + lh * 0.5)
    y += lh * 1.5
    for _ in range(rng.integers(3, 12)):  # items: name left, price right
        if y > H - 6 * lh:
            break
        text_line(d, rng, m, y, W * rng.uniform(0.25, 0.55), lh)
        pw = W * rng.uniform(0.12, 0.22)
        text_line(d, rng, W - m - pw, y, pw, lh)
        y += lh * 1.4
    dashes(y + lh * 0.5)
    y += lh * 1.5
    text_line(d, rng, m, y, W * 0.3, lh * 1.6, bold=True)  # TOTAL
    text_line(d, rng, W - m - W * 0.3, y, W * 0.3, lh * 1.6, bold=True)
    y += lh * 2.6
    if rng.random() < 0.6 and y < H - 4 * lh:  # barcode
        x, bh = m * 1.5, lh * rng.uniform(2, 3.5)
        while x < W - m * 1.5:
            bw = rng.choice([1, 1, 2, 3]) * max(1.0, S / 192)
            if rng.random() < 0.55:
                d.rectangle([x, y, x + bw * 0.8, y + bh], fill=rgb(INK))
            x += bw
        y += bh + lh
    while y < H - 2 * lh:
        w = W * rng.uniform(0.3, 0.7)
        text_line(d, rng, (W - w) / 2, y, w, lh)
        y += lh * 1.4
    scene = to_pil(_table(rng, S))
    return _photo(to_float(_place(scene, im, rng, rng.uniform(0.8, 1.3))), rng)


def document(rng, S: int) -> np.ndarray:
    W = int(S * 1.1)
    H = int(W * 1.414)
    paper = np.array([0.95, 0.95, 0.93], np.float32) * rng.uniform(0.85, 1.0)
    im = to_pil(np.clip(paper + np.zeros((H, W, 3), np.float32), 0, 1))
    d = ImageDraw.Draw(im)
    m = W * rng.uniform(0.08, 0.14)
    lh = S * rng.uniform(0.018, 0.028)
    y = m
    if rng.random() < 0.4:  # letterhead logo
        d.rectangle([m, y, m + W * 0.15, y + lh * 3], fill=rgb([(0.1, 0.2, 0.6), (0.6, 0.1, 0.1), (0.2, 0.2, 0.2)][rng.integers(3)]))
    centred = rng.random() < 0.5
    tw = W * rng.uniform(0.3, 0.6)
    text_line(d, rng, (W - tw) / 2 if centred else m, y + lh * 4, tw, lh * 2, bold=True)
    y += lh * 8
    table_done = rng.random() > 0.45
    while y < H - m - 2 * lh:
        if not table_done and rng.random() < 0.4:  # a table grid with short cell entries
            rows, cols = int(rng.integers(3, 8)), int(rng.integers(2, 6))
            rh, cw = lh * 1.8, (W - 2 * m) / cols
            rows = min(rows, int((H - m - y) / rh) - 1)
            for r in range(max(rows, 0) + 1):
                d.line([(m, y + r * rh), (W - m, y + r * rh)], fill=rgb(INK), width=1)
            for c in range(cols + 1):
                d.line([(m + c * cw, y), (m + c * cw, y + max(rows, 0) * rh)], fill=rgb(INK), width=1)
            for r in range(max(rows, 0)):
                for c in range(cols):
                    text_line(d, rng, m + c * cw + lh * 0.4, y + r * rh + lh * 0.4, cw * rng.uniform(0.3, 0.8), lh, bold=r == 0)
            y += (max(rows, 0) + 1) * rh
            table_done = True
            continue
        for _ in range(rng.integers(2, 7)):  # a paragraph; its last line is short
            if y > H - m - 2 * lh:
                break
            text_line(d, rng, m, y, W - 2 * m, lh)
            y += lh * 1.5
        text_line(d, rng, m, y, (W - 2 * m) * rng.uniform(0.2, 0.7), lh)
        y += lh * 2.6
    if rng.random() < 0.45:  # official stamp: ring, inner ring, text
        col = (0.8, 0.15, 0.15) if rng.random() < 0.6 else (0.15, 0.25, 0.75)
        sx, sy, r = W * rng.uniform(0.5, 0.8), H * rng.uniform(0.6, 0.85), W * rng.uniform(0.1, 0.17)
        stamp = Image.new("L", (W, H), 0)
        ds = ImageDraw.Draw(stamp)
        ds.ellipse([sx - r, sy - r, sx + r, sy + r], outline=255, width=max(2, int(r / 10)))
        ds.ellipse([sx - r * 0.7, sy - r * 0.7, sx + r * 0.7, sy + r * 0.7], outline=255, width=max(1, int(r / 18)))
        for a in np.linspace(0, 2 * np.pi, 18, endpoint=False):
            ds.rectangle([sx + np.cos(a) * r * 0.85 - 2, sy + np.sin(a) * r * 0.85 - 2, sx + np.cos(a) * r * 0.85 + 2, sy + np.sin(a) * r * 0.85 + 2], fill=255)
        ds.rectangle([sx - r * 0.4, sy - r * 0.12, sx + r * 0.4, sy + r * 0.12], fill=255)
        ink = rng.uniform(0.6, 0.9)
        im.paste(Image.new("RGB", (W, H), rgb(col)), (0, 0), stamp.point(lambda v: int(v * ink)))
    scene = to_pil(_table(rng, S))
    return _photo(to_float(_place(scene, im, rng, rng.uniform(0.9, 1.5))), rng)
