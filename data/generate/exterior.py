"""Exterior scenes: a close-up of a car body panel under some light, over some background.

The panel lives in its own surface coordinates (u along the car, t from the top edge of the body
to the bottom) mapped to the image by a random homography, so seams, the highlight band and dents
follow the viewpoint. Marks (marks.py) and weather edit the layers before `render` composes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import arr, fractal_noise, grain, grid, homography, mask, over, smooth_noise, tone

# The paper's fleet is mostly white; other paints keep colour from being a class cue.
PAINTS = [  # weight, albedo, gloss
    (0.58, (0.92, 0.92, 0.90), 0.55),
    (0.10, (0.70, 0.72, 0.74), 0.85),
    (0.06, (0.36, 0.37, 0.39), 0.9),
    (0.07, (0.05, 0.05, 0.06), 1.0),
    (0.05, (0.07, 0.11, 0.27), 1.0),
    (0.05, (0.58, 0.06, 0.07), 0.9),
    (0.05, (0.16, 0.32, 0.62), 0.9),
    (0.04, (0.74, 0.66, 0.50), 0.7),
]


def sample_paint(rng) -> tuple[np.ndarray, float]:
    """(colour, gloss) of a car's paint, drawn by the fleet's weights."""
    weights = np.array([p[0] for p in PAINTS])
    k = int(np.searchsorted(np.cumsum(weights) / weights.sum(), rng.random()))
    _, colour, gloss = PAINTS[k]
    return np.clip(np.array(colour, np.float32) * rng.uniform(0.92, 1.06) + rng.uniform(-0.03, 0.03, 3), 0, 1), gloss


@dataclass
class Light:
    sun_el: float  # 0 = sun on the horizon, 1 = overhead
    sun_az: float  # image-plane angle the light comes from
    tint: np.ndarray  # colour temperature as an RGB gain
    exposure: float
    overcast: float  # 0 clear sky .. 1 fully diffuse
    shadows: float  # 0 none .. 1 long cast shadows across the frame
    harsh: float  # highlight gain (summer noon clips)


def jitter_grey(rng, g: float) -> np.ndarray:
    return np.full(3, np.clip(g + rng.uniform(-0.03, 0.03), 0, 1), np.float32)


def rgb_tuple(rng, choices) -> np.ndarray:
    c = np.asarray(choices[rng.integers(len(choices))], np.float32)
    return np.clip(c * rng.uniform(0.85, 1.1) + rng.uniform(-0.04, 0.04, 3), 0, 1)


def sample_light(rng, season: str | None = None) -> Light:
    """Base classes span every season and hour so neither brightness nor tint marks a class;
    'h1' / 'h2' narrow it to the winter-spring / summer-autumn halves of the external sets."""
    if season == "h1":  # low winter sun, cold light, long shadows
        el, warm, sh, oc, harsh = rng.uniform(0.05, 0.35), rng.uniform(-1, -0.4), rng.uniform(0.55, 1), rng.uniform(0, 0.3), rng.uniform(0.6, 1.0)
    elif season == "h2":  # high summer sun, warm light, hard highlights
        el, warm, sh, oc, harsh = rng.uniform(0.65, 1), rng.uniform(0.4, 1), rng.uniform(0, 0.25), rng.uniform(0, 0.12), rng.uniform(1.2, 1.8)
    else:
        el, warm = rng.uniform(0.08, 1), rng.uniform(-0.8, 0.8)
        sh = rng.uniform(0.3, 1) if rng.random() < 0.3 else 0.0
        oc = rng.uniform(0, 0.25) if rng.random() < 0.7 else rng.uniform(0.25, 0.9)
        harsh = rng.uniform(0.6, 1.5)
    tint = np.array([1 + 0.11 * warm, 1 + 0.01 * warm, 1 - 0.14 * warm], np.float32)
    exposure = float(np.exp(rng.uniform(np.log(0.5), np.log(1.3))))
    return Light(float(el), float(rng.uniform(-0.9, 0.9)), tint, exposure, float(oc), float(sh), float(harsh))


class Scene:
    def __init__(self, rng, S: int, light: Light | None = None, setting: str = "street",
                 snow_ground: bool = False):
        self.rng, self.S = rng, S
        self.light = light or sample_light(rng)
        self.setting = setting  # "street", "tunnel" (inside the car wash) or "lot" (looking over the ground)
        self.wet = 0.0  # wet ground after rain/snow: darker, mirror-like
        self.snow_ground = snow_ground
        self.dents: list[tuple] = []
        self.overlays: list[tuple[np.ndarray, np.ndarray]] = []  # (alpha, lit RGB) above the paint
        self._geometry(rng)
        self._panel(rng)
        self._background(rng)
        self._shadow(rng)
        # where the sun's highlight band and the mirrored horizon sit on the paint
        self.gu = rng.uniform(-0.4, 0.4)
        self.hl_off, self.hl_curve = rng.uniform(-0.1, 0.1), rng.uniform(-0.6, 0.6)
        self.hl_width, self.hl_amp = rng.uniform(0.03, 0.14), rng.uniform(0.2, 0.8)
        self.refl_t, self.refl_soft = rng.uniform(0.4, 0.85), rng.uniform(0.02, 0.08)
        self.refl = rng.uniform(0.15, 0.45)

    # ---- geometry -------------------------------------------------------------------------
    def _geometry(self, rng) -> None:
        S = self.S
        X, Y = grid(S)
        for _ in range(30):
            w, h = S * rng.uniform(0.7, 1.8), S * rng.uniform(0.55, 1.25)
            cx, cy = S * rng.uniform(0.3, 0.7), S * rng.uniform(0.35, 0.8)
            a = rng.normal(0, 0.2)
            ca, sa = np.cos(a), np.sin(a)
            pts = []
            for du, dv in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)):
                x, y = du * w, dv * h
                pts.append((cx + ca * x - sa * y + rng.uniform(-0.12, 0.12) * S,
                            cy + sa * x + ca * y + rng.uniform(-0.12, 0.12) * S))
            H = homography([(0, 0), (1, 0), (1, 1), (0, 1)], pts)
            Hi = np.linalg.inv(H)
            den = Hi[2, 0] * X + Hi[2, 1] * Y + Hi[2, 2]
            if den.min() * den.max() <= 0:  # vanishing line inside the frame: not a photo
                continue
            u = (Hi[0, 0] * X + Hi[0, 1] * Y + Hi[0, 2]) / den
            v = (Hi[1, 0] * X + Hi[1, 1] * Y + Hi[1, 2]) / den
            # silhouette: curved top and bottom edges, an optional rounded end of the car
            bulge = rng.uniform(-0.25, 0.2)
            tilt = rng.uniform(-0.1, 0.1)
            top = bulge * (1 - (2 * u - 1) ** 2) + tilt * (u - 0.5)
            bot = 1 + rng.uniform(-0.12, 0.12) * (2 * u - 1) ** 2
            t = (v - top) / (bot - top)
            p = rng.uniform(3, 8)
            if rng.random() < 0.35:
                # one end of the car in view (front or rear); the other end lies far outside
                self.end_dir = int(rng.choice([-1, 1]))
                self.end_u = 0.5 + self.end_dir * rng.uniform(0.5, 0.85)
                hu = 3.0
                ue = self.end_u - self.end_dir * hu
            else:
                self.end_dir, hu, ue = 0, 40.0, 0.5
            body = np.abs(2 * t - 1) ** p + np.abs((u - ue) / hu) ** p <= 1
            frac = body.mean()
            if 0.35 < frac < 0.98:
                break
        self.H, self.u, self.v, self.t = H, u, v, t
        self.body = body.astype(np.float32)
        self.aspect = h / w  # circles in (u, t) need this to look round
        self.px_per_t = h

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        """Image position of panel point (u, v); v is t up to the silhouette's gentle curvature."""
        x, y, z = self.H @ np.array([u, v, 1.0])
        return x / z, y / z

    # ---- paint, trim, seams ---------------------------------------------------------------
    def _panel(self, rng) -> None:
        S, u, t = self.S, self.u, self.t
        self.paint_colour, gloss = sample_paint(rng)
        self.albedo = np.empty((S, S, 3), np.float32)
        self.albedo[:] = self.paint_colour
        self.albedo *= (1 + 0.04 * (smooth_noise(rng, S, 5) - 0.5))[..., None]
        self.gloss = np.full((S, S), gloss * rng.uniform(0.7, 1.1), np.float32)
        paint = self.body.copy()
        car = self.body.copy()
        self.shade = np.zeros((S, S), np.float32)  # extra diffuse shading from relief (crease, dents)
        asp = self.aspect
        # panel gaps: the dark seams between door, fender and bumper
        for us in (0.0, 1.0, rng.uniform(0.35, 0.65)):
            if rng.random() < 0.45:
                d = (u - us - 0.05 * (t - 0.5) * rng.uniform(-1, 1)) / rng.uniform(0.004, 0.01)
                g = np.exp(-d * d) * self.body
                over(self.albedo, g * 0.85, (0.03, 0.03, 0.03))
                self.shade += 0.25 * np.exp(-(d - 2.5) ** 2 / 2) * self.body  # lit lip of the gap
        if rng.random() < 0.25:  # bumper line / lower trim seam
            tc = rng.uniform(0.55, 0.85)
            d = (t - tc) / rng.uniform(0.006, 0.012)
            over(self.albedo, np.exp(-d * d) * self.body * 0.8, (0.03, 0.03, 0.03))
        if rng.random() < 0.5:  # body crease: light above, dark below
            tc = rng.uniform(0.2, 0.6)
            d = (t - tc) / rng.uniform(0.01, 0.03)
            self.shade += rng.uniform(0.1, 0.3) * np.tanh(-d) * np.exp(-d * d / 4) * self.body
        if rng.random() < 0.3:  # black plastic sill / bumper skirt
            lo = rng.uniform(0.82, 0.93)
            m = self.body * (t > lo)
            over(self.albedo, m, jitter_grey(rng, 0.05))
            self.gloss = np.where(m > 0, 0.15, self.gloss)
            paint *= 1 - m
        if rng.random() < 0.35:  # door handle: recess + grip
            uh, th = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.4)
            du, dt = (u - uh) / 0.09, (t - th) / (0.035 / max(asp, 0.3))
            recess = np.exp(-(du * du + dt * dt) ** 2 / 1.2) * self.body
            self.shade -= 0.35 * recess * (dt > 0)
            grip = (np.abs(du) ** 4 + np.abs(dt * 1.8) ** 4 < 1) * self.body
            col = self.paint_colour if rng.random() < 0.6 else jitter_grey(rng, rng.choice([0.06, 0.75]))
            over(self.albedo, grip, col)
            self.shade += 0.25 * grip * np.clip(-dt, 0, 1)
            paint *= 1 - grip
        if rng.random() < 0.3:  # wheel arch with tyre and rim
            ua = rng.uniform(0.1, 0.9)
            ra = rng.uniform(0.25, 0.42)
            r = np.sqrt(((u - ua) / asp) ** 2 + (t - 1.05) ** 2)
            arch = (r < ra).astype(np.float32)
            lip = np.exp(-((r - ra) / 0.012) ** 2)
            tyre = (r < ra * 0.93)
            rim = r < ra * rng.uniform(0.5, 0.62)
            ang = np.arctan2(t - 1.05, (u - ua) / asp)
            spokes = (np.cos(ang * rng.integers(5, 11)) > 0.3) & rim
            col = np.where(tyre[..., None], np.float32(0.05), np.float32(0.02)) + np.zeros(3, np.float32)
            col = np.where(rim[..., None], np.float32(rng.uniform(0.3, 0.7)), col)
            col = np.where(spokes[..., None], col * 0.4, col)
            self.albedo = np.where(arch[..., None] > 0, col, self.albedo)
            self.gloss = np.where(arch > 0, np.where(rim, 0.5, 0.05), self.gloss)
            over(self.albedo, lip * (1 - arch) * self.body * 0.7, (0.04, 0.04, 0.04))
            paint *= 1 - arch
            car = np.maximum(car, arch * (t > 0.5))
        if self.end_dir and rng.random() < 0.45:  # lamp near the end of the car
            ue = self.end_u - self.end_dir * rng.uniform(0.1, 0.25)
            lamp = (np.abs((u - ue) / 0.14) ** 3 + np.abs((t - rng.uniform(0.15, 0.3)) / 0.12) ** 3 < 1) * self.body
            col = [(0.75, 0.05, 0.05), (0.9, 0.55, 0.1), (0.55, 0.58, 0.6)][rng.integers(3)]
            over(self.albedo, lamp, col)
            self.gloss = np.where(lamp > 0, 1.2, self.gloss)
            paint *= 1 - lamp
        if rng.random() < 0.45:  # window above the belt line
            tw = rng.uniform(0.5, 1.2)
            win = ((self.t < -0.03) & (self.t > -tw)).astype(np.float32)
            belt = ((self.t < 0) & (self.t >= -0.03)).astype(np.float32)
            win *= np.abs((u - 0.5) / rng.uniform(0.45, 1.2)) ** 6 < 1
            over(self.albedo, win, (0.04, 0.05, 0.06))
            over(self.albedo, belt, jitter_grey(rng, rng.choice([0.04, 0.7])))
            self.gloss = np.where(win > 0, 1.3, np.where(belt > 0, 0.6, self.gloss))
            car = np.maximum(car, np.maximum(win, belt))
        self.paint = paint * self.body
        self.car = car

    # ---- light ------------------------------------------------------------------------------
    def _shadow(self, rng) -> None:
        """Cast shadows of poles, trees and buildings: long bands when the sun is low."""
        S, L = self.S, self.light
        self.shadow = np.zeros((S, S), np.float32)
        if L.shadows <= 0:
            return
        m, d = mask(S)
        ang = L.sun_az + np.pi / 2 + rng.normal(0, 0.3)
        for _ in range(rng.integers(1, 3)):
            length = S * (0.3 + 1.5 * L.shadows * (1 - L.sun_el))
            width = S * rng.uniform(0.08, 0.45)
            x0, y0 = rng.uniform(-0.2, 1.2) * S, rng.uniform(-0.2, 1.2) * S
            dx, dy = np.cos(ang) * length, np.sin(ang) * length
            d.line([(x0, y0), (x0 + dx, y0 + dy)], fill=255, width=int(width))
        soft = arr(m, blur=S * rng.uniform(0.01, 0.04))
        if rng.random() < 0.4:  # foliage: dappled
            soft *= np.clip(fractal_noise(rng, S, (6, 13), (0.6, 0.4)) * 2.2 - 0.4, 0, 1)
        self.shadow = soft * min(1.0, 0.4 + L.shadows)

    def _background(self, rng) -> None:
        """Albedo and light sources behind the car: ground below a tilted horizon, sky or walls
        above it; or the dark tunnel of a car wash."""
        S, L = self.S, self.light
        X, Y = grid(S)
        _, hy = self.to_image(0.5, 0.2)
        horizon = hy + rng.normal(0, 0.15) * (X - S / 2) + rng.uniform(-0.15, 0.1) * S
        if self.setting == "lot":  # a view over the ground (near-OOD street): the horizon high or out of frame
            horizon = S * rng.uniform(-0.15, 0.35) + rng.normal(0, 0.06) * (X - S / 2)
        self.horizon = horizon
        ground = np.clip((Y - horizon) / (0.01 * S) + 0.5, 0, 1)
        depth = S / np.maximum(Y - horizon + 0.08 * S, 0.02 * S)  # ~1/distance on the ground plane
        gx = (X - S / 2) * depth / S
        self.ground = ground
        emit = np.zeros((S, S, 3), np.float32)
        alb = np.zeros((S, S, 3), np.float32)
        if self.setting == "tunnel":
            g = rng.uniform(0.05, 0.16)
            alb[:] = np.array([g, g * 1.05, g * 1.2], np.float32)
            alb *= (0.7 + 0.6 * fractal_noise(rng, S))[..., None]
            for _ in range(rng.integers(2, 7)):  # strip lights and coloured signal lamps
                m, d = mask(S)
                x0, y0 = rng.uniform(0, S), rng.uniform(0, S * 0.5)
                d.rectangle([x0, y0, x0 + rng.uniform(0.05, 0.4) * S, y0 + rng.uniform(0.01, 0.04) * S], fill=255)
                emit += arr(m, blur=S * 0.01)[..., None] * np.array(
                    [(1, 1, 0.95), (0.3, 1, 0.4), (1, 0.3, 0.2), (0.4, 0.6, 1)][rng.integers(4)], np.float32)
            self.env_top, self.env_bot = np.full(3, 0.15, np.float32), np.full(3, 0.05, np.float32)
            self.bg_alb, self.bg_emit, self.bg_occ = alb, emit, np.ones((S, S), np.float32)
            return
        # ground
        kind = rng.choice(["asphalt", "asphalt", "asphalt", "concrete", "paving"])
        if self.snow_ground:
            kind = "snow"
        if kind == "asphalt":
            g = rng.uniform(0.18, 0.45)
            gcol = np.array([g, g, g * rng.uniform(0.95, 1.08)], np.float32)
            tex = 1 + 0.3 * (fractal_noise(rng, S) - 0.5) + grain(rng, S, 0.12)
        elif kind == "concrete":
            g = rng.uniform(0.45, 0.68)
            gcol = np.array([g, g * 0.98, g * 0.94], np.float32)
            tex = 1 + 0.2 * (fractal_noise(rng, S) - 0.5) + grain(rng, S, 0.05)
        else:
            gcol = np.array(rgb_tuple(rng, [(0.55, 0.45, 0.4), (0.5, 0.5, 0.5), (0.6, 0.55, 0.45)]), np.float32)
            k1, k2 = rng.uniform(2, 6), rng.uniform(4, 12)
            lines = (np.abs(((gx * k1) % 1) - 0.5) > 0.45) | (np.abs(((depth * k2 / 10) % 1) - 0.5) > 0.45)
            tex = (1 - 0.45 * lines) * (1 + grain(rng, S, 0.06))
        gal = gcol * tex[..., None]
        if rng.random() < 0.45:  # parking-bay line
            c, wd = rng.uniform(-0.6, 0.6), rng.uniform(0.03, 0.09)
            line = np.clip((wd - np.abs(gx - c - 0.2 * (depth - 2) * rng.normal(0, 0.3))) * S / 4, 0, 1)
            over(gal, line, (0.85, 0.82, 0.75) if rng.random() < 0.6 else (0.85, 0.7, 0.15))
        # what is above the horizon
        top = rng.choice(["sky", "sky", "wall", "building", "garage"])
        if top == "garage" and L.overcast < 0.3:
            top = "wall"
        sky = (1 - ground)[..., None]
        yy = np.clip(Y / S, 0, 1)[..., None]
        if top == "sky":
            zen = np.array([0.25, 0.45, 0.85], np.float32) * rng.uniform(0.8, 1.1)
            hor = np.array([0.78, 0.84, 0.92], np.float32)
            col = zen + (hor - zen) * np.clip(yy * 1.5, 0, 1)
            grey = np.array([0.72, 0.73, 0.75], np.float32)
            col = col + (grey - col) * L.overcast
            clouds = np.clip(fractal_noise(rng, S) * 2.5 - rng.uniform(1.0, 1.6), 0, 1)[..., None]
            col = col + (0.95 - col) * clouds
            emit += col * sky * rng.uniform(0.9, 1.2)
            self.env_top = col.reshape(-1, 3).mean(0)
            if rng.random() < 0.5:  # trees / buildings on the skyline
                edge = horizon - S * (0.05 + 0.15 * fractal_noise(rng, S, (9, 23), (0.7, 0.3)))
                band = np.clip((Y - edge) / 2, 0, 1) * (1 - ground)
                tc = np.array(rgb_tuple(rng, [(0.15, 0.25, 0.12), (0.35, 0.35, 0.38), (0.4, 0.3, 0.25)]), np.float32)
                emit *= 1 - band[..., None]
                alb += band[..., None] * tc
        else:
            if top == "garage":
                wc = np.full(3, rng.uniform(0.25, 0.45), np.float32)
            elif rng.random() < 0.3:  # brick
                wc = np.array([0.55, 0.3, 0.22], np.float32) * rng.uniform(0.7, 1.2)
            else:
                wc = rgb_tuple(rng, [(0.8, 0.8, 0.78), (0.7, 0.68, 0.6), (0.55, 0.6, 0.62), (0.85, 0.8, 0.65)])
            wal = np.empty((S, S, 3), np.float32)
            wal[:] = wc
            wal *= (1 + 0.2 * (fractal_noise(rng, S) - 0.5) + grain(rng, S, 0.04))[..., None]
            if top == "building":
                k = rng.uniform(3, 7)
                win = (((X / S * k) % 1) > 0.35) & (((Y / S * k * 0.8) % 1) > 0.4)
                over(wal, win.astype(np.float32) * 0.9, (0.12, 0.15, 0.2))
            if top == "garage":
                for _ in range(rng.integers(1, 4)):
                    m, d = mask(S)
                    y0 = rng.uniform(0, 0.4) * S
                    d.rectangle([rng.uniform(-0.2, 0.6) * S, y0, rng.uniform(0.6, 1.2) * S, y0 + S * 0.025], fill=255)
                    emit += (arr(m, blur=S * 0.008) * 1.2)[..., None] * sky
            alb += wal * sky
            self.env_top = np.asarray(wc, np.float32) * 0.9
        alb += gal * ground[..., None]
        self.env_bot = gcol * 0.5
        # contact shadow under the car
        occ = np.where(self.t > 1, np.exp(-np.maximum(self.t - 1, 0) / 0.12), 0.0)
        self.bg_occ = (1 - 0.75 * occ).astype(np.float32)
        self.bg_alb, self.bg_emit = alb, emit

    def background(self, D_amb: float, direct: float, lit: np.ndarray) -> np.ndarray:
        light = (D_amb + direct * 0.9 * lit) * self.bg_occ
        alb = self.bg_alb
        if self.wet:  # wet ground: darker, mirrors the sky in vertical smears
            g = self.ground[..., None] * self.wet
            alb = alb * (1 - 0.55 * g)
        img = alb * light[..., None] + self.bg_emit
        if self.wet:
            streak = np.repeat(smooth_noise(self.rng, self.S, 12)[:1], self.S, 0)  # vertical smears
            img += g * self.env_top * 0.35 * streak[..., None] * self.bg_occ[..., None]
        return img

    def add_dent(self, x: float, y: float, rx: float, ry: float, depth: float) -> None:
        self.dents.append((x, y, rx, ry, depth))

    def render(self) -> np.ndarray:
        S, L = self.S, self.light
        X, Y = grid(S)
        u, t = self.u, self.t
        direct = 0.85 * (1 - 0.75 * L.overcast)
        amb = 0.3 + 0.35 * L.overcast
        lit = 1 - 0.85 * self.shadow
        t_eff = t.copy()
        shade = self.shade.copy()
        lx, ly = np.cos(L.sun_az - np.pi / 2), np.sin(L.sun_az - np.pi / 2)  # light from above-ish
        for x0, y0, rx, ry, depth in self.dents:
            dx, dy = (X - x0) / rx, (Y - y0) / ry
            g = np.exp(-(dx * dx + dy * dy))
            t_eff += depth * 0.2 * g * np.sign(dy + 1e-3) * np.abs(dy) ** 0.5  # bends the highlight
            shade += depth * 2.2 * g * (dx * lx + dy * ly)  # dark/bright pair facing the sun
        gt = -(0.15 + 0.45 * L.sun_el)
        diffuse = np.clip(0.8 + gt * (t - 0.5) + self.gu * (u - 0.5) - 0.25 * (t - 0.5) ** 2 + shade, 0.05, 1.3)
        D = amb + direct * diffuse * lit
        th = 0.62 - 0.5 * L.sun_el + self.hl_off
        band = (t_eff - th - self.hl_curve * (u - 0.5) ** 2) / self.hl_width
        spec = (1 - 0.8 * L.overcast) * self.hl_amp * L.harsh * np.exp(-band * band) * lit
        horizon = (t_eff - self.refl_t) / self.refl_soft
        env_mix = 0.5 + 0.5 * np.tanh(horizon)
        env = (self.env_top * (1 - env_mix[..., None]) + self.env_bot * env_mix[..., None]) * self.refl
        car_rgb = self.albedo * D[..., None] + self.gloss[..., None] * (spec[..., None] + env)
        bg = self.background(D_amb=amb, direct=direct, lit=lit)
        img = bg
        over(img, self.car, car_rgb)
        for alpha, colour in self.overlays:
            over(img, alpha, colour * (amb + direct * lit)[..., None])
        img *= (L.tint * L.exposure)
        return img

    def finish(self, img: np.ndarray) -> np.ndarray:
        return tone(img)
