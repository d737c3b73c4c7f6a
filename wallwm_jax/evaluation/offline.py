"""Offline metrics on held-out episodes: action error, duration accuracy, caption/world loss."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wallwm_jax.data.pipeline import make_pipeline, to_event_batch
from wallwm_jax.models import wallwm


def evaluate_offline(params: Any, config: ml_collections.ConfigDict, *, split: str = "val",
                     num_batches: int = 4, seed: int = 1234) -> dict[str, float]:
    """Average metrics over `num_batches` event batches of `split` (normalised action units)."""
    model_cfg = config.model
    pipeline = make_pipeline(config.data, global_batch=config.batch_size, seed=seed, split=split)

    @jax.jit
    def metrics_fn(params, batch, rng):
        _, losses = wallwm.compute_loss(model_cfg, params, batch, rng, train=False)
        # Ground-truth captions and step-to-event assignment: this measures the actions given
        # the language (caption decoding quality is the caption loss).
        out = wallwm.sample_actions(model_cfg, params, batch.obs, rng,
                                    action_events=batch.action_events)
        mask = batch.action_mask.astype(jnp.float32)
        err = jnp.sum((out["actions"] - batch.actions) ** 2, axis=-1)
        mse = jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        world = jnp.mean((out["world"] - (batch.end_image.astype(jnp.float32) / 127.5 - 1)) ** 2)
        metrics = dict(losses, action_mse=mse, world_mse=world)
        if batch.duration_bin.shape[1]:  # chunk mode has no caption slots, so no durations
            present = (batch.obs.caption[:, :, 0] != 0).astype(jnp.float32)
            hit = (out["duration_bin"] == batch.duration_bin).astype(jnp.float32)
            metrics["duration_acc"] = jnp.sum(hit * present) / jnp.maximum(jnp.sum(present), 1)
        return metrics

    rows = []
    for b in range(num_batches):
        batch = to_event_batch(next(pipeline))
        rows.append(jax.device_get(metrics_fn(params, batch, jax.random.PRNGKey(seed + b))))
    return {f"{split}/{k}": float(np.mean([r[k] for r in rows])) for k in rows[0]}
