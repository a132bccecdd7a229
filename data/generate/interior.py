"""Interior and engine-bay classes: dashboard, cup holder, glovebox, washer fluid, seat.

Each scene is drawn flat with PIL plus numpy shading, then `photo` adds what a phone shot from the
driver's seat adds: uneven window light, exposure, colour cast and a tilted viewpoint.
"""
from __future__ import annotations

import numpy as np
from PIL import ImageDraw

from .common import fractal_noise, grain, grid, perspective, rgb, to_float, to_pil, tone, vignette


def photo(img: np.ndarray, rng, warp: float = 0.08) -> np.ndarray:
    S = img.shape[0]
    X, Y = grid(S)
    a = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(0.1, 0.6) * ((X / S - 0.5) * np.cos(a) + (Y / S - 0.5) * np.sin(a))
    img = img * (grad * vignette(S, rng.uniform(0, 0.5)))[..., None]
    warm = rng.uniform(-0.8, 0.8)
    img = img * np.array([1 + 0.1 * warm, 1, 1 - 0.12 * warm], np.float32) * np.exp(rng.uniform(np.log(0.6), np.log(1.35)))
    img = to_float(perspective(to_pil(img), rng, warp))
    return tone(img)


def _surface(rng, S, colour, rough: float) -> np.ndarray:
    """Moulded plastic / trim: base colour, soft blotches, grain."""
    c = np.asarray(colour, np.float32)
    tex = 1 + 0.25 * (fractal_noise(rng, S) - 0.5) + grain(rng, S, rough)
    return np.clip(c * tex[..., None], 0, 1)


def _dark(rng):
    g = rng.uniform(0.05, 0.22)
    return np.array([g, g * rng.uniform(0.95, 1.05), g * rng.uniform(0.95, 1.1)], np.float32)


def dashboard(rng, S: int) -> np.ndarray:
    img = _surface(rng, S, _dark(rng), 0.05)
    im = to_pil(img)
    d = ImageDraw.Draw(im)
    k = S / 192
    cy = S * rng.uniform(0.3, 0.55)
    n = int(rng.choice([1, 2, 2, 3]))
    R = S * rng.uniform(0.12, 0.24) * (1.3 if n == 1 else 1)
    xs = S / 2 + (np.arange(n) - (n - 1) / 2) * R * rng.uniform(2.05, 2.4) + rng.normal(0, 0.08 * S)
    d.ellipse([xs.min() - R * 1.3, cy - R * 1.35, xs.max() + R * 1.3, cy + R * 1.3], fill=rgb(img.mean((0, 1)) * 0.4))  # cluster hood
    glow = [(1, 1, 1), (1, 0.6, 0.15), (0.5, 0.8, 1), (0.9, 0.2, 0.15)][rng.integers(4)]
    for x in xs:
        r = R * rng.uniform(0.85, 1.0)
        d.ellipse([x - r, cy - r, x + r, cy + r], fill=rgb((0.02, 0.02, 0.03)), outline=rgb((0.6, 0.6, 0.62)), width=max(1, int(3 * k)))
        a0, a1 = np.deg2rad(rng.uniform(130, 150)), np.deg2rad(rng.uniform(390, 410))
        nt = int(rng.integers(20, 60))
        for i, a in enumerate(np.linspace(a0, a1, nt)):
            major = i % 5 == 0
            r1 = r * (0.72 if major else 0.82)
            d.line([(x + np.cos(a) * r1, cy + np.sin(a) * r1), (x + np.cos(a) * r * 0.9, cy + np.sin(a) * r * 0.9)],
                   fill=rgb(glow), width=max(1, int((2 if major else 1) * k)))
            if major and rng.random() < 0.8:  # numerals as small glyph blocks
                gx, gy = x + np.cos(a) * r * 0.58, cy + np.sin(a) * r * 0.58
                d.rectangle([gx - 2 * k, gy - 2.5 * k, gx + 2 * k, gy + 2.5 * k], fill=rgb(np.asarray(glow) * 0.8))
        a = rng.uniform(a0, a1)
        d.line([(x, cy), (x + np.cos(a) * r * 0.85, cy + np.sin(a) * r * 0.85)], fill=rgb((1, 0.25, 0.05)), width=max(2, int(3 * k)))
        d.ellipse([x - r * 0.12, cy - r * 0.12, x + r * 0.12, cy + r * 0.12], fill=rgb((0.15, 0.15, 0.15)))
    if rng.random() < 0.5:  # centre infotainment screen
        x0 = rng.choice([rng.uniform(-0.1, 0.05), rng.uniform(0.6, 0.75)]) * S
        y0 = S * rng.uniform(0.1, 0.5)
        w, h = S * rng.uniform(0.3, 0.45), S * rng.uniform(0.2, 0.3)
        d.rounded_rectangle([x0, y0, x0 + w, y0 + h], radius=int(4 * k), fill=rgb((0.02, 0.02, 0.02)))
        ui = [(0.1, 0.25, 0.5), (0.2, 0.35, 0.25), (0.8, 0.8, 0.75)][rng.integers(3)]
        d.rectangle([x0 + 3 * k, y0 + 3 * k, x0 + w - 3 * k, y0 + h - 3 * k], fill=rgb(ui))
        for _ in range(rng.integers(3, 9)):
            bx, by = rng.uniform(x0, x0 + w * 0.8), rng.uniform(y0, y0 + h * 0.8)
            d.rectangle([bx, by, bx + w * rng.uniform(0.05, 0.2), by + h * rng.uniform(0.05, 0.2)], fill=rgb(1 - np.asarray(ui) * 0.5))
    if rng.random() < 0.4:  # air vent slats
        x0, y0 = rng.uniform(0, 0.8) * S, rng.uniform(0.55, 0.8) * S
        for i in range(6):
            d.line([(x0, y0 + i * 4 * k), (x0 + 0.2 * S, y0 + i * 4 * k)], fill=rgb((0.02, 0.02, 0.02)), width=max(1, int(2 * k)))
    if rng.random() < 0.75:  # steering-wheel rim in the foreground
        cx, wy = S * rng.uniform(0.3, 0.7), S * rng.uniform(1.0, 1.35)
        Rw = S * rng.uniform(0.45, 0.7)
        wheel = rgb(_dark(rng) * 0.5)
        d.ellipse([cx - Rw, wy - Rw, cx + Rw, wy + Rw], outline=wheel, width=int(S * rng.uniform(0.05, 0.09)))
        d.arc([cx - Rw, wy - Rw, cx + Rw, wy + Rw], 200, 340, fill=rgb((0.35, 0.35, 0.35)), width=max(1, int(2 * k)))
        d.ellipse([cx - Rw * 0.35, wy - Rw * 0.45, cx + Rw * 0.35, wy + Rw * 0.2], fill=wheel)
    return photo(to_float(im), rng)


