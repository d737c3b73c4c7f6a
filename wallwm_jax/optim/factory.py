"""Build the configured optimizer (AdamW, Muon or optax's Muon) with schedule and clipping.

Settings live in `config.optimizer`: `b1`, `b2`, `eps` (AdamW, and Muon's AdamW group) and
`muon.*` (momentum, nesterov, ns_steps, ns_dtype, adjust_lr, rules); see `docs/optimizers.md`.
`freeze` (optional): model parts held fixed, e.g. ("vit", "backbone") (optim/freeze.py).

The run's length is an input of the update, not a constant of the optimizer: the schedule is
`schedule(count, total_steps)` and `tx.update(grads, state, params, total_steps=n)` passes it
on, so one optimizer (and one compiled train step) serves runs of any length.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("adamw", "muon", "optax_muon")


def learning_rate_schedule(opt_cfg: ml_collections.ConfigDict,
                           total_steps: int | jax.Array | None = None) -> Callable[..., Any]:
    """Linear warmup to `learning_rate`, then cosine decay to 10% of it at `total_steps`.

    Returns `schedule(count, total_steps)`; with `total_steps` given here, `schedule(count)`
    for that length (an optax schedule; a `total_steps=` at the call still overrides it).
    """
    if opt_cfg.learning_rate <= 0:
        raise ValueError(f"optimizer.learning_rate must be > 0, got {opt_cfg.learning_rate}")
    peak = float(opt_cfg.learning_rate)
    end = 0.1 * peak
    warmup_steps = float(int(opt_cfg.warmup_steps))

    def schedule(count: Any, total_steps: int | jax.Array) -> jax.Array:
        total = jnp.asarray(total_steps, jnp.float32)
        warmup = jnp.maximum(1.0, jnp.minimum(warmup_steps, total - 1.0))
        decay = jnp.maximum(total, warmup + 1.0) - warmup  # steps from the peak to the end
        count = jnp.asarray(count, jnp.float32)
        rising = peak * jnp.minimum(count, warmup) / warmup
        t = jnp.clip(count - warmup, 0.0, decay) / decay
        falling = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
        return jnp.where(count < warmup, rising, falling)

    if total_steps is None:
        return schedule
    return functools.partial(schedule, total_steps=total_steps)


def scale_by_learning_rate(schedule: Callable[..., Any]
                           ) -> optax.GradientTransformationExtraArgs:
    """`optax.scale_by_learning_rate(schedule)` (same state, same arithmetic) for a schedule
    that also reads the update's extra arguments: `schedule(count, **extra_args)`."""

    def init(params: Any) -> optax.ScaleByScheduleState:
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates: Any, state: optax.ScaleByScheduleState, params: Any = None,
               **extra_args: Any) -> tuple[Any, optax.ScaleByScheduleState]:
        del params
        step_size = -1 * schedule(state.count, **extra_args)
        updates = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


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


def make_optimizer(opt_cfg: ml_collections.ConfigDict,
                   schedule: Callable[..., Any] | int,
                   logical_axes: Any = None, shardings: Any = None
                   ) -> optax.GradientTransformationExtraArgs:
    """`optimizer.name` in OPTIMIZERS -> clipped optax transformation.

    `schedule`: `learning_rate_schedule(opt_cfg)` (then every update passes
    `total_steps=`), or a run length, short for `learning_rate_schedule(opt_cfg, n)`.
    `shardings` (the params' NamedShardings) lets Muon spread Newton–Schulz over the mesh
    instead of all-gathering every matrix; the train step always passes them.
    `optax_muon` is `optax.contrib.muon` with the same routing, kept as a reference.
    """
    if not callable(schedule):
        schedule = learning_rate_schedule(opt_cfg, schedule)
    b1, b2, eps = (float(opt_cfg.get("b1", 0.9)), float(opt_cfg.get("b2", 0.95)),
                   float(opt_cfg.get("eps", 1e-8)))
    if opt_cfg.name == "adamw":  # optax.adamw, its learning rate reading the run's length
        base = optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                           optax.add_decayed_weights(opt_cfg.weight_decay),
                           scale_by_learning_rate(schedule))
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


def _optax_muon(schedule: Callable[..., Any], opt_cfg: ml_collections.ConfigDict,
                logical_axes: Any) -> optax.GradientTransformationExtraArgs:
    """`optax.contrib.muon` routed like ours (same matrices, same AdamW group).

    Its own learning rate is -1 (it scales by -learning_rate: ×1, the identity) and the run's
    schedule scales its step after it, as `learning_rate=schedule` would (bit for bit), but
    reading the run's length.
    """
    from wallwm_jax.optim.routing import plan_params

    kw = muon_settings(opt_cfg)
    if logical_axes is None:
        raise ValueError("optimizer.name='optax_muon' needs the params' logical axes")
    plans = plan_params(logical_axes, kw["rules"], logical_axes=logical_axes)
    dims = jax.tree.map(
        lambda pl: (optax.contrib.MuonDimensionNumbers(pl.in_axes, pl.out_axes)
                    if pl.group == "muon" else None), plans)
    unit = optax.contrib.muon(-1.0, ns_steps=kw["ns_steps"], beta=kw["momentum"],
                              nesterov=kw["nesterov"], eps=1e-7, adam_b1=kw["adam_b1"],
                              adam_b2=kw["adam_b2"], adam_eps_root=0.0,
                              adam_learning_rate=-1.0, weight_decay=opt_cfg.weight_decay,
                              muon_weight_dimension_numbers=dims)
    return optax.chain(unit, scale_by_learning_rate(schedule))
