"""Image augmentation: colour jitter applied in one pass equals its three-step definition."""

import ml_collections
import numpy as np

from wallwm_jax.data.augment import augment_frame, color_jitter

GREY = np.asarray([0.299, 0.587, 0.114])


def _three_steps(frame: np.ndarray, b: float, c: float, s: float) -> np.ndarray:
    """The definition, one factor at a time in float64: brightness, contrast around the mean
    grey, saturation around each pixel's grey."""
    x = frame.astype(np.float64) * b
    mean = (x @ GREY).mean()
    x = (x - mean) * c + mean
    grey = (x @ GREY)[..., None]
    x = (x - grey) * s + grey
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def test_color_jitter_equals_brightness_then_contrast_then_saturation():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    frame[:4] = 255  # saturated pixels: clipping must match too
    for seed in range(20):
        draw = np.random.default_rng(seed)
        b, c, s = (draw.uniform(0.6, 1.4) for _ in range(3))
        got = color_jitter(frame, np.random.default_rng(seed), brightness=0.4, contrast=0.4,
                           saturation=0.4)
        want = _three_steps(frame, b, c, s)
        assert np.abs(got.astype(int) - want).max() <= 1  # float32 rounding at .5 only
        assert np.mean(got != want) < 0.01
    no_change = color_jitter(frame, rng, brightness=0.0, contrast=0.0, saturation=0.0)
    np.testing.assert_array_equal(no_change, frame)


def test_augment_frame_is_a_function_of_its_generator():
    frame = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cfg = ml_collections.ConfigDict(dict(crop_scale=0.85, jitter=0.15))
    a = augment_frame(frame, np.random.default_rng(7), cfg)
    np.testing.assert_array_equal(a, augment_frame(frame, np.random.default_rng(7), cfg))
    assert a.shape == frame.shape and a.dtype == np.uint8
    assert not np.array_equal(a, augment_frame(frame, np.random.default_rng(8), cfg))
