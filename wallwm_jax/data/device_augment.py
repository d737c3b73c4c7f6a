"""Image augmentation on the accelerator, for `data.augment.placement = "device"`: the host's
random resized crop and colour jitter (`augment.py`) as jittable functions of a batch of uint8
frames and a key.

The pipeline then ships the frames as they are and the train step calls `augment_batch` with a
key folded from its step's RNG, so a resumed run sees the same crops as a straight one. The
parameters follow the host's distributions (`augment.crop_box`, `augment.jitter_factors`;
drawn with `jax.random`, so not the same values as the host's numpy stream) and are applied as
the host applies them: PIL's bilinear resize of the crop in PIL's own fixed-point arithmetic
(equal bit for bit), and the one-pass jitter in float32 (equal to within one grey level where
the two sums round a tie apart). tests/data/test_device_augment.py checks both.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from wallwm_jax.data.augment import GREY, RATIO

STREAM = 0x417567  # folded into the step's key: augmentation draws apart from the model's
_SHIFT = 22  # PIL's fixed-point precision of 8-bit resampling (PRECISION_BITS)


def crop_boxes(key: jax.Array, n: int, h: int, w: int, scale: float) -> jax.Array:
    """int32 [n, 4] (top, left, height, width) crops of H x W frames, drawn as
    `augment.crop_box` draws them with scale=(scale, 1)."""
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    area = jax.random.uniform(k_area, (n,), minval=scale, maxval=1.0) * (h * w)
    aspect = jnp.exp(jax.random.uniform(k_ratio, (n,), minval=math.log(RATIO[0]),
                                        maxval=math.log(RATIO[1])))
    ch = jnp.round(jnp.minimum(h, jnp.sqrt(area / aspect))).astype(jnp.int32)
    cw = jnp.round(jnp.minimum(w, jnp.sqrt(area * aspect))).astype(jnp.int32)
    top = jax.random.randint(k_top, (n,), 0, h - ch + 1)
    left = jax.random.randint(k_left, (n,), 0, w - cw + 1)
    return jnp.stack([top, left, ch, cw], axis=-1).astype(jnp.int32)


def jitter_factors(key: jax.Array, n: int, amount: float) -> jax.Array:
    """float32 [n, 3] brightness, contrast, saturation factors, each uniform in
    [1 - amount, 1 + amount] (`augment.jitter_factors` with one amount for all three)."""
    return jax.random.uniform(key, (n, 3), minval=1.0 - amount, maxval=1.0 + amount)


def _taps(size: int, start: jax.Array, length: jax.Array
          ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """PIL's bilinear upscale of the window [start, start + length) of a row (or column) of
    each of n frames back to `size` pixels: output pixel y reads input pixels i0, i1 with
    fixed-point weights k0, k1 (int32 [n, size] each; weight w is round(w * 2**22)).

    Output y samples the window at (y + 0.5) * length / size - 0.5 (half-pixel centres),
    clamped to the window. In units of 1 / (2 size) that is an integer, so the weights are
    exact rationals j / (2 size) and their rounding is PIL's: PIL computes them in double, and
    j 2**22 / (2 size) is never within double rounding of a half (its fraction is a multiple
    of 1 / size's odd part), so both round alike. int32 holds every step for sizes < 2**14.
    """
    y = jnp.arange(size, dtype=jnp.int32)[None]
    length = length.astype(jnp.int32)[:, None]
    src = jnp.clip((2 * y + 1) * length - size, 0, (length - 1) * (2 * size))
    i0 = src // (2 * size)
    frac = src - i0 * (2 * size)  # the weight of i1, times 2 size
    q, r = divmod(1 << (_SHIFT - 1), size)

    def fixed(num: jax.Array) -> jax.Array:  # round(num / (2 size) * 2**22), no overflow
        return num * q + (2 * num * r + size) // (2 * size)

    first = start.astype(jnp.int32)[:, None]
    return (i0 + first, jnp.minimum(i0 + 1, length - 1) + first, fixed(2 * size - frac),
            fixed(frac))


def _blend(a: jax.Array, b: jax.Array, ka: jax.Array, kb: jax.Array) -> jax.Array:
    """One resampling pass's output pixel from its two taps, rounded as PIL's clip8."""
    out = (a * ka + b * kb + (1 << (_SHIFT - 1))) >> _SHIFT
    return jnp.clip(out, 0, 255)


def resized_crop(frames: jax.Array, boxes: jax.Array) -> jax.Array:
    """uint8 [n, H, W, 3] frames, int [n, 4] (top, left, height, width) boxes -> each box's
    crop resized back to H x W, as `augment.resized_crop` (PIL bilinear, bit for bit):
    horizontal pass first, rounded to uint8, then the vertical one; two gathers per pass."""
    n, h, w, _ = frames.shape
    x = frames.astype(jnp.int32)
    c0, c1, k0, k1 = _taps(w, boxes[:, 1], boxes[:, 3])
    cols = jax.vmap(lambda img, i: img[:, i])
    x = _blend(cols(x, c0), cols(x, c1), k0[:, None, :, None], k1[:, None, :, None])
    r0, r1, k0, k1 = _taps(h, boxes[:, 0], boxes[:, 2])
    rows = jax.vmap(lambda img, i: img[i])
    x = _blend(rows(x, r0), rows(x, r1), k0[:, :, None, None], k1[:, :, None, None])
    return x.astype(jnp.uint8)


def apply_jitter(frames: jax.Array, factors: jax.Array) -> jax.Array:
    """uint8 [n, H, W, 3] frames, float [n, 3] (b, c, s) factors -> `augment.apply_jitter`
    of each frame: out = s c b x + (1 - s) c b g + (1 - c) b m (s + (1 - s) sum(w))."""
    x = frames.astype(jnp.float32)
    w = [float(v) for v in GREY]
    grey = x[..., 0] * w[0] + x[..., 1] * w[1] + x[..., 2] * w[2]  # elementwise: no bf16 pass
    b, c, s = (factors[:, i].astype(jnp.float32)[:, None, None] for i in range(3))
    mean = jnp.mean(grey, axis=(1, 2), keepdims=True)
    const = (1 - c) * b * mean * (s + (1 - s) * float(GREY.sum()))
    out = x * (s * c * b)[..., None] + (grey * ((1 - s) * c * b) + const)[..., None]
    return jnp.rint(jnp.clip(out, 0.0, 255.0)).astype(jnp.uint8)


def augment_images(images: jax.Array, key: jax.Array, *, crop_scale: float,
                   jitter: float) -> jax.Array:
    """uint8 [..., H, W, 3] -> the same shape, every frame (each camera of each sample) with
    its own crop (when crop_scale < 1) and jitter (when jitter > 0), as `augment.augment_frame`
    applies them on the host."""
    shape = images.shape
    frames = images.reshape(-1, *shape[-3:])
    n, h, w = frames.shape[:3]
    k_crop, k_jitter = jax.random.split(key)
    if crop_scale < 1.0:
        frames = resized_crop(frames, crop_boxes(k_crop, n, h, w, crop_scale))
    if jitter > 0.0:
        frames = apply_jitter(frames, jitter_factors(k_jitter, n, jitter))
    return frames.reshape(shape)


def augment_batch(batch: Any, rng: jax.Array, cfg: ml_collections.ConfigDict) -> Any:
    """The `EventBatch` with `obs.image` augmented per `data.augment` (`cfg`) on the device,
    keyed by `rng` (the train step's key for this step; the draws use a stream of their own)."""
    images = augment_images(batch.obs.image, jax.random.fold_in(rng, STREAM),
                            crop_scale=float(cfg.crop_scale), jitter=float(cfg.jitter))
    return batch.replace(obs=batch.obs.replace(image=images))
