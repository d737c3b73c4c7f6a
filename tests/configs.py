"""Test configs shared by the pytest fixtures (tests/conftest.py) and the processes tests start
(tests/multiprocess_worker.py), which cannot import conftest: it sets up the environment."""

from __future__ import annotations

import ml_collections


def tiny_config(data_dir: str) -> ml_collections.ConfigDict:
    """The tiny event-mode config pointed at `data_dir`, sized for CPU tests: 32-px images,
    batch 8, 6 steps, an async checkpoint every 3 and a log row every step."""
    from experiments.pretrain import get_config

    config = get_config("size=tiny,mode=event")
    config.data.data_dir = data_dir
    config.data.image_size = 32
    config.batch_size = 8
    config.total_steps = 6
    config.log_every_steps = 1
    config.checkpoint.every_steps = 3
    config.checkpoint.async_save = True
    return config
