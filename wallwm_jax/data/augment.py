"""Per-frame image augmentation for training samples: random resized crop and colour jitter.

Pure numpy/PIL on one uint8 frame, driven by a numpy Generator that the sampler seeds from the
global sample index, so an augmented sample is as reproducible as an unaugmented one. Each
augmentation is split into drawing its parameters (`crop_box`, `jitter_factors`) and applying
them (`resized_crop`, `apply_jitter`), so the accelerator's version (`device_augment`) can be
checked against this one parameter for parameter.

`data.augment.placement` says where it runs: "host" (here, in the sampler; the default) or
"device" (`device_augment`, inside the jitted train step; the pipeline ships the frames as they
are). docs/data.md says which to choose.
"""

from __future__ import annotations

import ml_collections
import numpy as np
from PIL import Image

GREY = np.asarray([0.299, 0.587, 0.114], np.float32)  # luma weights (ITU-R 601)
PLACEMENTS = ("host", "device")
RATIO = (3 / 4, 4 / 3)  # the crop's aspect-ratio range


def crop_box(h: int, w: int, rng: np.random.Generator, *,
             scale: tuple[float, float] = (0.8, 1.0),
             ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop of an H x W frame: area fraction uniform in
    `scale`, log aspect ratio uniform in log `ratio`, position uniform where it fits."""
    area = rng.uniform(*scale) * h * w
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    ch = int(round(min(h, np.sqrt(area / aspect))))
    cw = int(round(min(w, np.sqrt(area * aspect))))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return top, left, ch, cw


def resized_crop(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The (top, left, height, width) crop of `frame`, resized back to H x W (PIL bilinear)."""
    h, w = frame.shape[:2]
    top, left, ch, cw = box
    crop = Image.fromarray(frame[top:top + ch, left:left + cw])
    return np.asarray(crop.resize((w, h), Image.BILINEAR), np.uint8)


def random_resized_crop(frame: np.ndarray, rng: np.random.Generator, *,
                        scale: tuple[float, float] = (0.8, 1.0),
                        ratio: tuple[float, float] = RATIO) -> np.ndarray:
    """Crop an area fraction in `scale` with aspect ratio in `ratio`, resize back to H x W."""
    h, w = frame.shape[:2]
    return resized_crop(frame, crop_box(h, w, rng, scale=scale, ratio=ratio))


def jitter_factors(rng: np.random.Generator, brightness: float, contrast: float,
                   saturation: float) -> tuple[float, float, float]:
    """Brightness, contrast and saturation factors, each uniform in [1 - x, 1 + x]."""
    b = rng.uniform(1 - brightness, 1 + brightness)
    c = rng.uniform(1 - contrast, 1 + contrast)
    s = rng.uniform(1 - saturation, 1 + saturation)
    return b, c, s


def apply_jitter(frame: np.ndarray, b: float, c: float, s: float) -> np.ndarray:
    """Scale brightness by b, contrast (around the mean grey) by c and saturation by s; the
    result is clipped to uint8.

    The three are affine in the pixel, so they are applied as one: with grey g = x . w and its
    mean m, out = s c b x + (1 - s) c b g + (1 - c) b m (s + (1 - s) sum(w)); one pass over
    the frame instead of three (4x faster at 224 px)."""
    x = frame.astype(np.float32)
    grey = x @ GREY
    const = (1 - c) * b * float(grey.mean()) * (s + (1 - s) * float(GREY.sum()))
    out = x * np.float32(s * c * b)
    out += (grey * np.float32((1 - s) * c * b) + np.float32(const))[..., None]
    np.clip(out, 0, 255, out=out)
    return np.rint(out).astype(np.uint8)


def color_jitter(frame: np.ndarray, rng: np.random.Generator, *, brightness: float = 0.2,
                 contrast: float = 0.2, saturation: float = 0.2) -> np.ndarray:
    """Scale brightness, contrast (around the mean grey) and saturation by factors drawn
    uniformly from [1 - x, 1 + x] (`apply_jitter`); the result is clipped to uint8."""
    return apply_jitter(frame, *jitter_factors(rng, brightness, contrast, saturation))


def augment_frame(frame: np.ndarray, rng: np.random.Generator,
                  cfg: ml_collections.ConfigDict) -> np.ndarray:
    """Apply the augmentations enabled in `data.augment` (crop_scale, jitter) to one frame."""
    if cfg.crop_scale < 1.0:
        frame = random_resized_crop(frame, rng, scale=(cfg.crop_scale, 1.0))
    if cfg.jitter > 0.0:
        frame = color_jitter(frame, rng, brightness=cfg.jitter, contrast=cfg.jitter,
                             saturation=cfg.jitter)
    return frame


def placement(cfg: ml_collections.ConfigDict | None) -> str | None:
    """Where `data.augment` (`cfg`) runs: "host", "device", or None when it is off or absent
    (a config written before the field existed runs on the host)."""
    if cfg is None or not cfg.get("enabled"):
        return None
    return cfg.get("placement", "host")


def check_augment(cfg: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the field for out-of-range augmentation settings."""
    if not 0.0 < cfg.crop_scale <= 1.0:
        raise ValueError(f"data.augment.crop_scale={cfg.crop_scale} must be in (0, 1]")
    if not 0.0 <= cfg.jitter < 1.0:
        raise ValueError(f"data.augment.jitter={cfg.jitter} must be in [0, 1)")
    if cfg.get("placement", "host") not in PLACEMENTS:
        raise ValueError(f"data.augment.placement={cfg.placement!r} must be one of "
                         f"{', '.join(map(repr, PLACEMENTS))}")
