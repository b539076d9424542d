"""Synthetic street scenes written in the official Cityscapes layout.

Why: the real dataset needs a login and 11 GB, but every stage (reader, training, export checks,
evaluation, video) must be exercised end to end on any machine.  These scenes are built like a
dash-cam frame — a perspective road to a vanishing point, sidewalks, facades, sky, trees,
street furniture and road users at imbalanced frequencies — so the label statistics look like
Cityscapes' and a CNN has to learn shape *and* colour: every class has its own colour
distribution and texture, jittered per object and lit differently per frame.

Geometry: a pinhole camera at height ``CAM_HEIGHT`` looking down a straight street.  A ground
point at lateral ``X`` and depth ``Z`` (metres) lands at ``x = cx + f X / Z``,
``y = horizon + f h / Z``.  The camera drives forward at ``params.speed`` m/s, so frame ``t``
(seconds) sees every object at depth ``Z - speed t`` (wrapped round, so a scene never empties):
:func:`render_frame` with increasing ``t`` is a moving video.

Void regions use official ids: ego vehicle (1) at the bottom, out of roi (3) at the border,
static (4) and dynamic (5) clutter.  Output: ``(RGB uint8 HxWx3, label ids uint8 HxW)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from ..fileio import write_png
from ..labels import NAME_TO_LABEL

CAM_HEIGHT = 1.5       # metres above the road
NEAR, FAR = 3.0, 120.0  # depth range objects live in (wrapped while the camera drives)
DEFAULT_CITIES = ("synthtown", "synthville", "synthburg")


def _id(name: str) -> int:
    return NAME_TO_LABEL[name].id


# Appearance per class: mean RGB, per-object jitter (std of the mean), fine-noise amplitude,
# coarse-noise amplitude.  Distinct means so colour is informative; jitter and noise so it is
# not a lookup table.
# fmt: off
APPEARANCE: dict[str, tuple[tuple[int, int, int], float, float, float]] = {
    "road":          ((96, 92, 100),   8, 6, 10),
    "sidewalk":      ((168, 150, 160), 10, 9, 8),
    "building":      ((125, 110, 95),  14, 8, 12),
    "wall":          ((160, 150, 120), 12, 7, 6),
    "fence":         ((120, 95, 70),   10, 14, 4),
    "pole":          ((75, 78, 85),    8, 4, 2),
    "traffic light": ((40, 38, 25),    5, 4, 2),
    "traffic sign":  ((215, 200, 40),  20, 5, 2),
    "vegetation":    ((60, 110, 40),   14, 16, 14),
    "terrain":       ((150, 155, 95),  12, 10, 10),
    "sky":           ((135, 175, 225), 12, 2, 6),
    "person":        ((180, 60, 70),   30, 8, 4),
    "rider":         ((210, 90, 40),   25, 8, 4),
    "car":           ((40, 50, 120),   16, 5, 4),
    "truck":         ((200, 200, 190), 15, 6, 6),
    "bus":           ((220, 170, 30),  15, 5, 4),
    "train":         ((90, 140, 130),  10, 5, 4),
    "motorcycle":    ((30, 30, 35),    8, 6, 3),
    "bicycle":       ((140, 30, 50),   15, 5, 2),
    "ego vehicle":   ((25, 25, 28),    4, 3, 3),
    "out of roi":    ((10, 10, 10),    2, 2, 0),
    "static":        ((110, 110, 90),  25, 10, 4),
    "dynamic":       ((150, 120, 60),  25, 10, 4),
    "lane":          ((225, 225, 220), 6, 6, 2),   # painted marks: appearance only, label road
    "window":        ((45, 55, 70),    10, 4, 2),  # glass: appearance only, label of its owner
    "wheel":         ((20, 20, 22),    3, 3, 1),
    "light_on":      ((240, 60, 40),   20, 6, 0),
}
# fmt: on

# Expected number per frame of each road user / furniture (Poisson means): Cityscapes-like
# imbalance, cars and people common, trains rare.
FREQUENCY = {
    "car": 7.0, "person": 3.0, "rider": 0.5, "truck": 0.3, "bus": 0.2, "train": 0.06,
    "motorcycle": 0.25, "bicycle": 0.4, "pole": 5.0, "traffic light": 1.2, "traffic sign": 2.0,
    "tree": 9.0, "static": 2.0, "dynamic": 0.5, "wall": 0.4, "fence": 0.6,
}


@dataclass
class Thing:
    """One object in world coordinates: ``kind``, lateral ``x``, depth ``z`` (at t=0), size."""

    kind: str
    x: float
    z: float
    width: float
    height: float
    colour: tuple[float, float, float]
    extra: dict = field(default_factory=dict)


@dataclass
class SceneParams:
    """Everything random about one scene; a frame at time ``t`` is a pure function of it."""

    seed: int
    size: tuple[int, int]
    horizon: float            # fraction of H
    cx: float                 # vanishing point x, fraction of W
    focal: float              # pixels per (metre / metre)
    road_half: float          # half road width, metres
    lanes: int
    sidewalk: float           # sidewalk width, metres
    setback: float            # terrain strip between sidewalk and facades, metres
    speed: float              # m/s the camera drives forward
    light: float              # global gain
    tint: tuple[float, float, float]
    facades: list[tuple[int, float, float, float, tuple[float, float, float]]]  # side, z0, z1, h, rgb
    things: list[Thing]
    colours: dict[str, tuple[float, float, float]]  # per-scene colour of the background classes
    ego_height: float         # fraction of H
    roi_border: float         # fraction of W (at least one pixel)


def _jitter(rng: np.random.Generator, name: str) -> tuple[float, float, float]:
    mean, jitter, _, _ = APPEARANCE[name]
    return tuple(float(v) for v in np.clip(np.asarray(mean) + rng.normal(0, jitter, 3), 0, 255))


def scene_params(rng: np.random.Generator | int, size: tuple[int, int]) -> SceneParams:
    """Draw one random street.  ``rng`` may be a seed (then the scene is reproducible from it)."""
    seed = int(rng) if isinstance(rng, (int, np.integer)) else int(rng.integers(2**31))
    rng = np.random.default_rng(seed)
    h, w = size
    lanes = int(rng.choice([2, 3, 4], p=[0.5, 0.3, 0.2]))
    road_half = lanes * 3.3 / 2
    sidewalk = float(rng.uniform(2.5, 4.5))
    setback = float(rng.uniform(2.0, 10.0)) if rng.random() < 0.7 else 0.0
    colours = {name: _jitter(rng, name) for name in
               ("road", "sidewalk", "terrain", "sky", "lane", "ego vehicle", "out of roi")}
    facades = _draw_facades(rng, road_half + sidewalk + setback)
    things = _draw_things(rng, road_half, sidewalk, setback, lanes)
    return SceneParams(
        seed=seed, size=(h, w), horizon=float(rng.uniform(0.36, 0.46)),
        cx=float(rng.uniform(0.42, 0.58)), focal=float(w * rng.uniform(0.75, 0.95)),
        road_half=road_half, lanes=lanes, sidewalk=sidewalk, setback=setback,
        speed=float(rng.uniform(5.0, 12.0)), light=float(rng.uniform(0.65, 1.25)),
        tint=tuple(float(v) for v in rng.uniform(0.9, 1.1, 3)), facades=facades, things=things,
        colours=colours, ego_height=float(rng.uniform(0.08, 0.14)),
        roi_border=float(rng.uniform(0.001, 0.004)),
    )


def _draw_facades(rng: np.random.Generator, x_face: float) -> list:
    """Blocks of buildings along both sides, each with its own height and colour."""
    facades = []
    for side in (-1, 1):
        z = NEAR * 0.5
        while z < FAR * 1.6:
            length = float(rng.uniform(8, 30))
            if rng.random() < 0.2:  # a gap between blocks (sky / trees behind)
                z += length * 0.5
                continue
            height = float(rng.uniform(6, 18))
            facades.append((side, z, z + length, height, _jitter(rng, "building")))
            z += length
    return facades


def _poisson(rng: np.random.Generator, kind: str) -> int:
    return int(rng.poisson(FREQUENCY[kind]))


def _draw_things(rng: np.random.Generator, road_half: float, sidewalk: float, setback: float,
                 lanes: int) -> list[Thing]:
    """Road users and street furniture at world positions, in Cityscapes-like proportions."""
    things: list[Thing] = []
    curb = road_half + sidewalk * 0.5
    lane_x = [-road_half + 3.3 * (i + 0.5) for i in range(lanes)]

    def z() -> float:
        return float(rng.uniform(NEAR + 2, FAR))

    def side() -> int:
        return int(rng.choice([-1, 1]))

    def add(kind: str, x: float, width: float, height: float, name: str | None = None, **extra):
        things.append(Thing(kind, x, z(), width, height, _jitter(rng, name or kind), extra))

    for _ in range(_poisson(rng, "car")):
        parked = rng.random() < 0.35
        x = side() * (road_half - 1.1) if parked else float(rng.choice(lane_x)) + rng.normal(0, .3)
        add("car", x, float(rng.uniform(1.7, 2.0)), float(rng.uniform(1.4, 1.7)))
    for kind, wr, hr in (("truck", (2.3, 2.6), (3.0, 3.8)), ("bus", (2.5, 2.6), (3.0, 3.4)),
                         ("train", (2.6, 2.7), (3.4, 3.7))):
        for _ in range(_poisson(rng, kind)):
            x = 0.0 if kind == "train" else float(rng.choice(lane_x))
            add(kind, x, float(rng.uniform(*wr)), float(rng.uniform(*hr)))
    for _ in range(_poisson(rng, "person")):
        add("person", side() * (curb + rng.uniform(-1, 1)), 0.55, float(rng.uniform(1.55, 1.9)))
    for _ in range(_poisson(rng, "rider")):
        vehicle = "motorcycle" if rng.random() < 0.3 else "bicycle"
        x = side() * (road_half - 0.8)
        add("rider", x, 0.6, 1.75, vehicle=vehicle, vehicle_colour=_jitter(rng, vehicle))
    for kind in ("motorcycle", "bicycle"):  # parked, riderless
        for _ in range(_poisson(rng, kind)):
            add(kind, side() * (curb + rng.uniform(0, 1)), 0.7, 1.1 if kind == "bicycle" else 1.2)
    for _ in range(_poisson(rng, "pole")):
        add("pole", side() * (road_half + 0.4), 0.18, float(rng.uniform(5, 8)))
    for _ in range(_poisson(rng, "traffic light")):
        add("traffic light", side() * (road_half + 0.4), 0.35, float(rng.uniform(3.5, 5.0)),
            lit=int(rng.integers(3)))
    for _ in range(_poisson(rng, "traffic sign")):
        add("traffic sign", side() * (road_half + 0.5), float(rng.uniform(0.5, 0.8)),
            float(rng.uniform(2.2, 3.0)), shape=int(rng.integers(3)))
    for _ in range(_poisson(rng, "tree")):
        x = side() * (road_half + sidewalk + (setback * 0.5 if setback > 1 else -0.6))
        add("vegetation", x, float(rng.uniform(3, 7)), float(rng.uniform(5, 11)))
    for kind in ("static", "dynamic"):
        for _ in range(_poisson(rng, kind)):
            add(kind, side() * (curb + rng.uniform(0, 1.5)), float(rng.uniform(0.4, 1.0)),
                float(rng.uniform(0.5, 1.2)))
    for kind in ("wall", "fence"):
        for _ in range(_poisson(rng, kind)):
            add(kind, side() * (road_half + sidewalk), float(rng.uniform(5, 20)),
                1.9 if kind == "wall" else 1.2)
    return things


class _Canvas:
    """An instance map (uint16) plus per-instance class id and colour, drawn with OpenCV."""

    def __init__(self, size: tuple[int, int], params: SceneParams):
        self.h, self.w = size
        self.p = params
        self.inst = np.zeros(size, np.uint16)
        self.classes: list[int] = [_id("unlabeled")]
        self.colours: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
        self.noise: list[tuple[float, float]] = [(0.0, 0.0)]

    def new(self, label: str, colour: tuple[float, float, float], look: str | None = None) -> int:
        """Register an instance of class ``label`` drawn with ``colour`` and ``look``'s texture."""
        self.classes.append(_id(label))
        self.colours.append(colour)
        self.noise.append(APPEARANCE[look or label][2:])
        return len(self.classes) - 1

    # --- projection -------------------------------------------------------------------------
    def px(self, x: float, z: float) -> float:
        return self.p.cx * self.w + self.p.focal * x / z

    def py(self, height: float, z: float) -> float:
        return self.p.horizon * self.h + self.p.focal * (CAM_HEIGHT - height) / z

    # --- primitives -------------------------------------------------------------------------
    def poly(self, idx: int, pts: Sequence[tuple[float, float]]) -> None:
        arr = np.round(np.asarray(pts, np.float64) * 16).astype(np.int32)
        cv2.fillPoly(self.inst, [arr], int(idx), lineType=cv2.LINE_8, shift=4)

    def rect(self, idx: int, x0: float, y0: float, x1: float, y1: float) -> None:
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)  # at least one pixel, so thin poles survive
        self.poly(idx, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])

    def ellipse(self, idx: int, cx: float, cy: float, rx: float, ry: float, thick: int = -1) -> None:
        cv2.ellipse(self.inst, (int(round(cx)), int(round(cy))),
                    (max(1, int(round(rx))), max(1, int(round(ry)))), 0, 0, 360, int(idx),
                    thick)

    def ground_quad(self, idx: int, x0: float, x1: float, z0: float, z1: float) -> None:
        """A rectangle on the road plane from depth z0 to z1 between lateral x0 and x1."""
        self.poly(idx, [(self.px(x0, z0), self.py(0, z0)), (self.px(x1, z0), self.py(0, z0)),
                        (self.px(x1, z1), self.py(0, z1)), (self.px(x0, z1), self.py(0, z1))])

    def box(self, idx: int, x: float, z: float, width: float, h0: float, h1: float) -> tuple:
        """An upright rectangle facing the camera; returns its pixel box (x0, y0, x1, y1)."""
        x0, x1 = self.px(x - width / 2, z), self.px(x + width / 2, z)
        y0, y1 = self.py(h1, z), self.py(h0, z)
        self.rect(idx, x0, y0, x1, y1)
        return x0, y0, x1, y1


