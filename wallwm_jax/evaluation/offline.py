"""Offline metrics on held-out episodes: action error, duration, caption and event-boundary
accuracy, caption/world loss."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from wallwm_jax import sharding
from wallwm_jax.data.pipeline import make_pipeline
from wallwm_jax.evaluation.caption_metrics import (
    boundary_accuracy,
    caption_accuracy,
    teacher_forced_captions,
)
from wallwm_jax.models import wallwm


def action_sq_errors(actions: jax.Array, batch: Any) -> tuple[jax.Array, jax.Array]:
    """Per sample: the summed squared action error over its real (unmasked) steps, and the
    number of those steps. A batch mean weights by steps; a per-sample mean divides each."""
    mask = batch.action_mask.astype(jnp.float32)
    err = jnp.sum((actions - batch.actions) ** 2, axis=-1)
    return jnp.sum(err * mask, axis=1), jnp.sum(mask, axis=1)


def caption_metrics(model_cfg: Any, params: Any, batch: Any,
                    duration_bin: jax.Array) -> dict[str, jax.Array]:
    """Caption exact match and token accuracy of the present slots (teacher-forced argmax vs
    the sample's captions: exact match equals greedy decoding's) and event-boundary accuracy
    (predicted vs true duration bins agree on whether the event ends inside the chunk)."""
    caption = batch.obs.caption
    logits = wallwm.WallWM(wallwm._frozen(model_cfg)).apply(
        {"params": params}, batch.obs, method=wallwm.WallWM.vlm_caption_logits)
    present = caption[:, :, 0] != 0
    out = caption_accuracy(teacher_forced_captions(logits, caption), caption, present)
    out["boundary_acc"] = boundary_accuracy(
        wallwm.duration_steps(model_cfg, duration_bin),
        wallwm.duration_steps(model_cfg, batch.duration_bin), model_cfg.max_event_len, present)
    return out


class OfflineEvaluator:
    """Compiles the metrics step once and draws the held-out batches once (at the first
    call); each call averages the metrics over those same batches.

    With a `mesh`, batches become global arrays sharded over the data axes (works on several
    processes); without one they are fed as host arrays (single process). Metrics are keyed
    '<prefix>/...' (default: the split's name).
    """

    def __init__(self, config: ml_collections.ConfigDict, *, split: str = "val",
                 num_batches: int = 4, seed: int = 1234, mesh: Mesh | None = None,
                 prefix: str | None = None):
        self.config, self.split, self.num_batches = config, split, int(num_batches)
        self.seed, self.mesh, self.prefix = seed, mesh, prefix or split
        self._batches: list[Any] | None = None
        model_cfg = config.model

        def metrics_fn(params: Any, batch: Any, rng: jax.Array) -> dict[str, jax.Array]:
            _, losses = wallwm.compute_loss(model_cfg, params, batch, rng, train=False)
            # Ground-truth captions and step-to-event assignment: this measures the actions
            # given the language (caption decoding quality is the caption loss).
            out = wallwm.sample_actions(model_cfg, params, batch.obs, rng,
                                        action_events=batch.action_events)
            err, steps = action_sq_errors(out["actions"], batch)
            mse = jnp.sum(err) / jnp.maximum(jnp.sum(steps), 1.0)
            end = batch.end_image.astype(jnp.float32) / 127.5 - 1
            world = jnp.mean((out["world"] - end) ** 2)
            metrics = dict(losses, action_mse=mse, world_mse=world)
            if batch.duration_bin.shape[1]:  # chunk mode has no caption slots, no durations
                present = (batch.obs.caption[:, :, 0] != 0).astype(jnp.float32)
                hit = (out["duration_bin"] == batch.duration_bin).astype(jnp.float32)
                metrics["duration_acc"] = jnp.sum(hit * present) / jnp.maximum(
                    jnp.sum(present), 1)
                metrics.update(caption_metrics(model_cfg, params, batch, out["duration_bin"]))
            return metrics

        out_sharding = None if mesh is None else sharding.replicated(mesh)
        self._metrics_fn = jax.jit(metrics_fn, out_shardings=out_sharding)

    def batches(self) -> list[Any]:
        """The held-out batches every call evaluates (drawn from the split once)."""
        if self._batches is None:
            pipeline = make_pipeline(self.config.data, global_batch=self.config.batch_size,
                                     seed=self.seed, split=self.split)
            self._batches = [next(pipeline) for _ in range(self.num_batches)]
        return self._batches

    def __call__(self, params: Any, step: int | None = None) -> dict[str, float]:
        """Average metrics over `num_batches` event batches of the split."""
        rows = []
        for b, batch in enumerate(self.batches()):
            if self.mesh is not None:
                batch = sharding.global_batch(batch, self.mesh, self.config.sharding_rules)
            rng = jax.random.PRNGKey(self.seed + b)
            rows.append(jax.device_get(self._metrics_fn(params, batch, rng)))
        return {f"{self.prefix}/{k}": float(np.mean([r[k] for r in rows])) for k in rows[0]}


def evaluate_offline(params: Any, config: ml_collections.ConfigDict, *, split: str = "val",
                     num_batches: int = 4, seed: int = 1234) -> dict[str, float]:
    """Average metrics over `num_batches` event batches of `split` (normalised action units)."""
    return OfflineEvaluator(config, split=split, num_batches=num_batches, seed=seed)(params)
