"""Grain's read-ahead is bounded by `data.read_threads` / `data.read_ahead`: a pipeline asked
for one batch computes at most a few more, not Grain's default 500 batches."""

import time

from wallwm_jax.data.pipeline import make_pipeline, read_options
from wallwm_jax.data.sampler import EventSampler


def test_read_options_come_from_the_config(tiny_config):
    tiny_config.data.read_threads, tiny_config.data.read_ahead = 3, 5
    options = read_options(tiny_config.data)
    assert (options.num_threads, options.prefetch_buffer_size) == (3, 5)


def test_one_batch_computes_at_most_read_ahead_more(tiny_config, monkeypatch):
    calls = []
    real = EventSampler.__call__
    monkeypatch.setattr(EventSampler, "__call__",
                        lambda self, i: calls.append(i) or real(self, i))
    cfg = tiny_config.data
    cfg.read_threads, cfg.read_ahead = 2, 3
    pipe = make_pipeline(cfg, global_batch=8, seed=0)
    next(pipe.iterator)
    # Grain's defaults would go on computing batches on 16 threads for seconds (4,000 samples
    # of this dataset in ~2 CPU-s); bounded, the count stops at (1 + read_ahead) batches.
    time.sleep(1.5)
    assert 8 <= len(calls) <= (1 + 3) * 8