def _wrap(z: float, travelled: float) -> float:
    """Depth of a world point after the camera drove ``travelled`` metres (cyclic street)."""
    span = FAR - NEAR
    return NEAR + (z - travelled - NEAR) % span


def _background(c: _Canvas, travelled: float) -> None:
    """Sky, ground (terrain, sidewalks, road, lane marks) and facades, far to near."""
    p = c.p
    far_z = FAR * 2
    c.inst[:] = c.new("sky", p.colours["sky"])
    horizon_y = p.horizon * c.h
    # distant skyline straddling the horizon
    rng = np.random.default_rng(p.seed + 7)
    x = 0.0
    while x < c.w:
        bw = c.w * rng.uniform(0.03, 0.09)
        top = horizon_y - c.h * rng.uniform(0.02, 0.12)
        c.rect(c.new("building", _jitter(rng, "building")), x, top, x + bw, horizon_y + 2)
        x += bw
    terrain = c.new("terrain", p.colours["terrain"])
    c.rect(terrain, 0, horizon_y, c.w, c.h)
    outer = p.road_half + p.sidewalk
    sidewalk = c.new("sidewalk", p.colours["sidewalk"])
    for s in (-1, 1):
        c.ground_quad(sidewalk, s * p.road_half, s * outer, 0.5, far_z)
    road = c.new("road", p.colours["road"])
    c.ground_quad(road, -p.road_half, p.road_half, 0.5, far_z)
    _lane_marks(c, travelled)
    span = max(f[2] for f in p.facades) if p.facades else 1.0
    shift = travelled % span  # the street repeats every `span` metres
    blocks = []
    for side, z0, z1, height, colour in p.facades:
        for z0s, z1s in ((z0 - shift, z1 - shift), (z0 - shift + span, z1 - shift + span)):
            if z1s > 0.8 and z0s < far_z:
                blocks.append((side, max(z0s, 0.8), z1s, height, colour))
    for side, z0, z1, height, colour in sorted(blocks, key=lambda f: -f[2]):
        _facade(c, side, z0, z1, height, colour, outer + p.setback)


