"""The car inside the washing machine: a dimly lit panel in a dark tunnel behind rotating brushes,
spray mist and water jets (class 4_CARS_INSIDE_OF_THE_WASHING_MACHINE).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from . import marks
from .common import arr, fractal_noise, mask, over, rgb, to_float
from .exterior import Scene, sample_light

BRUSH_COLOURS = [(0.15, 0.3, 0.85), (0.85, 0.15, 0.15), (0.15, 0.7, 0.25), (0.95, 0.8, 0.1), (0.9, 0.9, 0.9), (0.1, 0.6, 0.9)]


def _brush(rng, S, layer: ImageDraw.ImageDraw, alpha: ImageDraw.ImageDraw) -> None:
    """A spinning cylinder brush: hundreds of coloured strands, shaded round, flaring at the edges."""
    vertical = rng.random() < 0.7
    c = S * rng.uniform(-0.1, 1.1)
    hw = S * rng.uniform(0.12, 0.35)
    cols = [BRUSH_COLOURS[i] for i in rng.choice(len(BRUSH_COLOURS), size=int(rng.integers(1, 3)), replace=False)]
    slant = rng.uniform(-0.4, 0.4)  # spin smears the strands into a helix
    k = S / 192
    for _ in range(int(rng.integers(150, 320))):
        o = rng.uniform(-1, 1)
        shade = np.sqrt(max(0.0, 1 - o * o)) * 0.8 + 0.2
        col = np.asarray(cols[rng.integers(len(cols))]) * shade * rng.uniform(0.75, 1.15)
        flare = 1 + 0.25 * rng.random() * (abs(o) > 0.8)
        p0 = rng.uniform(-0.2, 1.2) * S
        L = S * rng.uniform(0.1, 0.5)
        n = 5
        pts = []
        for j in range(n + 1):
            along = p0 + L * j / n
            across = c + o * hw * flare + slant * (along - S / 2) * 0.3 + np.sin(along / (S * 0.05) + o * 3) * 2 * k
            pts.append((across, along) if vertical else (along, across))
        w = max(1, int(k * rng.uniform(1, 3)))
        layer.line(pts, fill=rgb(col), width=w)
        alpha.line(pts, fill=255, width=w)


def car_in_wash(rng, S: int) -> np.ndarray:
    light = sample_light(rng)
    light.overcast, light.shadows = rng.uniform(0.6, 1.0), 0.0
    light.exposure *= rng.uniform(0.55, 0.9)
    sc = Scene(rng, S, light, setting="tunnel")
    sc.gloss *= 1.4  # soaked
    if rng.random() < 0.4:
        marks.add_foam(sc, rng)
    img = sc.render()
    layer = Image.new("RGB", (S, S))
    alpha = Image.new("L", (S, S), 0)
    dl, da = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    for _ in range(int(rng.integers(1, 4))):
        _brush(rng, S, dl, da)
    lit = light.exposure * rng.uniform(0.7, 1.2)
    over(img, arr(alpha, blur=0.4 * S / 192), to_float(layer) * lit)
    # water jets fanning out of nozzles on the gantry
    m, d = mask(S)
    for _ in range(int(rng.integers(0, 6))):
        x0, y0 = rng.uniform(0, S), rng.choice([rng.uniform(-0.1, 0.1), rng.uniform(0, 1)]) * S
        base = rng.uniform(0, 2 * np.pi)
        for a in base + np.linspace(-0.4, 0.4, int(rng.integers(4, 14))):
            L = S * rng.uniform(0.2, 0.8)
            d.line([(x0, y0), (x0 + np.cos(a) * L, y0 + np.sin(a) * L)], fill=int(255 * rng.uniform(0.3, 0.8)), width=max(1, int(S / 190)))
    over(img, arr(m, blur=0.6), (0.85, 0.9, 0.95))
    mist = np.clip(fractal_noise(rng, S) * 1.8 - rng.uniform(0.2, 0.9), 0, 1) * rng.uniform(0.2, 0.6)
    over(img, mist, np.array([0.75, 0.8, 0.85], np.float32) * lit)
    return sc.finish(img)
