"""Distribution shifts of the external-validation sets: snow, slush, rain, droplets, seasons.

`scene` builds an exterior Scene under the shift's light and ground, `pre` edits its layers
(salt, wet paint) and `post` paints what lies between the camera and the car (flakes, streaks,
water drops). The class marks are added between `scene` and `pre`, so they stay visible.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from . import marks
from .common import arr, fractal_noise, grid, mask, over, smooth_noise
from .exterior import Scene, sample_light

SHIFTS = ("snow", "after_snow", "rain", "after_rain", "h1", "h2")
COLD = np.array([0.9, 0.97, 1.1], np.float32)


def scene(rng, S: int, shift: str | None) -> Scene:
    if shift in (None, "h1", "h2"):
        light = sample_light(rng, shift)
        if shift == "h1":
            light.exposure *= rng.uniform(0.75, 1.0)
        return Scene(rng, S, light)
    light = sample_light(rng)
    light.shadows = 0.0
    if shift == "snow":
        light.overcast = rng.uniform(0.4, 0.95)
        light.tint = COLD * rng.uniform(0.95, 1.03)
        return Scene(rng, S, light, snow_ground=True)
    if shift == "rain":
        light.overcast = rng.uniform(0.75, 1.0)
        light.exposure *= rng.uniform(0.5, 0.8)
        light.tint = np.float32(0.5) * (light.tint + COLD)
    else:  # after_snow, after_rain: clearing sky, still wet
        light.overcast = rng.uniform(0.2, 0.8)
        if shift == "after_snow":
            light.tint = COLD
    sc = Scene(rng, S, light)
    sc.wet = rng.uniform(0.6, 1.0)
    return sc


def pre(sc: Scene, rng, shift: str | None) -> None:
    if shift == "after_snow":
        salts = [(0.82, 0.82, 0.8), (0.62, 0.62, 0.6), (0.45, 0.45, 0.44), (0.7, 0.68, 0.62)]
        marks.splatter(sc, rng, rng.uniform(0.5, 1.0), salts)
        film = np.clip((sc.t - rng.uniform(0.3, 0.7)) / 0.3, 0, 1) * np.clip(fractal_noise(rng, sc.S) * 1.6 - 0.2, 0, 1)
        over(sc.albedo, film * sc.paint * rng.uniform(0.3, 0.7), (0.75, 0.75, 0.73))
        # grey slush heaps on the dark wet ground
        slush = np.clip(fractal_noise(rng, sc.S, (5, 11, 29), (0.5, 0.3, 0.2)) * 3 - 1.5, 0, 1) * sc.ground
        over(sc.bg_alb, slush, (0.55, 0.56, 0.58))
    if shift in ("rain", "after_rain"):
        sc.gloss *= 1.4
        sc.refl *= 1.3


def post(sc: Scene, img: np.ndarray, rng, shift: str | None) -> np.ndarray:
    if shift == "snow":
        _snow_cover(sc, img, rng)
        c = rng.uniform(0.12, 0.35)  # falling snow scatters light: lower contrast
        img = img * (1 - c) + c * np.array([0.82, 0.85, 0.9], np.float32)
        _flakes(sc, img, rng)
    elif shift == "rain":
        lum = img @ np.array([0.3, 0.59, 0.11], np.float32)
        img = img * 0.7 + 0.3 * lum[..., None]
        _streaks(sc, img, rng)
        _droplets(sc, img, rng, few=True)
    elif shift == "after_rain":
        _droplets(sc, img, rng)
    return img


def _snow_cover(sc, img, rng):
    """Snow lying on the top edge of the car (and on the window's lower edge)."""
    S = sc.S
    _, Y = grid(S)
    car = sc.car > 0.5
    top = np.argmax(car, axis=0).astype(np.float32)
    has = car.any(axis=0) & (top > 0)
    prof = smooth_noise(rng, S, 9)[S // 2]
    above = S * (0.01 + 0.05 * prof * rng.uniform(0.5, 1.5))
    below = S * rng.uniform(0.01, 0.05) * (0.5 + prof)
    m = (Y >= top - above) & (Y <= top + below) & has[None, :]
    a = m.astype(np.float32)
    shade = 0.85 + 0.15 * np.clip((top + below - Y) / np.maximum(above + below, 1), 0, 1)
    over(img, _soften(a, S), np.array([0.93, 0.95, 1.0], np.float32) * shade[..., None])
    # a dusting on the lower paint that the wind pushed there
    dust = np.clip(fractal_noise(rng, S) * 2.5 - rng.uniform(1.1, 1.6), 0, 1) * sc.paint
    over(img, dust * 0.8, (0.92, 0.94, 0.98))


def _soften(a, S):
    """Soften a hard 0/1 mask so the snow line is not a jagged pixel edge."""
    return arr(Image.fromarray((a * 255).astype(np.uint8)), blur=S / 200)


def _flakes(sc, img, rng):
    S = sc.S
    for blur, n in ((0.0, rng.integers(80, 400)), (S * 0.012, rng.integers(5, 40))):  # far, near
        m, d = mask(S)
        for _ in range(int(n * (S / 192) ** 2)):
            x, y = rng.uniform(0, S), rng.uniform(0, S)
            r = S * np.exp(rng.uniform(np.log(0.003), np.log(0.012 if blur == 0 else 0.04)))
            d.ellipse([x - r, y - r, x + r, y + r], fill=int(255 * rng.uniform(0.6, 1)))
        over(img, arr(m, blur=blur + 0.4), (0.96, 0.97, 1.0))


def _streaks(sc, img, rng):
    S = sc.S
    m, d = mask(S)
    ang = np.pi / 2 + rng.uniform(-0.5, 0.5)
    for _ in range(int(rng.integers(120, 450) * (S / 192) ** 2)):
        x, y = rng.uniform(-0.1, 1.1) * S, rng.uniform(-0.1, 1.1) * S
        L = S * rng.uniform(0.03, 0.16)
        d.line([(x, y), (x + np.cos(ang) * L, y + np.sin(ang) * L)], fill=int(255 * rng.uniform(0.2, 0.6)),
               width=max(1, int(S / 190 * rng.uniform(0.8, 2))))
    over(img, arr(m, blur=0.5), (0.85, 0.88, 0.92))


def _droplets(sc, img, rng, few: bool = False):
    """Drops on the paint act as tiny lenses: an inverted view inside, a dark rim, a highlight."""
    S = sc.S
    n = int(rng.integers(5, 40) if few else rng.integers(40, 260))
    src = img.copy()
    X, Y = grid(S)
    for _ in range(n):
        x, y = marks.sample_point(sc, rng, 0.0, 1.0)
        r = int(max(2, S * np.exp(rng.uniform(np.log(0.005), np.log(0.022)))))
        x0, y0 = int(x) - r, int(y) - r
        if x0 < 0 or y0 < 0 or x0 + 2 * r >= S or y0 + 2 * r >= S:
            continue
        yy, xx = np.mgrid[-r:r, -r:r].astype(np.float32) + 0.5
        stretch = rng.uniform(1.0, 1.6)  # heavier drops sag downward
        rr = np.sqrt(xx ** 2 + (yy / stretch) ** 2) / r
        inside = (rr < 1).astype(np.float32)
        patch = src[y0:y0 + 2 * r, x0:x0 + 2 * r][::-1, ::-1] * 0.8 + 0.08
        rim = np.exp(-((rr - 0.9) / 0.12) ** 2) * inside
        hl = np.exp(-(((xx + r * 0.35) ** 2 + (yy + r * 0.35) ** 2) / (r * 0.22) ** 2))
        region = img[y0:y0 + 2 * r, x0:x0 + 2 * r]
        over(region, inside * 0.85, patch)
        region *= (1 - 0.45 * rim)[..., None]
        region += (hl * inside * 0.8)[..., None]