def _lane_marks(c: _Canvas, travelled: float) -> None:
    """Dashed lane separators and solid edge lines (label road, painted appearance)."""
    p = c.p
    mark = c.new("road", p.colours["lane"], look="lane")
    period, dash = 9.0, 3.0
    phase = travelled % period
    for i in range(1, p.lanes):
        x = -p.road_half + 3.3 * i
        z = 1.0 - phase
        while z < FAR:
            z0, z1 = max(z, 0.8), z + dash
            if z1 > 0.8:
                c.ground_quad(mark, x - 0.07, x + 0.07, z0, z1)
            z += period
    for s in (-1, 1):
        x = s * (p.road_half - 0.25)
        c.ground_quad(mark, x - 0.06, x + 0.06, 0.8, FAR)


def _facade(c: _Canvas, side: int, z0: float, z1: float, height: float, colour, x: float) -> None:
    """A building front parallel to the street, with a grid of darker windows."""
    idx = c.new("building", colour)
    xs = x * side
    c.poly(idx, [(c.px(xs, z0), c.py(0, z0)), (c.px(xs, z0), c.py(height, z0)),
                 (c.px(xs, z1), c.py(height, z1)), (c.px(xs, z1), c.py(0, z1))])
    win = c.new("building", APPEARANCE["window"][0], look="window")
    rows = int(height // 3.2)
    z = z0 + 1.0
    while z + 1.2 < z1:
        for r in range(1, rows):
            hb, ht = r * 3.2 + 0.3, r * 3.2 + 1.8
            if ht > height - 0.5:
                break
            za, zb = z, z + 1.2
            c.poly(win, [(c.px(xs, za), c.py(hb, za)), (c.px(xs, za), c.py(ht, za)),
                         (c.px(xs, zb), c.py(ht, zb)), (c.px(xs, zb), c.py(hb, zb))])
        z += 3.0
        if z > 60:  # far windows are sub-pixel: skip them (speed)
            break


def _draw_vehicle(c: _Canvas, t: Thing, z: float, label: str) -> None:
    """Rear view of a car / truck / bus / train: body, window band, wheels."""
    body = c.new(label, t.colour)
    glass = c.new(label, APPEARANCE["window"][0], look="window")
    wheel = c.new(label, APPEARANCE["wheel"][0], look="wheel")
    ww = t.width * 0.18
    for s in (-1, 1):
        c.box(wheel, t.x + s * (t.width / 2 - ww / 2), z, ww, 0, 0.55)
    if label == "car":
        c.box(body, t.x, z, t.width, 0.25, t.height * 0.6)
        cab = t.width * 0.78
        x0, x1 = c.px(t.x - cab / 2, z), c.px(t.x + cab / 2, z)
        yb, yt = c.py(t.height * 0.6, z), c.py(t.height, z)
        inset = (x1 - x0) * 0.1
        c.poly(body, [(x0, yb), (x1, yb), (x1 - inset, yt), (x0 + inset, yt)])
        c.poly(glass, [(x0 + inset * 0.8, yb - 1), (x1 - inset * 0.8, yb - 1),
                       (x1 - inset * 1.1, yt + (yb - yt) * 0.2), (x0 + inset * 1.1, yt + (yb - yt) * 0.2)])
    else:
        c.box(body, t.x, z, t.width, 0.3, t.height)
        top = 0.55 if label == "truck" else 0.75
        c.box(glass, t.x, z, t.width * 0.85, t.height * top, t.height * 0.92)
        if label == "train":
            c.box(body, t.x, z, t.width * 0.1, t.height, t.height + 0.8)  # pantograph


def _draw_person(c: _Canvas, t: Thing, z: float, label: str, base: float = 0.0) -> None:
    """Legs, torso and head; ``base`` lifts a rider onto the saddle."""
    idx = c.new(label, t.colour)
    skin = c.new(label, (205.0, 160.0, 130.0))
    hgt = t.height
    c.box(idx, t.x, z, t.width * 0.7, base, base + hgt * 0.48)          # legs
    c.box(idx, t.x, z, t.width, base + hgt * 0.45, base + hgt * 0.84)   # torso
    r = c.p.focal * hgt * 0.07 / z
    c.ellipse(skin, c.px(t.x, z), c.py(base + hgt * 0.92, z), r, r * 1.2)


def _draw_twowheeler(c: _Canvas, x: float, z: float, colour, label: str, height: float) -> None:
    """Bicycle or motorcycle seen from behind: wheel(s) and a frame."""
    idx = c.new(label, colour)
    tyre = c.new(label, APPEARANCE["wheel"][0], look="wheel")
    c.box(tyre, x, z, 0.12 if label == "bicycle" else 0.2, 0, 0.7)
    c.box(idx, x, z, 0.08 if label == "bicycle" else 0.35, 0.3, height * 0.85)
    c.box(idx, x, z, 0.6, height * 0.8, height * 0.88)  # handlebar


def _draw_pole_thing(c: _Canvas, t: Thing, z: float) -> None:
    """Poles, and traffic lights / signs mounted on their own pole."""
    pole = c.new("pole", _jitter(np.random.default_rng(int(t.x * 1000) & 0xFFFF), "pole"))
    top = t.height if t.kind == "pole" else t.height - 0.3
    c.box(pole, t.x, z, 0.15, 0, top)
    if t.kind == "traffic light":
        idx = c.new("traffic light", t.colour)
        x0, y0, x1, y1 = c.box(idx, t.x, z, t.width, t.height - 0.9, t.height)
        lit = c.new("traffic light", APPEARANCE["light_on"][0], look="light_on")
        slot = t.extra["lit"]
        cy = y0 + (y1 - y0) * (slot + 0.5) / 3
        c.ellipse(lit, (x0 + x1) / 2, cy, (x1 - x0) * 0.3, (x1 - x0) * 0.3)
    elif t.kind == "traffic sign":
        idx = c.new("traffic sign", t.colour)
        cx, cy = c.px(t.x, z), c.py(t.height, z)
        r = c.p.focal * t.width / 2 / z
        shape = t.extra["shape"]
        if shape == 0:
            c.ellipse(idx, cx, cy, r, r)
        elif shape == 1:
            c.poly(idx, [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)])
        else:
            c.rect(idx, cx - r, cy - r, cx + r, cy + r)


