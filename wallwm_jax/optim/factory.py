"""Build the configured optimizer (AdamW or Muon) with warmup-cosine schedule and clipping."""

from __future__ import annotations

from typing import Any

import ml_collections
import optax


def learning_rate_schedule(opt_cfg: ml_collections.ConfigDict,
                           total_steps: int) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then cosine decay to 10% of it at `total_steps`."""
    if opt_cfg.learning_rate <= 0:
        raise ValueError(f"optimizer.learning_rate must be > 0, got {opt_cfg.learning_rate}")
    warmup = max(1, min(int(opt_cfg.warmup_steps), total_steps - 1))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt_cfg.learning_rate, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=0.1 * opt_cfg.learning_rate)


def make_optimizer(opt_cfg: ml_collections.ConfigDict, total_steps: int,
                   logical_axes: Any = None) -> optax.GradientTransformation:
    """`optimizer.name` in {'adamw', 'muon'} -> clipped optax transformation."""
    schedule = learning_rate_schedule(opt_cfg, total_steps)
    if opt_cfg.name == "adamw":
        base = optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=opt_cfg.weight_decay)
    elif opt_cfg.name == "muon":
        from wallwm_jax.optim.muon import muon

        base = muon(schedule, weight_decay=opt_cfg.weight_decay, logical_axes=logical_axes)
    else:
        raise ValueError(f"optimizer.name='{opt_cfg.name}' must be 'adamw' or 'muon'")
    if opt_cfg.grad_clip and opt_cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip), base)
    return base
