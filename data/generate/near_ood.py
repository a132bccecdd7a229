"""Near-OOD uploads: photos from the car domain that show none of the classes.

Deployment meets them beside the classes: a wheel or a licence plate, lamp or mirror filling the
frame, an in-domain scene spoiled (far too dark, shaken, a finger over the lens), a view over the
parking lot or the street with no panel filling the frame. They are drawn with the exterior
classes' Scene, paints, light and ground, so colour and texture do not give them away. Receipts and
documents (documents.py) are the far-OOD sets.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .common import arr, fractal_noise, grain, grid, mask, over, rgb, to_float, warp_flat
from .exterior import Scene, sample_paint
from .marks import MUDS


def _ellipse(S: int, cx: float, cy: float, R: float, squash: float, rot: float):
    """(radius in units of R, angle) of every pixel around a tilted ellipse: a disc seen at an angle."""
    X, Y = grid(S)
    c, s = np.cos(rot), np.sin(rot)
    a = ((X - cx) * c + (Y - cy) * s) / R
    b = (-(X - cx) * s + (Y - cy) * c) / (R * squash)
    return np.sqrt(a * a + b * b), np.arctan2(b, a)


def _inside(r: np.ndarray, edge: float, R: float) -> np.ndarray:
    """Anti-aliased mask of r < edge for a field r in units of R pixels."""
    return np.clip((edge - r) * R + 0.5, 0, 1).astype(np.float32)


# ---- wheels ---------------------------------------------------------------------------------
def wheel(rng, S: int) -> np.ndarray:
    """A wheel close-up: tyre with sidewall lettering, spoked rim over the brake disc, the dark arch
    above, the car's paint around it; brake dust and mud sometimes."""
    sc = Scene(rng, S)
    R = S * rng.uniform(0.3, 0.55)
    cx, cy = S * rng.uniform(0.3, 0.7), S * rng.uniform(0.4, 0.7)
    squash, rot = rng.uniform(0.75, 1.0), rng.uniform(-0.25, 0.25)
    r, ang = _ellipse(S, cx, cy, R, squash, rot)
    up = -np.sin(ang)  # 1 at the top of the wheel, which faces the sky
    rim_r = rng.uniform(0.58, 0.75)
    col = np.empty((S, S, 3), np.float32)
    rubber = rng.uniform(0.04, 0.09) * (1 + 0.5 * up * np.clip(r - rim_r, 0, 1) * 3) + grain(rng, S, 0.01)
    letters = ((r > 0.8) & (r < 0.9) & (np.cos(ang * rng.integers(30, 60)) > 0.5)
               & (np.abs(ang - rng.uniform(-3, 3)) < 0.8))  # raised lettering on the sidewall
    col[:] = (rubber + 0.07 * letters)[..., None]
    metal = rng.uniform(0.35, 0.8) if rng.random() < 0.7 else rng.uniform(0.06, 0.12)
    shine = metal * (0.75 + 0.35 * up) + 0.25 * np.exp(-((ang + rng.uniform(1, 2.2)) / 0.25) ** 2)
    n = int(rng.integers(5, 11))
    spokes = (np.cos(n * (ang + rng.uniform(0, np.pi))) > rng.uniform(-0.3, 0.5)) & (r > 0.15)
    disc = np.where(r < rim_r * 0.85, 0.28 + 0.05 * np.cos(ang * 40), 0.05).astype(np.float32)
    rim = np.where(spokes | (r < 0.17) | (r > rim_r * 0.9), shine, disc)
    col = np.where((r < rim_r)[..., None], rim[..., None] * np.ones(3, np.float32), col)
    if rng.random() < 0.5:  # the brake caliper behind the spokes
        ca = rng.uniform(-np.pi, np.pi)
        cal = (np.abs(ang - ca) < 0.35) & (r > rim_r * 0.6) & (r < rim_r * 0.85) & ~spokes
        col[cal] = [(0.6, 0.08, 0.06), (0.3, 0.3, 0.32), (0.85, 0.7, 0.1)][rng.integers(3)]
    if rng.random() < 0.5:  # brake dust settles on the rim
        dust = np.clip(fractal_noise(rng, S) * 1.8 - 0.5, 0, 1) * (r < rim_r) * rng.uniform(0.3, 0.7)
        over(col, dust, (0.3, 0.25, 0.18))
    if rng.random() < 0.4:  # mud on the lower tyre
        mud = np.clip(fractal_noise(rng, S, (7, 17), (0.6, 0.4)) * 2 - 0.6, 0, 1) * (np.sin(ang) > 0.2) * (r > rim_r)
        over(col, mud, MUDS[rng.integers(len(MUDS))])
    tyre = _inside(r, 1.0, R)
    arch = _inside(r, rng.uniform(1.08, 1.22), R) * (np.sin(ang) < rng.uniform(0.0, 0.4))
    over(col, 1 - tyre, (0.02, 0.02, 0.02))  # the arch's dark cavity behind the tyre
    sc.overlays.append((np.maximum(tyre, arch), col))
    sc.paint *= 1 - np.maximum(tyre, arch)
    return sc.finish(sc.render())


