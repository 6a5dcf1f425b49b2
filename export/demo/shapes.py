"""Procedural scenes for the demo model: one coloured shape on a varied background.

A scene is four attributes (shape, colour, size, position). :func:`draw` renders it with a
random background (solid, two-colour gradient, mild noise) and random jitter of the shape's
place, size and hue; :func:`caption` writes it in one of a few phrasings, e.g.
``"a small red triangle at the top left"`` or ``"top left: a small red triangle"``.

Everything takes an explicit ``numpy.random.Generator``, so the same seed draws the same
images and captions. Only numpy and Pillow are used.
"""

from __future__ import annotations

import io
import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 225),
    "purple": (145, 50, 175),
}
SIZES = ("small", "large")
# position name -> (x, y) centre as a fraction of the image side
POSITIONS = {
    "top left": (0.23, 0.23),
    "top": (0.5, 0.23),
    "top right": (0.77, 0.23),
    "left": (0.23, 0.5),
    "center": (0.5, 0.5),
    "right": (0.77, 0.5),
    "bottom left": (0.23, 0.77),
    "bottom": (0.5, 0.77),
    "bottom right": (0.77, 0.77),
}
# shape radius as a fraction of the image side
RADIUS = {"small": 0.10, "large": 0.19}
# "at the top left", "on the left", "in the center"
PREPOSITION = {"left": "on the", "right": "on the", "center": "in the"}
PHRASINGS = (
    "a {size} {colour} {shape} {where}",
    "{position}: a {size} {colour} {shape}",
    "there is a {size} {colour} {shape} {where}",
    "{article} {colour} {shape}, {size}, {where}",
)
# no background pixel comes closer than this (RGB Euclidean) to the shape's colour
MIN_BACKGROUND_DISTANCE = 90.0


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str

    @property
    def key(self) -> tuple[int, int, int, int]:
        """Indices of the attributes: equal keys mean captions cannot tell the scenes apart."""
        return (
            SHAPES.index(self.shape),
            list(COLOURS).index(self.colour),
            SIZES.index(self.size),
            list(POSITIONS).index(self.position),
        )


def all_scenes() -> list[Scene]:
    """Every attribute combination, in a fixed order."""
    return [Scene(*combo) for combo in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS)]


def random_scene(rng: np.random.Generator) -> Scene:
    return Scene(
        SHAPES[rng.integers(len(SHAPES))],
        list(COLOURS)[rng.integers(len(COLOURS))],
        SIZES[rng.integers(len(SIZES))],
        list(POSITIONS)[rng.integers(len(POSITIONS))],
    )


def distinct_scenes(rng: np.random.Generator, n: int) -> list[Scene]:
    """``n`` scenes with pairwise different attributes (so every caption has one right image)."""
    scenes = all_scenes()
    if n > len(scenes):
        raise ValueError(f"only {len(scenes)} distinct scenes exist, {n} asked for")
    return [scenes[i] for i in rng.permutation(len(scenes))[:n]]


def where(position: str) -> str:
    """``"top left"`` -> ``"at the top left"``; ``"left"`` -> ``"on the left"``."""
    return f"{PREPOSITION.get(position, 'at the')} {position}"


def caption(scene: Scene, phrasing: int = 0) -> str:
    article = "an" if scene.colour[0] in "aeiou" else "a"
    return PHRASINGS[phrasing].format(
        article=article,
        size=scene.size, colour=scene.colour, shape=scene.shape, position=scene.position, where=where(scene.position)
    )


def random_captions(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    """``n`` captions of ``scene`` in ``n`` different phrasings."""
    return [caption(scene, int(p)) for p in rng.permutation(len(PHRASINGS))[:n]]


def all_captions() -> list[str]:
    """Every caption the grammar can write (for building the vocabulary)."""
    return [caption(s, p) for s in all_scenes() for p in range(len(PHRASINGS))]


def _background(rng: np.random.Generator, side: int, avoid: np.ndarray) -> np.ndarray:
    """A float32 ``[side, side, 3]`` background whose colours all stay far from ``avoid``."""
    for _ in range(100):
        # muted colours: a random colour pulled towards a random grey
        grey = rng.uniform(40, 215)
        ends = 0.45 * rng.uniform(0, 255, size=(2, 3)) + 0.55 * grey
        if rng.random() < 0.4:
            ends[1] = ends[0]
        if min(np.linalg.norm(ends - avoid, axis=1)) >= MIN_BACKGROUND_DISTANCE + 20:
            break
    angle = rng.uniform(0, 2 * math.pi)
    axis = np.linspace(-1.0, 1.0, side, dtype=np.float32)
    proj = math.cos(angle) * axis[None, :] + math.sin(angle) * axis[:, None]
    t = ((proj - proj.min()) / (proj.max() - proj.min()))[..., None]
    img = (1 - t) * ends[0].astype(np.float32) + t * ends[1].astype(np.float32)
    noise = rng.uniform(0, 8)
    if noise > 1:
        img = img + noise * rng.standard_normal(size=img.shape, dtype=np.float32)
    img = np.clip(img, 0, 255)
    # pull any pixel that came too close to the shape colour back out
    diff = img - avoid
    dist = np.linalg.norm(diff, axis=-1, keepdims=True)
    too_close = dist < MIN_BACKGROUND_DISTANCE
    if too_close.any():
        push = avoid + diff / np.maximum(dist, 1e-3) * MIN_BACKGROUND_DISTANCE
        img = np.where(too_close, np.clip(push, 0, 255), img)
    return img.astype(np.float32)


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: list[float], start: float) -> list[tuple[float, float]]:
        pts = []
        for i in range(n * len(radii)):
            a = start + turn + 2 * math.pi * i / (n * len(radii))
            rr = radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if shape == "triangle":
        return ring(3, [r * 1.15], -math.pi / 2)
    if shape == "star":
        return ring(5, [r * 1.15, r * 0.48], -math.pi / 2)
    if shape == "cross":
        w = r * 0.36
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        c, s = math.cos(turn), math.sin(turn)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise ValueError(shape)


def draw(scene: Scene, rng: np.random.Generator, side: int = 128) -> Image.Image:
    """Render ``scene`` as an RGB image ``side`` pixels square."""
    base = np.array(COLOURS[scene.colour], dtype=np.float32)
    colour = np.clip(base + rng.uniform(-15, 15, size=3), 0, 255)
    img = Image.fromarray(_background(rng, side, colour).round().astype(np.uint8), "RGB")
    fx, fy = POSITIONS[scene.position]
    cx = (fx + rng.uniform(-0.035, 0.035)) * side
    cy = (fy + rng.uniform(-0.035, 0.035)) * side
    r = RADIUS[scene.size] * rng.uniform(0.88, 1.12) * side
    turn = math.radians(rng.uniform(-12, 12))
    fill = tuple(int(round(c)) for c in colour)
    pen = ImageDraw.Draw(img)
    if scene.shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "square":
        h = r * 0.88
        pen.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        pen.polygon(_polygon(scene.shape, cx, cy, r, turn), fill=fill)
    return img


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    """``img`` as it reads back after saving as JPEG at ``quality``."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return decoded.convert("RGB")
