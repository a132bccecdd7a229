"""What distinguishes the exterior classes: defects, dirt and car-wash foam on a Scene's paint.

Each adder edits the scene's albedo / gloss / dents (or appends a lit overlay) and draws a random
mix of its kinds with a random strength, so some marks are bold and some barely visible.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .common import arr, fractal_noise, grain, mask, over, rgb


def sample_point(sc, rng, tmin: float = 0.0, tmax: float = 1.0) -> tuple[float, float]:
    """A random pixel on the paint, preferring the band tmin <= t <= tmax of the panel."""
    paint = sc.paint > 0.5
    lo, hi = int(0.12 * sc.S), int(0.88 * sc.S)
    central = np.zeros_like(paint)
    central[lo:hi, lo:hi] = True  # users frame the damage; marks at the very border would be cut off
    idx = np.flatnonzero(paint & central & (sc.t >= tmin) & (sc.t <= tmax))
    if idx.size == 0:
        idx = np.flatnonzero(paint & (sc.t >= tmin) & (sc.t <= tmax))
    if idx.size == 0:
        idx = np.flatnonzero(paint)
    if idx.size == 0:
        idx = np.arange(sc.S * sc.S)
    i = int(idx[rng.integers(idx.size)])
    return i % sc.S + 0.5, i // sc.S + 0.5


def down(sc, x: float, y: float) -> np.ndarray:
    """Unit image-space direction in which water runs down the panel at (x, y)."""
    xi, yi = min(int(x), sc.S - 1), min(int(y), sc.S - 1)
    u, v = sc.u[yi, xi], sc.v[yi, xi]
    (x0, y0), (x1, y1) = sc.to_image(u, v), sc.to_image(u, v + 0.05)
    d = np.array([x1 - x0, y1 - y0])
    n = np.linalg.norm(d)
    return d / n if n > 1e-6 and d[1] > 0 else np.array([0.0, 1.0])


def _strength(rng) -> float:
    """Mostly clear marks, one in six subtle."""
    return float(rng.uniform(0.2, 0.45) if rng.random() < 0.17 else rng.uniform(0.5, 1.0))


def _lum(c) -> float:
    return float(np.dot(c, (0.3, 0.59, 0.11)))


def _polyline(rng, x, y, ang, length, n, wiggle):
    pts = [(x, y)]
    for _ in range(n):
        ang += rng.normal(0, wiggle)
        x += np.cos(ang) * length / n
        y += np.sin(ang) * length / n
        pts.append((x, y))
    return pts


# ---- defects ------------------------------------------------------------------------------
def add_defect(sc, rng, strength: float | None = None) -> None:
    s = _strength(rng) if strength is None else strength
    kinds = [k for k, p in (("scratch", 0.8), ("dent", 0.4), ("chips", 0.4), ("crack", 0.15)) if rng.random() < p]
    if kinds == ["dent"] and rng.random() < 0.5:  # a lone dent is easy to miss; often it is also scraped
        kinds.append("scratch")
    for k in kinds or ["scratch"]:
        {"scratch": _scratches, "dent": _dent, "chips": _chips, "crack": _crack}[k](sc, rng, s)


def _scratches(sc, rng, s):
    S, k = sc.S, sc.S / 192
    light_paint = _lum(sc.paint_colour) > 0.45
    m, d = mask(S)
    halo, dh = mask(S)
    x, y = sample_point(sc, rng, 0.05, 0.95)
    ang = rng.uniform(-0.5, 0.5) if rng.random() < 0.7 else rng.uniform(0, np.pi)
    for _ in range(rng.integers(1, 7)):
        # keyed scratches run roughly parallel; a scuff spreads them
        x1, y1 = x + rng.normal(0, 0.06 * S), y + rng.normal(0, 0.06 * S)
        length = S * rng.uniform(0.12, 0.7) * (0.6 + 0.4 * s)
        pts = _polyline(rng, x1 - np.cos(ang) * length / 2, y1 - np.sin(ang) * length / 2,
                        ang + rng.normal(0, 0.15), length, int(rng.integers(3, 9)), 0.08)
        w = max(1, int(k * rng.uniform(2, 5.5)))
        d.line(pts, fill=int(255 * rng.uniform(0.7, 1)), width=w, joint="curve")
        dh.line(pts, fill=255, width=w * 5)
    # the halo is the scuffed clear coat around the groove; it keeps thin scratches visible at 64 px
    a = (arr(m, blur=0.5 * k) + 0.5 * arr(halo, blur=2 * k)) * sc.paint * s
    if light_paint:
        col = [(0.25, 0.25, 0.26), (0.5, 0.5, 0.5), (0.15, 0.15, 0.17)][rng.integers(3)]
    else:
        col = [(0.85, 0.85, 0.85), (0.65, 0.66, 0.68), (0.95, 0.95, 0.93)][rng.integers(3)]
    over(sc.albedo, np.clip(a, 0, 1), col)
    sc.gloss *= 1 - 0.5 * np.clip(a, 0, 1)


def _dent(sc, rng, s):
    S = sc.S
    for _ in range(rng.integers(1, 3)):
        x, y = sample_point(sc, rng, 0.1, 0.9)
        r = S * rng.uniform(0.05, 0.14)
        sc.add_dent(x, y, r * rng.uniform(0.7, 1.4), r * rng.uniform(0.7, 1.4),
                    s * rng.uniform(0.7, 1.2) * rng.choice([-1, 1]))
        if rng.random() < 0.4:  # the paint often cracks in a crease across the dent
            m, d = mask(S)
            a = rng.uniform(0, np.pi)
            d.line([(x - np.cos(a) * r, y - np.sin(a) * r), (x + np.cos(a) * r, y + np.sin(a) * r)],
                   fill=200, width=max(1, int(S / 120)))
            over(sc.albedo, arr(m, 0.6) * sc.paint * s, (0.3, 0.3, 0.3))


def _chips(sc, rng, s):
    S = sc.S
    m, d = mask(S)
    rim, dr = mask(S)
    cx, cy = sample_point(sc, rng, 0.1, 1.0)
    spread = S * rng.uniform(0.02, 0.12)
    for _ in range(rng.integers(3, 16)):
        x, y = cx + rng.normal(0, spread), cy + rng.normal(0, spread)
        r = S * np.exp(rng.uniform(np.log(0.006), np.log(0.035)))
        n = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rr = r * rng.uniform(0.5, 1.2, n)
        poly = [(x + np.cos(a) * q, y + np.sin(a) * q) for a, q in zip(ang, rr)]
        dr.polygon([(x + (px - x) * 1.35, y + (py - y) * 1.35) for px, py in poly], fill=255)
        d.polygon(poly, fill=255)
    a = arr(m, 0.4) * sc.paint * s
    ring = np.clip(arr(rim, 0.4) - arr(m, 0.4), 0, 1) * sc.paint * s
    col = [(0.62, 0.62, 0.6), (0.45, 0.27, 0.14), (0.22, 0.22, 0.24), (0.8, 0.8, 0.78)][rng.integers(4)]
    over(sc.albedo, ring * 0.5, sc.paint_colour * 1.1 if _lum(sc.paint_colour) < 0.5 else (0.5, 0.5, 0.5))
    over(sc.albedo, a, col)
    sc.gloss *= 1 - a


def _crack(sc, rng, s):
    S, k = sc.S, sc.S / 192
    m, d = mask(S)
    lift, dl = mask(S)
    x, y = sample_point(sc, rng, 0.4, 1.0)
    for _ in range(rng.integers(2, 6)):
        pts = _polyline(rng, x, y, rng.uniform(0, 2 * np.pi), S * rng.uniform(0.08, 0.35), int(rng.integers(3, 8)), 0.5)
        w = max(1, int(k * rng.uniform(1.5, 3.5)))
        d.line(pts, fill=255, width=w)
        dl.line([(px + w, py + w) for px, py in pts], fill=160, width=w)
    over(sc.albedo, arr(lift, 0.5) * sc.paint * s * 0.6, (0.85, 0.85, 0.85))
    over(sc.albedo, arr(m, 0.5) * sc.paint * min(1.0, s * 1.3), (0.04, 0.04, 0.04))


# ---- dirt -----------------------------------------------------------------------------------
MUDS = [(0.33, 0.24, 0.15), (0.45, 0.36, 0.25), (0.6, 0.52, 0.4), (0.38, 0.35, 0.3), (0.25, 0.2, 0.14)]


def add_dirt(sc, rng, strength: float | None = None, colours=MUDS) -> None:
    s = _strength(rng) if strength is None else strength
    kinds = [k for k, p in (("splatter", 0.7), ("dust", 0.45), ("bird", 0.15), ("runs", 0.35)) if rng.random() < p]
    for k in kinds or ["splatter"]:
        {"splatter": splatter, "dust": _dust, "bird": _bird, "runs": _runs}[k](sc, rng, s, colours)


def splatter(sc, rng, s, colours=MUDS):
    """Mud thrown up by the wheels: blobs near the bottom and drops flying out from them."""
    S = sc.S
    m, d = mask(S)
    for _ in range(rng.integers(1, 4)):
        cx, cy = sample_point(sc, rng, 0.65, 1.05)
        spread = S * rng.uniform(0.08, 0.35)
        for _ in range(rng.integers(2, 8)):
            rx, ry = S * rng.uniform(0.015, 0.06), S * rng.uniform(0.01, 0.045)
            x, y = cx + rng.normal(0, spread * 0.3), cy + rng.normal(0, spread * 0.15)
            d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=int(255 * rng.uniform(0.7, 1)))
        for _ in range(int(rng.integers(30, 200) * (0.5 + s))):
            a = -np.pi / 2 + rng.normal(0, 0.9)  # mostly upward from the splash
            dist = rng.exponential(spread * 0.5)
            x, y = cx + np.cos(a) * dist, cy + np.sin(a) * dist + rng.normal(0, S * 0.02)
            r = S * np.exp(rng.uniform(np.log(0.003), np.log(0.015)))
            if rng.random() < 0.3:  # drops that hit at speed leave a tail
                d.line([(x, y), (x - np.cos(a) * r * 4, y - np.sin(a) * r * 4)], fill=180, width=max(1, int(r)))
            d.ellipse([x - r, y - r, x + r, y + r], fill=int(255 * rng.uniform(0.6, 1)))
    col = np.asarray(colours[rng.integers(len(colours))], np.float32) * rng.uniform(0.85, 1.15)
    tex = (1 + 0.25 * (fractal_noise(rng, S, (9, 21), (0.6, 0.4)) - 0.5))[..., None]
    a = np.clip(arr(m, 0.6 * S / 192) * sc.paint * rng.uniform(0.75, 1.0) * (0.6 + 0.4 * s), 0, 1)
    over(sc.albedo, a, np.clip(col * tex, 0, 1))
    sc.gloss *= 1 - a


def _dust(sc, rng, s, colours=MUDS):
    S = sc.S
    t0 = rng.uniform(-0.2, 0.7)
    ramp = np.clip((sc.t - t0) / rng.uniform(0.1, 0.5), 0, 1)
    # patchy, grainy film: a uniform tint would be invisible under changing light
    patches = np.clip(fractal_noise(rng, S, (4, 9, 23), (0.4, 0.35, 0.25)) * 2.4 - 0.7, 0, 1)
    film = ramp * patches * (1 + grain(rng, S, 0.45))
    a = np.clip(film * (0.4 + 0.6 * s) * rng.uniform(0.6, 1.0), 0, 0.92) * sc.paint
    col = np.array([0.55, 0.48, 0.38], np.float32) * rng.uniform(0.7, 1.05)
    over(sc.albedo, a, col)
    sc.gloss *= 1 - a


def _bird(sc, rng, s, colours=MUDS):
    S = sc.S
    for _ in range(rng.integers(1, 3)):
        x, y = sample_point(sc, rng, 0.0, 0.6)
        r = S * rng.uniform(0.02, 0.05)
        m, d = mask(S)
        c, dc = mask(S)
        ang = np.sort(rng.uniform(0, 2 * np.pi, 9))
        d.polygon([(x + np.cos(a) * r * rng.uniform(0.5, 1.3), y + np.sin(a) * r * rng.uniform(0.5, 1.3)) for a in ang], fill=255)
        dx, dy = down(sc, x, y)
        d.line([(x, y), (x + dx * r * 2.5, y + dy * r * 2.5)], fill=220, width=max(1, int(r / 3)))
        dc.ellipse([x - r * 0.35, y - r * 0.3, x + r * 0.35, y + r * 0.3], fill=255)
        a = arr(m, 0.7) * sc.paint * min(1, 0.5 + s)
        over(sc.albedo, a, (0.9, 0.9, 0.86))
        over(sc.albedo, arr(c, 0.7) * sc.paint * 0.8, (0.25, 0.22, 0.15))
        sc.gloss *= 1 - a


def _runs(sc, rng, s, colours=MUDS):
    """Dirty water that ran down from a ledge and dried as streaks with darker tips."""
    S, k = sc.S, sc.S / 192
    m, d = mask(S)
    x0, y0 = sample_point(sc, rng, -0.05, 0.45)
    across = np.array([-down(sc, x0, y0)[1], down(sc, x0, y0)[0]])
    width = S * rng.uniform(0.2, 0.8)
    for _ in range(rng.integers(8, 40)):
        o = rng.uniform(-0.5, 0.5) * width
        x, y = x0 + across[0] * o, y0 + across[1] * o
        dx, dy = down(sc, x % S, y % S)
        L = S * rng.uniform(0.05, 0.5)
        w = max(1, int(k * rng.uniform(0.8, 3)))
        pts = [(x + dx * L * f + rng.normal(0, 1.5 * k), y + dy * L * f) for f in np.linspace(0, 1, 6)]
        d.line(pts, fill=int(255 * rng.uniform(0.25, 0.9)), width=w)
        ex, ey = pts[-1]
        d.ellipse([ex - w, ey - w, ex + w, ey + w * 1.5], fill=255)
    a = arr(m, 0.6 * k) * sc.paint * (0.3 + 0.6 * s)
    col = np.asarray(colours[rng.integers(len(colours))], np.float32)
    over(sc.albedo, a, col)
    sc.gloss *= 1 - 0.7 * a


# ---- car-wash foam --------------------------------------------------------------------------
FOAMS = [(0.97, 0.97, 0.97), (1.0, 0.78, 0.88), (0.78, 0.88, 1.0), (1.0, 0.95, 0.7)]


def add_foam(sc, rng) -> None:
    """Clusters of overlapping bubbles with a rim and a highlight, over part of the car."""
    S = sc.S
    region, dr = mask(S)
    for _ in range(rng.integers(2, 7)):
        x, y = sample_point(sc, rng, -0.1, 1.0)
        rx, ry = S * rng.uniform(0.12, 0.45), S * rng.uniform(0.08, 0.35)
        dr.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)
    reg = arr(region, blur=S * 0.02) * np.maximum(sc.car, 0.0)
    reg = np.clip((reg + 0.35 * (fractal_noise(rng, S, (7, 17), (0.6, 0.4)) - 0.5)) * 1.6 - 0.2, 0, 1)
    tricolour = rng.random() < 0.25  # pink / blue / yellow "triple foam"
    base = FOAMS[0] if rng.random() < 0.6 else FOAMS[rng.integers(1, 3)]  # white, pink or blue
    layer = Image.new("RGB", (S, S), rgb(np.asarray(base) * 0.85))
    alpha = Image.new("L", (S, S), 0)
    dl, da = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    idx = np.flatnonzero(reg.ravel() > 0.5)
    if idx.size == 0:
        idx = np.flatnonzero(reg.ravel() > 0.05) if np.any(reg > 0.05) else np.arange(S * S)
    scale = np.exp(rng.uniform(np.log(0.006), np.log(0.03)))  # fine lather .. coarse bubbles
    n = int(min(700, idx.size / (np.pi * (scale * S) ** 2) * 1.5 + 30))
    for i in rng.choice(idx, n):
        x, y = i % S, i // S
        r = S * scale * np.exp(rng.normal(0, 0.45))
        col = np.asarray(FOAMS[rng.integers(len(FOAMS))] if tricolour else base) * rng.uniform(0.8, 1.0)
        if r > 2.5:  # below that the rim would swamp the bubble
            dl.ellipse([x - r, y - r, x + r, y + r], fill=rgb(col), outline=rgb(col * 0.72), width=max(1, int(r / 6)))
        else:
            dl.ellipse([x - r, y - r, x + r, y + r], fill=rgb(col))
        h = r * 0.3
        dl.ellipse([x - r * 0.45 - h, y - r * 0.45 - h, x - r * 0.45 + h, y - r * 0.45 + h], fill=(255, 255, 255))
        da.ellipse([x - r, y - r, x + r, y + r], fill=255)
    for _ in range(rng.integers(0, 12)):  # foam sliding down
        i = int(idx[rng.integers(idx.size)])
        x, y = i % S, i // S
        da.line([(x, y), (x + rng.normal(0, 2), y + S * rng.uniform(0.05, 0.25))], fill=200, width=max(1, int(S * rng.uniform(0.005, 0.02))))
    a = np.clip(np.maximum(arr(alpha) * 0.95, reg * 0.85) * rng.uniform(0.85, 1.0), 0, 1)
    colour = np.asarray(layer, np.float32) / 255.0
    sc.overlays.append((a, colour * 1.15))
    sc.gloss *= 1.3  # the car under the foam is wet