# ---- licence plates and other exterior details ------------------------------------------------
SEGMENTS = [((0, 0), (1, 0)), ((1, 0), (1, 1)), ((1, 1), (1, 2)), ((0, 2), (1, 2)), ((0, 1), (0, 2)),
            ((0, 0), (0, 1)), ((0, 1), (1, 1))]  # a seven-segment character: digits and letters alike


def _plate(rng, S: int) -> Image.Image:
    h = S * rng.uniform(0.25, 0.35)
    w = h * rng.choice([2.0, 4.7, 4.7])
    bg, ink = [((0.92, 0.92, 0.9), (0.08, 0.08, 0.1)), ((0.95, 0.8, 0.2), (0.08, 0.08, 0.1)),
               ((0.15, 0.4, 0.3), (0.92, 0.92, 0.9))][rng.choice(3, p=[0.65, 0.2, 0.15])]
    im = Image.new("RGB", (int(w), int(h)), rgb(bg))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, w - 1, h - 1], outline=rgb(np.asarray(ink) * 0.8 + 0.1), width=max(1, int(h / 18)))
    ch = h * 0.32  # half the character height
    cw = ch * rng.uniform(0.8, 1.0)
    n = int((w * 0.86) // (cw * 1.6))
    x = (w - n * cw * 1.6) / 2 + cw * 0.3
    for i in range(n):
        if rng.random() < 0.12 and 0 < i < n - 1:  # the gap between the plate's groups
            x += cw * 1.6
            continue
        segs = [s for s in SEGMENTS if rng.random() < 0.65] or SEGMENTS[:4]
        for (x0, y0), (x1, y1) in segs:
            d.line([(x + x0 * cw, h * 0.18 + y0 * ch), (x + x1 * cw, h * 0.18 + y1 * ch)], fill=rgb(ink),
                   width=max(1, int(ch / 4)))
        x += cw * 1.6
    return im


def detail(rng, S: int) -> np.ndarray:
    """A licence plate, a lamp or a side mirror filling the frame, on the car's paint."""
    sc = Scene(rng, S)
    kind = rng.choice(["plate", "plate", "lamp", "mirror"])
    if kind == "plate":
        if rng.random() < 0.5:  # the bumper's dark plastic recess around the plate
            m, d = mask(S)
            x0, y0 = S * rng.uniform(-0.1, 0.15), S * rng.uniform(0.1, 0.35)
            d.rounded_rectangle([x0, y0, S - x0 * rng.uniform(0, 1), y0 + S * rng.uniform(0.4, 0.6)],
                                radius=S * 0.05, fill=255)
            sc.overlays.append((arr(m, 0.6), np.full((S, S, 3), rng.uniform(0.04, 0.1), np.float32)))
        plate = warp_flat(_plate(rng, S), rng, S, rng.uniform(0.6, 1.0), turn=0.2)
        a = to_float(plate.getchannel("A"))
        col = to_float(plate.convert("RGB"))
        if rng.random() < 0.35:  # road grime on the plate
            over(col, np.clip(fractal_noise(rng, S) * 2 - 0.9, 0, 1) * 0.6, MUDS[rng.integers(len(MUDS))])
        sc.overlays.append((a, col))
    elif kind == "lamp":
        R = S * rng.uniform(0.3, 0.5)
        r, ang = _ellipse(S, S * rng.uniform(0.35, 0.65), S * rng.uniform(0.35, 0.65), R, rng.uniform(0.4, 0.8),
                          rng.uniform(-0.4, 0.4))
        tail = rng.random() < 0.4
        inner = (0.5, 0.03, 0.03) if tail else (0.1, 0.1, 0.11)
        col = np.empty((S, S, 3), np.float32)
        col[:] = inner
        for k in range(int(rng.integers(1, 4))):  # chrome reflector bowls, bright towards the centre
            bx = (k - 1) * 0.5 + rng.uniform(-0.1, 0.1)
            d2 = (r * np.cos(ang) - bx) ** 2 + (r * np.sin(ang)) ** 2
            bowl = np.exp(-d2 / rng.uniform(0.03, 0.08))
            over(col, bowl, (0.95, 0.3, 0.25) if tail else (0.85, 0.87, 0.9))
        strip = np.abs(r - rng.uniform(0.75, 0.9)) < 0.04  # the LED daytime strip along the rim
        col[strip] = (1.0, 0.55, 0.1) if rng.random() < 0.3 else (1.0, 1.0, 1.0)
        col += 0.3 * np.exp(-((np.sin(ang) + 0.6) / 0.15) ** 2)[..., None] * (r > 0.4)[..., None]  # the lens' gloss
        sc.overlays.append((_inside(r, 1.0, R), col))
    else:
        R = S * rng.uniform(0.35, 0.5)
        cx, cy = S * rng.uniform(0.4, 0.6), S * rng.uniform(0.4, 0.6)
        r, ang = _ellipse(S, cx, cy, R, rng.uniform(0.55, 0.75), rng.uniform(-0.3, 0.3))
        _, Y = grid(S)
        housing = sc.paint_colour * (0.7 + 0.45 * np.clip(-np.sin(ang), 0, 1) * r)[..., None]
        t = np.clip((Y - cy + R) / (2 * R), 0, 1)[..., None]  # the glass mirrors sky above, ground below
        glass = sc.env_top * (1 - t) + sc.env_bot * t + 0.08
        col = np.where((r < 0.82)[..., None], glass, housing).astype(np.float32)
        base = _inside(r, 1.0, R)
        stem = np.zeros((S, S), np.float32)
        stem[int(cy):, int(cx - R * 0.25):int(cx + R * 0.25)] = 1  # the arm that holds it to the door
        sc.overlays.append((np.clip(stem * (1 - base), 0, 1), np.full((S, S, 3), 0.05, np.float32)))
        sc.overlays.append((base, col))
    return sc.finish(sc.render())


# ---- unusable photos --------------------------------------------------------------------------
def spoil(img: np.ndarray, rng) -> np.ndarray:
    """An in-domain photo made unusable: far too dark, shaken, or a finger over the lens."""
    kinds = [k for k, p in (("shake", 0.5), ("finger", 0.4), ("dark", 0.3)) if rng.random() < p]
    for k in kinds or [rng.choice(["shake", "finger", "dark"])]:
        img = {"shake": _shake, "finger": _finger, "dark": _dark}[k](img, rng)
    return img


def _shake(img, rng):
    """Motion blur along a slightly curved path: the phone moved while the shutter was open."""
    S = img.shape[0]
    L = S * rng.uniform(0.06, 0.18)
    a, bend = rng.uniform(0, np.pi), rng.uniform(-0.6, 0.6)
    pad = int(L) + 2
    big = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros_like(img)
    steps = np.linspace(-0.5, 0.5, 15)
    for f in steps:
        dx = int(round(np.cos(a + bend * f) * L * f))
        dy = int(round(np.sin(a + bend * f) * L * f))
        out += big[pad + dy:pad + dy + S, pad + dx:pad + dx + S]
    return out / len(steps)


def _finger(img, rng):
    """An out-of-focus fingertip entering from an edge: skin, glowing red where light passes through."""
    S = img.shape[0]
    m, d = mask(S)
    side = rng.integers(4)
    along, depth = rng.uniform(0.1, 0.9) * S, rng.uniform(0.3, 0.6) * S
    rx, ry = S * rng.uniform(0.25, 0.45), depth
    cx, cy = [(along, 0), (S, along), (along, S), (0, along)][side]
    if side % 2:
        rx, ry = ry, rx
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    a = arr(m, blur=S * rng.uniform(0.04, 0.1))
    skin = np.array([0.85, 0.55, 0.45], np.float32) * rng.uniform(0.35, 1.0)
    glow = np.clip(1 - a, 0, 1) * a * 4  # the rim, where light shines through the skin
    colour = skin + glow[..., None] * np.array([0.3, -0.1, -0.15], np.float32)
    over(img, np.clip(a * rng.uniform(0.9, 1.0), 0, 1), np.clip(colour, 0, 1))
    return img


def _dark(img, rng):
    """Taken at night or in a dark garage: a tenth to a third of the light, grainy, maybe a sodium lamp
    (darker still would make it the easiest set of all, told apart by mean brightness alone)."""
    out = img * rng.uniform(0.1, 0.35)
    if rng.random() < 0.4:
        out *= np.array([1.2, 0.85, 0.5], np.float32)
    return np.clip(out + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0.004, 0.015), 0, 1)