def _holder(d, rng, x, y, R, squash, base, k):
    """A moulded well: light lip, shading that deepens toward the bottom."""
    for i in range(12):
        f = 1 - i / 12
        shade = 0.25 + 0.75 * f ** 2 if i else 1.4
        off = (1 - f) * R * 0.25  # the floor of the well is seen lower than its mouth
        d.ellipse([x - R * f, y + off - R * f * squash, x + R * f, y + off + R * f * squash], fill=rgb(base * shade))


def cup_holder(rng, S: int) -> np.ndarray:
    base = _dark(rng) if rng.random() < 0.7 else np.array([0.45, 0.4, 0.33], np.float32) * rng.uniform(0.6, 1.2)
    img = _surface(rng, S, base, 0.04)
    im = to_pil(img)
    d = ImageDraw.Draw(im)
    k = S / 192
    n = 1 if rng.random() < 0.35 else 2
    R = S * rng.uniform(0.13, 0.24) * (1.3 if n == 1 else 1)
    squash = rng.uniform(0.6, 1.0)
    cy = S * rng.uniform(0.4, 0.6)
    xs = S / 2 + (np.arange(n) - (n - 1) / 2) * R * rng.uniform(2.1, 2.5)
    d.rounded_rectangle([xs.min() - R * 1.35, cy - R * squash * 1.4, xs.max() + R * 1.35, cy + R * squash * 1.4],
                        radius=int(R * 0.4), fill=rgb(base * 0.8), outline=rgb(base * 1.6), width=max(1, int(2 * k)))
    for x in xs:
        _holder(d, rng, x, cy, R, squash, base * 0.9, k)
    if rng.random() < 0.5:  # something in one holder
        x = xs[rng.integers(n)]
        r = R * rng.uniform(0.7, 0.9)
        if rng.random() < 0.5:  # coffee cup with lid
            cup = [(0.95, 0.95, 0.93), (0.2, 0.2, 0.2), (0.6, 0.1, 0.1), (0.1, 0.4, 0.25)][rng.integers(4)]
            d.ellipse([x - r, cy - r * squash - R * 0.2, x + r, cy + r * squash - R * 0.2], fill=rgb(cup), outline=rgb(np.asarray(cup) * 0.6), width=max(1, int(3 * k)))
            d.ellipse([x - r * 0.2, cy - R * 0.5 - r * squash * 0.1, x + r * 0.1, cy - R * 0.5 + r * squash * 0.1], fill=rgb((0.05, 0.05, 0.05)))
        else:  # bottle seen from above: cap and translucent shoulder
            d.ellipse([x - r, cy - r * squash - R * 0.2, x + r, cy + r * squash - R * 0.2], fill=rgb((0.6, 0.7, 0.75)))
            c = [(0.1, 0.3, 0.8), (0.9, 0.9, 0.9), (0.8, 0.1, 0.1), (0.1, 0.6, 0.2)][rng.integers(4)]
            d.ellipse([x - r * 0.4, cy - r * 0.4 * squash - R * 0.2, x + r * 0.4, cy + r * 0.4 * squash - R * 0.2], fill=rgb(c))
    if rng.random() < 0.5:  # buttons / gear-shift surround
        for _ in range(rng.integers(2, 6)):
            bx, by = rng.uniform(0.05, 0.85) * S, rng.choice([rng.uniform(0.02, 0.15), rng.uniform(0.82, 0.95)]) * S
            d.rounded_rectangle([bx, by, bx + 0.1 * S, by + 0.06 * S], radius=int(2 * k), fill=rgb(base * 0.5), outline=rgb(base * 1.8))
    return photo(to_float(im), rng)


