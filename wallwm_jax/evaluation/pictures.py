"""Pictures of closed-loop episodes: a film strip (PNG) and an animation (GIF, Pillow) with
the caption in effect drawn on the frames, and the world head's predicted event-end frames
next to the real ones."""

from __future__ import annotations

import os
import textwrap

import numpy as np
from PIL import Image, ImageDraw

_SCALE_TO = 192  # frames are upscaled (nearest) so 64x64 renders stay legible


def _upscale(frame: np.ndarray, side: int = _SCALE_TO) -> Image.Image:
    img = Image.fromarray(np.asarray(frame, np.uint8))
    return img.resize((side, side), Image.NEAREST)


def _captioned(frame: np.ndarray, text: str, side: int = _SCALE_TO) -> Image.Image:
    """The frame upscaled, with `text` wrapped in a band underneath."""
    lines = textwrap.wrap(text or "-", width=side // 6)[:3]
    band = 12 * len(lines) + 6
    canvas = Image.new("RGB", (side, side + band), "white")
    canvas.paste(_upscale(frame, side), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((3, side + 3 + 12 * i), line, fill="black")
    return canvas


def film_strip(frames: list[np.ndarray], texts: list[str], path: str, *,
               num: int = 8, title: str = "") -> str:
    """`num` evenly spaced frames side by side, each with its caption; returns `path`."""
    if not frames:
        raise ValueError("film_strip needs at least one frame")
    idx = np.unique(np.linspace(0, len(frames) - 1, min(num, len(frames))).round().astype(int))
    tiles = [_captioned(frames[i], f"t={i}: {texts[i]}") for i in idx]
    height = max(t.height for t in tiles) + (16 if title else 0)
    strip = Image.new("RGB", (sum(t.width for t in tiles), height), "white")
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 16 if title else 0))
        x += tile.width
    if title:
        ImageDraw.Draw(strip).text((3, 2), title, fill="black")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    strip.save(path)
    return path


def animation(frames: list[np.ndarray], texts: list[str], path: str, *,
              fps: int = 10, max_frames: int = 300) -> str:
    """A GIF of the episode with the caption in effect on every frame; returns `path`."""
    if not frames:
        raise ValueError("animation needs at least one frame")
    step = max(1, len(frames) // max_frames)
    images = [_captioned(f, t) for f, t in zip(frames[::step], texts[::step], strict=True)]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=int(1000 * step / fps))
    return path


def world_comparison(pairs: list[tuple[np.ndarray, np.ndarray, int]], path: str, *,
                     max_pairs: int = 8) -> str:
    """Predicted (top) vs real (bottom) event-end frames, one column per event; returns path.

    `pairs` holds (predicted uint8 [w,w,3], real uint8 [H,W,3], step of the real frame).
    """
    if not pairs:
        raise ValueError("world_comparison needs at least one pair")
    pairs = pairs[:max_pairs]
    side = 128
    canvas = Image.new("RGB", (side * len(pairs), 2 * side + 28), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (pred, real, step) in enumerate(pairs):
        canvas.paste(_upscale(pred, side), (i * side, 14))
        canvas.paste(_upscale(real, side), (i * side, side + 14))
        draw.text((i * side + 3, 2), f"predicted (t={step})", fill="black")
        draw.text((i * side + 3, 2 * side + 15), "real", fill="black")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    canvas.save(path)
    return path