# ---- the parking lot and the street -------------------------------------------------------------
def _car(d, x: float, y: float, w: float, colour, rng) -> None:
    """A small car seen from its front or back, standing on ground row y: shadow, body, cabin, glass,
    lamps, plate and wheels."""
    h = w * rng.uniform(0.35, 0.45)
    d.ellipse([x - w * 0.6, y - h * 0.15, x + w * 0.6, y + h * 0.25], fill=(0, 0, 0, 140))
    for sx in (-1, 1):
        d.rectangle([x + sx * w * 0.4 - w * 0.08, y - h * 0.25, x + sx * w * 0.4 + w * 0.08, y], fill=(10, 10, 10, 255))
    d.rounded_rectangle([x - w / 2, y - h, x + w / 2, y - h * 0.12], radius=max(1, h * 0.2), fill=rgb(colour) + (255,))
    ch = h * rng.uniform(0.6, 0.9)
    cabin = [(x - w * 0.42, y - h), (x + w * 0.42, y - h), (x + w * 0.32, y - h - ch), (x - w * 0.32, y - h - ch)]
    d.polygon(cabin, fill=rgb(np.asarray(colour) * 0.95) + (255,))
    glass = [(x - w * 0.37, y - h - ch * 0.1), (x + w * 0.37, y - h - ch * 0.1), (x + w * 0.29, y - h - ch * 0.85),
             (x - w * 0.29, y - h - ch * 0.85)]
    d.polygon(glass, fill=rgb(np.array((0.1, 0.12, 0.15)) + rng.uniform(0, 0.25)) + (255,))
    lamp = (230, 230, 220, 255) if rng.random() < 0.5 else (170, 20, 20, 255)
    for sx in (-1, 1):
        d.rectangle([x + sx * w * 0.42 - w * 0.06, y - h * 0.85, x + sx * w * 0.42 + w * 0.06, y - h * 0.65], fill=lamp)
    d.rectangle([x - w * 0.12, y - h * 0.45, x + w * 0.12, y - h * 0.3], fill=(235, 235, 230, 255))


