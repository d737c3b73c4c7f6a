"""Build the configured optimizer (AdamW, Muon or optax's Muon) with schedule and clipping.

Settings live in `config.optimizer`: `b1`, `b2`, `eps` (AdamW, and Muon's AdamW group) and
`muon.*` (momentum, nesterov, ns_steps, ns_dtype, adjust_lr, rules); see `docs/optimizers.md`.
`freeze` (optional): model parts held fixed, e.g. ("vit", "backbone") (optim/freeze.py).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

OPTIMIZERS = ("adamw", "muon", "optax_muon")


def learning_rate_schedule(opt_cfg: ml_collections.ConfigDict,
                           total_steps: int | jax.Array) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then cosine decay to 10% of it at `total_steps`.

    `total_steps` may be a traced int32 scalar: the train step takes it as an input rather than
    a compile-time constant, so runs that differ only in length share one executable.
    """
    if opt_cfg.learning_rate <= 0:
        raise ValueError(f"optimizer.learning_rate must be > 0, got {opt_cfg.learning_rate}")
    peak = float(opt_cfg.learning_rate)
    end = 0.1 * peak
    xp = jnp if isinstance(total_steps, jax.Array) else np  # numbers stay numbers
    total = xp.asarray(total_steps, xp.float32)
    warmup = xp.maximum(1.0, xp.minimum(float(int(opt_cfg.warmup_steps)), total - 1.0))
    decay = xp.maximum(total, warmup + 1.0) - warmup  # steps from the peak to the end

    def schedule(count: Any) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        rising = peak * jnp.minimum(count, warmup) / warmup
        t = jnp.clip(count - warmup, 0.0, decay) / decay
        falling = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        return jnp.where(count < warmup, rising, falling)

    return schedule


def muon_settings(opt_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """`optimizer.muon` (plus the AdamW betas/eps) as keyword arguments of `optim.muon`."""
    from wallwm_jax.optim.routing import DEFAULT_RULES

    m = opt_cfg.get("muon") or ml_collections.ConfigDict()
    adjust = m.get("adjust_lr", "original")
    rules = m.get("rules") or DEFAULT_RULES
    return dict(momentum=float(m.get("momentum", 0.95)), nesterov=bool(m.get("nesterov", True)),
                ns_steps=int(m.get("ns_steps", 5)), ns_dtype=str(m.get("ns_dtype", "bfloat16")),
                adjust_lr=None if adjust in (None, "none", "") else adjust,
                rules=tuple((str(p), str(g)) for p, g in rules),
                adam_b1=float(opt_cfg.get("b1", 0.9)), adam_b2=float(opt_cfg.get("b2", 0.95)),
                adam_eps=float(opt_cfg.get("eps", 1e-8)))


def make_optimizer(opt_cfg: ml_collections.ConfigDict, total_steps: int | jax.Array,
                   logical_axes: Any = None, shardings: Any = None
                   ) -> optax.GradientTransformation:
    """`optimizer.name` in OPTIMIZERS -> clipped optax transformation.

    `shardings` (the params' NamedShardings) lets Muon spread Newton–Schulz over the mesh
    instead of all-gathering every matrix; the train step always passes them.
    `optax_muon` is `optax.contrib.muon` with the same routing, kept as a reference.
    """
    schedule = learning_rate_schedule(opt_cfg, total_steps)
    b1, b2, eps = (float(opt_cfg.get("b1", 0.9)), float(opt_cfg.get("b2", 0.95)),
                   float(opt_cfg.get("eps", 1e-8)))
    if opt_cfg.name == "adamw":
        base = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=opt_cfg.weight_decay)
    elif opt_cfg.name == "muon":
        from wallwm_jax.optim.muon import muon

        base = muon(schedule, weight_decay=opt_cfg.weight_decay, logical_axes=logical_axes,
                    shardings=shardings, **muon_settings(opt_cfg))
    elif opt_cfg.name == "optax_muon":
        base = _optax_muon(schedule, opt_cfg, logical_axes)
    else:
        raise ValueError(f"optimizer.name='{opt_cfg.name}' must be one of {OPTIMIZERS}")
    if opt_cfg.grad_clip and opt_cfg.grad_clip > 0:
        base = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip), base)
    if opt_cfg.get("freeze"):  # fine-tuning: parts held fixed (experiments/finetune.py)
        from wallwm_jax.optim.freeze import freeze

        base = freeze(base, opt_cfg.freeze)
    return base


def _optax_muon(schedule: optax.Schedule, opt_cfg: ml_collections.ConfigDict,
                logical_axes: Any) -> optax.GradientTransformation:
    """`optax.contrib.muon` routed like ours (same matrices, same AdamW group)."""
    from wallwm_jax.optim.routing import plan_params

    kw = muon_settings(opt_cfg)
    if logical_axes is None:
        raise ValueError("optimizer.name='optax_muon' needs the params' logical axes")
    plans = plan_params(logical_axes, kw["rules"], logical_axes=logical_axes)
    dims = jax.tree.map(
        lambda pl: (optax.contrib.MuonDimensionNumbers(pl.in_axes, pl.out_axes)
                    if pl.group == "muon" else None), plans)
    return optax.contrib.muon(schedule, ns_steps=kw["ns_steps"], beta=kw["momentum"],
                              nesterov=kw["nesterov"], eps=1e-7, adam_b1=kw["adam_b1"],
                              adam_b2=kw["adam_b2"], adam_eps_root=0.0,
                              weight_decay=opt_cfg.weight_decay,
                              muon_weight_dimension_numbers=dims)
