"""Fixtures for model tests: the tiny config and a small deterministic EventBatch."""

import numpy as np
import pytest

from experiments.pretrain import get_config
from wallwm_jax.data.batches import EventBatch, Observation


@pytest.fixture
def tiny_cfg():
    return get_config("size=tiny,mode=event").model


def make_batch(cfg, batch_size=4, seed=0):
    """Random tokens with trailing padding of different lengths per example."""
    rng = np.random.default_rng(seed)
    li, lc, tmax = 8, 6, cfg.max_event_len

    def tokens(length, real):
        t = rng.integers(1, cfg.vocab_size, (batch_size, length)).astype(np.int32)
        t[np.arange(length)[None] >= np.asarray(real)[:, None]] = 0
        return t

    obs = Observation(
        image=rng.integers(0, 256, (batch_size, cfg.image_size, cfg.image_size, 3), np.uint8),
        state=rng.normal(size=(batch_size, cfg.state_dim)).astype(np.float32),
        instruction=tokens(li, rng.integers(1, li + 1, batch_size)),
        caption=tokens(lc, rng.integers(2, lc + 1, batch_size)))
    lengths = rng.integers(1, tmax + 1, batch_size)
    return EventBatch(
        obs=obs,
        actions=rng.normal(size=(batch_size, tmax, cfg.action_dim)).astype(np.float32),
        action_mask=np.arange(tmax)[None] < lengths[:, None],
        duration_bin=rng.integers(0, cfg.num_duration_bins, batch_size).astype(np.int32),
        end_image=rng.integers(0, 256, (batch_size, cfg.world_size, cfg.world_size, 3),
                               np.uint8))


@pytest.fixture
def tiny_batch(tiny_cfg):
    return make_batch(tiny_cfg)


@pytest.fixture
def batch_factory():
    """`make_batch` for tests that build their own config."""
    return make_batch