def _draw_tree(c: _Canvas, t: Thing, z: float) -> None:
    """Trunk and canopy (both vegetation, as Cityscapes labels them), a few blobs per canopy."""
    idx = c.new("vegetation", t.colour)
    dark = c.new("vegetation", tuple(v * 0.7 for v in t.colour))
    c.box(dark, t.x, z, 0.3, 0, t.height * 0.5)
    f = c.p.focal / z
    cx, cy = c.px(t.x, z), c.py(t.height * 0.7, z)
    for k, (dx, dy, s) in enumerate(((0, 0, 1.0), (-0.35, 0.15, 0.7), (0.35, 0.1, 0.75))):
        c.ellipse(dark if k == 1 else idx, cx + dx * t.width * f, cy + dy * t.height * f,
                  t.width * 0.5 * s * f, t.height * 0.3 * s * f)


def _draw_thing(c: _Canvas, t: Thing, z: float) -> None:
    if t.kind in ("car", "truck", "bus", "train"):
        _draw_vehicle(c, t, z, t.kind)
    elif t.kind == "person":
        _draw_person(c, t, z, "person")
    elif t.kind == "rider":
        vehicle = t.extra["vehicle"]
        _draw_twowheeler(c, t.x, z, t.extra["vehicle_colour"], vehicle, 1.1)
        _draw_person(c, t, z, "rider", base=0.55)
    elif t.kind in ("motorcycle", "bicycle"):
        _draw_twowheeler(c, t.x, z, t.colour, t.kind, t.height)
    elif t.kind in ("pole", "traffic light", "traffic sign"):
        _draw_pole_thing(c, t, z)
    elif t.kind == "vegetation":
        _draw_tree(c, t, z)
    elif t.kind in ("static", "dynamic"):
        c.box(c.new(t.kind, t.colour), t.x, z, t.width, 0, t.height)
    elif t.kind in ("wall", "fence"):
        idx = c.new(t.kind, t.colour)
        xs = t.x
        z1 = z + t.width
        c.poly(idx, [(c.px(xs, z), c.py(0, z)), (c.px(xs, z), c.py(t.height, z)),
                     (c.px(xs, z1), c.py(t.height, z1)), (c.px(xs, z1), c.py(0, z1))])


