"""Fixtures for model tests: the tiny config and a small deterministic EventBatch."""

import numpy as np
import pytest

from experiments.pretrain import get_config
from wallwm_jax.data.batches import EventBatch, Observation


@pytest.fixture
def tiny_cfg():
    return get_config("size=tiny,mode=event").model


def make_batch(cfg, batch_size=4, seed=0):
    """Random tokens with trailing padding of different lengths per example.

    With K = cfg.max_captions slots: slot 0 is always present, later slots are present for
    some examples, and the action steps are spread over the present slots (non-decreasing).
    """
    rng = np.random.default_rng(seed)
    li, lc, tmax, k = 8, 6, cfg.max_event_len, cfg.max_captions

    def tokens(shape, real):
        t = rng.integers(3, cfg.vocab_size, shape + (lc if len(shape) == 2 else li,))
        t = t.astype(np.int32)
        t[np.arange(t.shape[-1]) >= np.asarray(real)[..., None]] = 0
        return t

    present = np.ones((batch_size, k), bool)
    present[:, 1:] = rng.random((batch_size, max(k - 1, 0))) < 0.7
    present = np.cumprod(present, axis=1).astype(bool)  # a slot needs the earlier ones
    caption = tokens((batch_size, k), rng.integers(2, lc + 1, (batch_size, k)))
    caption[..., 0] = 1  # BOS
    caption[~present] = 0
    events = np.zeros((batch_size, tmax), np.int32)
    for b in range(batch_size):
        cuts = np.sort(rng.integers(1, tmax, max(int(present[b].sum()) - 1, 0)))
        events[b] = np.searchsorted(cuts, np.arange(tmax), side="right")
    obs = Observation(
        image=rng.integers(0, 256, (batch_size, *([cfg.cameras] if cfg.get("cameras", 1) > 1
                                                  else []), cfg.image_size, cfg.image_size, 3),
                             np.uint8),
        state=rng.normal(size=(batch_size, cfg.state_dim)).astype(np.float32),
        instruction=tokens((batch_size,), rng.integers(1, li + 1, batch_size)),
        caption=caption)
    lengths = rng.integers(1, tmax + 1, batch_size)
    return EventBatch(
        obs=obs,
        actions=rng.normal(size=(batch_size, tmax, cfg.action_dim)).astype(np.float32),
        action_mask=np.arange(tmax)[None] < lengths[:, None],
        action_events=events,
        duration_bin=rng.integers(0, cfg.num_duration_bins, (batch_size, k)).astype(np.int32),
        end_image=rng.integers(0, 256, (batch_size, cfg.world_size, cfg.world_size, 3),
                               np.uint8))


@pytest.fixture
def unified_cfg():
    return get_config("size=tiny,mode=unified").model


@pytest.fixture
def tiny_batch(tiny_cfg):
    return make_batch(tiny_cfg)


@pytest.fixture
def batch_factory():
    """`make_batch` for tests that build their own config."""
    return make_batch