def glovebox(rng, S: int) -> np.ndarray:
    trim = [(0.12, 0.12, 0.13), (0.55, 0.5, 0.42), (0.35, 0.35, 0.36), (0.25, 0.2, 0.17)][rng.integers(4)]
    trim = np.asarray(trim, np.float32) * rng.uniform(0.8, 1.2)
    img = _surface(rng, S, trim, 0.03)
    im = to_pil(img)
    d = ImageDraw.Draw(im)
    k = S / 192
    x0, x1 = S * rng.uniform(-0.05, 0.2), S * rng.uniform(0.8, 1.05)
    y0, y1 = S * rng.uniform(0.05, 0.3), S * rng.uniform(0.5, 0.7)
    ins = S * rng.uniform(0.02, 0.08)
    cavity = [(x0, y0), (x1, y0), (x1 - ins, y1), (x0 + ins, y1)]
    d.polygon(cavity, fill=rgb(trim * 0.15))
    for i in range(8):  # light falls in from the open side: the far wall is darkest at the top
        f = i / 8
        yy = y0 + (y1 - y0) * (0.4 + 0.6 * f)
        d.rectangle([x0 + ins, yy, x1 - ins, y1], fill=rgb(trim * (0.15 + 0.25 * f)))
    if rng.random() < 0.65:  # papers, manual, registration folder
        for _ in range(rng.integers(1, 4)):
            px, py = rng.uniform(x0 + ins, x1 - 0.3 * S), rng.uniform(y0 + 0.05 * S, y1 - 0.15 * S)
            w, h = S * rng.uniform(0.15, 0.4), S * rng.uniform(0.1, 0.25)
            colour = [(0.9, 0.9, 0.86), (0.85, 0.8, 0.6), (0.15, 0.2, 0.45), (0.6, 0.1, 0.1)][rng.integers(4)]
            sk = rng.uniform(-0.05, 0.05) * S
            d.polygon([(px, py + sk), (px + w, py), (px + w, py + h), (px, py + h + sk)], fill=rgb(colour))
            if colour[0] > 0.8:
                for j in range(int(h / (5 * k)) - 1):
                    d.line([(px + 3 * k, py + (j + 1) * 5 * k + sk / 2), (px + w * rng.uniform(0.5, 0.9), py + (j + 1) * 5 * k + sk / 2)], fill=rgb((0.4, 0.4, 0.4)), width=1)
    # open lid tilted toward the camera, with its inner face and a latch
    ly1 = min(S * 1.05, y1 + S * rng.uniform(0.25, 0.45))
    d.polygon([(x0 + ins, y1), (x1 - ins, y1), (x1 + ins, ly1), (x0 - ins, ly1)], fill=rgb(trim * 0.85), outline=rgb(trim * 1.5))
    d.line([(x0 + ins, y1), (x1 - ins, y1)], fill=rgb(np.minimum(trim * 2, 1)), width=max(1, int(3 * k)))
    lx = (x0 + x1) / 2
    d.rectangle([lx - 0.06 * S, y1 + 0.02 * S, lx + 0.06 * S, y1 + 0.05 * S], fill=rgb(trim * 0.5))
    if rng.random() < 0.5:  # moulded cup recesses in the lid
        for f in (0.3, 0.7):
            cx = x0 + (x1 - x0) * f
            d.ellipse([cx - 0.06 * S, y1 + 0.08 * S, cx + 0.06 * S, y1 + 0.14 * S], fill=rgb(trim * 0.6))
    return photo(to_float(im), rng)