def _void_overlays(c: _Canvas) -> None:
    """Ego-vehicle hood at the bottom (id 1) and an out-of-roi frame (id 3)."""
    p = c.p
    ego = c.new("ego vehicle", p.colours["ego vehicle"])
    top = c.h * (1 - p.ego_height)
    c.ellipse(ego, c.w / 2, c.h + c.h * p.ego_height * 0.6, c.w * 0.62, c.h * p.ego_height * 1.6)
    c.rect(ego, 0, top + c.h * p.ego_height * 0.5, c.w, c.h)
    roi = c.new("out of roi", p.colours["out of roi"])
    b = max(1, int(round(p.roi_border * c.w)))
    c.inst[:b] = roi
    c.inst[-b:] = roi
    c.inst[:, :b] = roi
    c.inst[:, -b:] = roi


def _shade(c: _Canvas, t: float) -> np.ndarray:
    """Instance map → RGB: per-instance colour, class texture, lighting and sky gradient."""
    p = c.p
    rng = np.random.default_rng([p.seed, int(round(t * 1000)) & 0x7FFFFFFF])
    colours = np.asarray(c.colours, np.float32)
    noise = np.asarray(c.noise, np.float32)
    inst = c.inst
    img = colours[inst]
    h, w = inst.shape
    fine = rng.standard_normal((h, w), dtype=np.float32)
    coarse = cv2.resize(rng.standard_normal((max(1, h // 16), max(1, w // 16)), dtype=np.float32),
                        (w, h), interpolation=cv2.INTER_CUBIC)
    tex = fine * noise[inst, 0] + coarse * noise[inst, 1]
    img += tex[..., None]
    # light: global gain, tint, darker near the horizon haze / brighter sky towards the top
    rows = np.linspace(1.08, 0.92, h, dtype=np.float32)[:, None, None]
    img *= rows * (p.light * np.asarray(p.tint, np.float32))
    if rng.random() < 0.5:  # a cast shadow band across the road
        y0 = int(h * rng.uniform(p.horizon + 0.1, 0.85))
        img[y0:y0 + int(h * rng.uniform(0.03, 0.1))] *= 0.7
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_frame(params: SceneParams, t: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Render the scene as the camera sees it after driving ``t`` seconds.

    Returns ``(image RGB uint8 HxWx3, label ids uint8 HxW)``.  Consecutive ``t`` make a smooth
    forward drive (objects approach and pass; lane dashes flow), for video tests.
    """
    c = _Canvas(params.size, params)
    travelled = params.speed * t
    _background(c, travelled)
    placed = [(t_, _wrap(t_.z, travelled)) for t_ in params.things]
    for thing, z in sorted(placed, key=lambda item: -item[1]):
        _draw_thing(c, thing, z)
    _void_overlays(c)
    label = np.asarray(c.classes, np.uint8)[c.inst]
    return _shade(c, t), label


def synth_scene(size: tuple[int, int] = (256, 512), seed: int = 0,
                t: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic frame ``(RGB, label ids)``; same (size, seed, t) → same arrays."""
    return render_frame(scene_params(seed, size), t)


def _sample_seed(seed: int, split: str, index: int) -> int:
    """Independent, reproducible seed per image (so images do not depend on split sizes)."""
    ss = np.random.SeedSequence([seed, {"train": 0, "val": 1, "test": 2}[split], index])
    return int(ss.generate_state(1)[0])


def synthesize(out: str | os.PathLike, *, n_train: int = 20, n_val: int = 10,
               size: tuple[int, int] = (256, 512), seed: int = 0,
               cities: Sequence[str] = DEFAULT_CITIES,
               progress: Callable[[int], None] | None = None) -> Path:
    """Write ``n_train`` + ``n_val`` scenes under ``out`` in the official layout; return ``out``.

    ``leftImg8bit/<split>/<city>/<city>_<seq>_000019_leftImg8bit.png`` and
    ``gtFine/<split>/<city>/<city>_<seq>_000019_gtFine_labelIds.png``.  Same arguments → same
    bytes.  ``progress`` is called with 1 after each image (for a progress bar).
    """
    out = Path(out)
    for split, count in (("train", n_train), ("val", n_val)):
        for i in range(count):
            city = cities[i % len(cities)]
            stem = f"{city}_{i:06d}_000019"
            image, label = synth_scene(size, _sample_seed(seed, split, i))
            write_png(out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image, rgb=True)
            write_png(out / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
            if progress is not None:
                progress(1)
    return out