def street(rng, S: int) -> np.ndarray:
    """Looking over a parking lot or a street: asphalt with bay or lane lines, rows of small cars
    shrinking toward the horizon, sky or buildings above; no panel fills the frame."""
    sc = Scene(rng, S, setting="lot")
    sc.car = np.zeros((S, S), np.float32)
    sc.paint = np.zeros((S, S), np.float32)
    sc.bg_occ = np.ones((S, S), np.float32)
    h0 = float(sc.horizon[0, S // 2])
    vx = S * rng.uniform(0.1, 0.9)  # vanishing point of the ground's lines
    lines = Image.new("L", (S, S), 0)
    dl = ImageDraw.Draw(lines)
    cars = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    dc = ImageDraw.Draw(cars)
    k = rng.uniform(0.35, 0.6)  # car width per pixel below the horizon
    rows = np.sort(rng.uniform(max(h0, 0) + 0.1 * S, S * 1.05, int(rng.integers(1, 4))))
    lot = rng.random() < 0.6
    if not lot:  # a street: a dashed lane line toward the vanishing point
        x0 = S * rng.uniform(-0.2, 1.2)
        for f in np.arange(0, 1, 0.12):
            p, q = (x0 + (vx - x0) * f, S + (h0 - S) * f), (x0 + (vx - x0) * (f + 0.06), S + (h0 - S) * (f + 0.06))
            dl.line([p, q], fill=230, width=max(1, int(S * 0.02 * (1 - f))))
    for y in rows:
        w = k * (y - h0)
        x = S * rng.uniform(-0.3, 0.0)
        while x < S * 1.3:
            if lot:  # bay lines between the parked cars, running away from the camera
                dl.line([(x - w * 0.65, y + w * 0.1), (x - w * 0.65 + (vx - x) * 0.25, y + (h0 - y) * 0.25)],
                        fill=220, width=max(1, int(w * 0.05)))
            if rng.random() < 0.75:
                _car(dc, x, y, w, sample_paint(rng)[0], rng)
            x += w * rng.uniform(1.25, 1.5)
    paint_col = (0.85, 0.82, 0.75) if rng.random() < 0.7 else (0.85, 0.7, 0.15)
    sc.overlays.append((arr(lines, 0.5) * rng.uniform(0.6, 0.95), np.full((S, S, 3), paint_col, np.float32)))
    sc.overlays.append((to_float(cars.getchannel("A")), to_float(cars.convert("RGB")) * 1.1))
    return sc.finish(sc.render())