def washer_fluid(rng, S: int) -> np.ndarray:
    img = _surface(rng, S, _dark(rng) * 0.8, 0.08)
    im = to_pil(img)
    d = ImageDraw.Draw(im)
    k = S / 192
    for _ in range(rng.integers(3, 8)):  # engine parts: castings, covers, brackets
        x, y = rng.uniform(-0.2, 1) * S, rng.uniform(-0.2, 1) * S
        g = rng.uniform(0.15, 0.5)
        d.rounded_rectangle([x, y, x + rng.uniform(0.15, 0.5) * S, y + rng.uniform(0.1, 0.4) * S], radius=int(6 * k),
                            fill=rgb((g, g, g * 1.02)), outline=rgb((g * 0.5,) * 3), width=max(1, int(2 * k)))
        for _ in range(rng.integers(0, 4)):
            bx, by = x + rng.uniform(0, 0.1) * S, y + rng.uniform(0, 0.1) * S
            d.ellipse([bx - 3 * k, by - 3 * k, bx + 3 * k, by + 3 * k], fill=rgb((0.6, 0.6, 0.6)))
    for _ in range(rng.integers(1, 4)):  # hoses
        pts = [(rng.uniform(0, S), rng.uniform(0, S)) for _ in range(3)]
        w = int(S * rng.uniform(0.03, 0.06))
        d.line(pts, fill=rgb((0.04, 0.04, 0.04)), width=w, joint="curve")
        d.line([(x, y - w / 4) for x, y in pts], fill=rgb((0.2, 0.2, 0.2)), width=max(1, w // 5), joint="curve")
    # the translucent reservoir with the fluid level showing through
    cx, cy = S * rng.uniform(0.35, 0.65), S * rng.uniform(0.45, 0.65)
    w, h = S * rng.uniform(0.3, 0.55), S * rng.uniform(0.35, 0.6)
    shell = np.array([0.8, 0.78, 0.68], np.float32) * rng.uniform(0.75, 1.05)
    fluid = [(0.15, 0.4, 0.9), (0.2, 0.55, 0.95), (0.9, 0.35, 0.6), (0.3, 0.7, 0.4)][0 if rng.random() < 0.75 else rng.integers(1, 4)]
    body = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    d.rounded_rectangle(body, radius=int(min(w, h) * 0.2), fill=rgb(shell), outline=rgb(shell * 0.6), width=max(1, int(2 * k)))
    level = cy - h / 2 + h * rng.uniform(0.25, 0.7)
    d.rounded_rectangle([body[0] + 3 * k, level, body[2] - 3 * k, body[3] - 3 * k], radius=int(min(w, h) * 0.15),
                        fill=rgb(shell * 0.4 + np.asarray(fluid) * 0.6))
    d.line([(body[0] + 3 * k, level), (body[2] - 3 * k, level)], fill=rgb(np.asarray(fluid) * 0.8 + 0.2), width=max(1, int(2 * k)))
    for i in range(3):  # moulding ribs
        yy = body[1] + h * (0.25 + 0.25 * i)
        d.line([(body[0], yy), (body[0] + w * 0.15, yy)], fill=rgb(shell * 0.7), width=max(1, int(2 * k)))
    # cap with the washer symbol
    r = S * rng.uniform(0.07, 0.11)
    px, py = cx + rng.uniform(-0.25, 0.25) * w, cy - h / 2
    cap = [(0.15, 0.35, 0.85), (0.95, 0.8, 0.1), (0.1, 0.1, 0.1)][rng.integers(3)]
    d.ellipse([px - r, py - r, px + r, py + r], fill=rgb(cap), outline=rgb(np.asarray(cap) * 0.6), width=max(1, int(2 * k)))
    sym = (0.95, 0.95, 0.95) if cap[0] < 0.5 else (0.1, 0.1, 0.1)
    d.arc([px - r * 0.6, py - r * 0.4, px + r * 0.6, py + r * 0.8], 200, 340, fill=rgb(sym), width=max(1, int(2 * k)))
    for a in (-0.5, 0, 0.5):
        d.line([(px, py + r * 0.3), (px + np.sin(a) * r * 0.6, py + r * 0.3 - np.cos(a) * r * 0.5)], fill=rgb(sym), width=1)
    return photo(to_float(im), rng, warp=0.1)


def seat(rng, S: int) -> np.ndarray:
    X, Y = grid(S)
    colour = [(0.1, 0.1, 0.11), (0.35, 0.35, 0.37), (0.62, 0.55, 0.45), (0.35, 0.22, 0.15), (0.55, 0.55, 0.55)][rng.integers(5)]
    colour = np.asarray(colour, np.float32) * rng.uniform(0.8, 1.2)
    leather = rng.random() < 0.35
    f = rng.uniform(0.6, 1.4) * S / 192
    if leather:
        tex = 1 + grain(rng, S, 0.03) + 0.08 * (fractal_noise(rng, S, (13, 31), (0.5, 0.5)) - 0.5)
        if rng.random() < 0.5:  # perforations
            tex = tex * (1 - 0.5 * ((np.sin(X / (3 * f)) > 0.85) & (np.sin(Y / (3 * f)) > 0.85)))
    else:  # woven cloth: two crossing thread sets plus fibre noise
        ang = rng.uniform(0, np.pi)
        a = np.sin((X * np.cos(ang) + Y * np.sin(ang)) / (1.2 * f))
        b = np.sin((-X * np.sin(ang) + Y * np.cos(ang)) / (1.2 * f))
        tex = 1 + 0.12 * a * b + grain(rng, S, 0.1)
    # upholstery panels bulge between seams: shade by distance to the nearest seam
    cx, curve = S * rng.uniform(0.35, 0.65), rng.uniform(-0.002, 0.002)
    half = S * rng.uniform(0.18, 0.35)
    seam_x = [cx - half + curve * (Y - S / 2) ** 2, cx + half - curve * (Y - S / 2) ** 2]
    seam_y = [S * rng.uniform(0.2, 0.45) + rng.uniform(-0.15, 0.15) * (X - cx), S * rng.uniform(0.6, 0.85) + rng.uniform(-0.15, 0.15) * (X - cx)]
    dist = np.minimum.reduce([np.abs(X - s) for s in seam_x] + [np.abs(Y - s) * (np.abs(X - cx) < half) + 1e3 * (np.abs(X - cx) >= half) for s in seam_y])
    bulge = 0.6 + 0.4 * np.tanh(dist / (0.05 * S))
    img = colour * (tex * bulge)[..., None]
    im = to_pil(img)
    d = ImageDraw.Draw(im)
    k = S / 192
    stitch = rgb(colour * 1.6 if rng.random() < 0.7 else [(0.8, 0.1, 0.1), (0.9, 0.9, 0.9), (0.9, 0.6, 0.2)][rng.integers(3)])
    for sx in seam_x:  # double top-stitching beside each seam
        for off in (-4 * k, 4 * k):
            ys = np.arange(0, S, 6 * k)
            for y in ys:
                xx = sx[min(int(y), S - 1), 0] + off
                d.line([(xx, y), (xx, y + 3 * k)], fill=stitch, width=max(1, int(k)))
    if rng.random() < 0.4:  # headrest on its chrome posts
        hx, hw = cx + rng.normal(0, 0.05 * S), S * rng.uniform(0.2, 0.3)
        hy = S * rng.uniform(0.02, 0.15)
        for px in (hx - hw * 0.5, hx + hw * 0.5):
            d.rectangle([px - 2 * k, hy + 0.1 * S, px + 2 * k, hy + 0.22 * S], fill=rgb((0.7, 0.7, 0.72)))
        d.rounded_rectangle([hx - hw, hy - 0.05 * S, hx + hw, hy + 0.15 * S], radius=int(12 * k), fill=rgb(colour * 0.9), outline=rgb(colour * 0.5), width=max(1, int(2 * k)))
    return photo(to_float(im), rng, warp=0.1)
