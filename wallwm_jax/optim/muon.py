"""Muon for matrices (momentum orthogonalised by Newton–Schulz) and AdamW for the rest.

One Optax transform. Routing and matrix axes are in `routing.py`, the iteration in
`newton_schulz.py`, the spreading of that work over a mesh in `spread.py`.

Reference (Jordan 2024, for a weight W of shape (out, in)):
    m ← β·m + (1−β)·g;   u = (1−β)·g + β·m  (Nesterov) or m;   O = NS(u)
    W ← W·(1 − lr·wd) − lr·scale·O,  scale = √max(1, out/in)      ('original')
                                      or 0.2·√max(in, out)        ('match_rms_adamw', Liu 2025)
Flax kernels are (in, out), so `in`/`out` are read from the plan, not from the axis order.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from wallwm_jax.optim import newton_schulz, routing, spread

ADJUST_LR = ("original", "match_rms_adamw", None)


class MuonState(NamedTuple):
    """Optimizer state; `mu` has the params' structure, `nu` too (MaskedNode on Muon leaves)."""

    count: jax.Array  # int32 [], steps taken
    mu: Any  # Muon momentum / AdamW first moment
    nu: Any  # AdamW second moment


def _check_nonneg(name: str, value: Any) -> None:
    if callable(value):
        try:
            inspect.signature(value).bind(0)
        except TypeError:  # a schedule of the run (count, total_steps=...): checked where made
            return
        value = value(0)
    if isinstance(value, jax.core.Tracer):  # a schedule of a traced length
        return
    if not float(value) >= 0:  # also catches NaN
        raise ValueError(f"muon: {name}={value!r} must be >= 0")


def _lr_scale(adjust_lr: str | None, fan_in: int, fan_out: int) -> float:
    if adjust_lr == "original":
        return max(1.0, fan_out / fan_in) ** 0.5
    if adjust_lr == "match_rms_adamw":
        return 0.2 * max(fan_in, fan_out) ** 0.5
    return 1.0


def muon(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_coeffs: str | newton_schulz.Coeffs | Sequence[newton_schulz.Coeffs] = (
        3.4445, -4.775, 2.0315),
    eps: float = 1e-7,
    weight_decay: float = 0.0,
    adjust_lr: str | None = "original",
    ns_dtype: str = "bfloat16",
    rules: routing.Rules = routing.DEFAULT_RULES,
    logical_axes: Any = None,
    matrix_axes: routing.MatrixAxesRules = (),
    batch_axis_names: Sequence[str] = routing.BATCH_AXIS_NAMES,
    shardings: Any = None,
    spread_axes: Sequence[str] = ("fsdp",),
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float = 1e-8,
    adam_weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Muon on the parameters the `rules` send to 'muon', AdamW on the others.

    Args:
      learning_rate: Muon step size, a float or a schedule of the step count; a schedule
        also gets the update's extra keyword arguments (`learning_rate(count, total_steps=n)`
        when the update is called with `total_steps=n`).
      momentum, nesterov: β of the momentum EMA (no bias correction) and Nesterov on/off.
      ns_steps, ns_coeffs: Newton–Schulz steps and (a, b, c), or a preset name
        ('quintic', 'polar_express') or one (a, b, c) per step.
      eps: lower bound of the Frobenius norm the update is divided by before Newton–Schulz.
      weight_decay: decoupled, W ← W·(1 − lr·wd), on Muon parameters.
      adjust_lr: 'original', 'match_rms_adamw' or None (see the module docstring).
      ns_dtype: 'bfloat16' (bf16 matmul inputs, fp32 accumulation) or 'float32'.
      rules: ordered (regex over parameter path → 'muon' | 'adamw'), first match wins.
      logical_axes: optional tree like the params of PartitionSpecs of logical axis names
        (`param_logical_axes(model_cfg)`); names which axes are batch axes. When given, the
        routing is checked here rather than at `init`.
      matrix_axes: (regex → (fan-in axes, fan-out axes)) overrides; other axes are batch.
      batch_axis_names: logical axis names that are batch axes of the Muon matrices.
      shardings, spread_axes: optional tree like the params of their NamedShardings. Then
        the Newton–Schulz work on the matrices sharded over `spread_axes` is split over those
        mesh axes (an all-to-all there and back) instead of every device all-gathering every
        matrix, and the updates are constrained to the parameters' shardings.
      adam_*: AdamW settings for the non-Muon group; its learning rate defaults to
        `learning_rate`.
    """
    if adjust_lr not in ADJUST_LR:
        raise ValueError(f"muon: adjust_lr={adjust_lr!r} must be one of {ADJUST_LR}")
    _check_nonneg("learning_rate", learning_rate)
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    _check_nonneg("adam_learning_rate", adam_learning_rate)
    for name, value in (("weight_decay", weight_decay), ("adam_weight_decay", adam_weight_decay),
                        ("eps", eps), ("adam_eps", adam_eps)):
        _check_nonneg(name, value)
    for name, value in (("momentum", momentum), ("adam_b1", adam_b1), ("adam_b2", adam_b2)):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"muon: {name}={value!r} must be in [0, 1)")
    if ns_dtype not in newton_schulz.NS_DTYPES:
        raise ValueError(f"muon: ns_dtype={ns_dtype!r} must be one of {newton_schulz.NS_DTYPES}")
    schedule = newton_schulz.ns_schedule(ns_coeffs, ns_steps)
    routing.compile_rules(rules)
    if shardings is not None:
        mesh = jax.tree.leaves(shardings)[0].mesh
        missing = [a for a in spread_axes if a not in mesh.shape]
        if missing:
            raise ValueError(f"muon: spread_axes {missing} are not axes of the mesh "
                             f"{dict(mesh.shape)}")
    if logical_axes is not None:  # fail now, naming the parameter, not at the first step
        routing.plan_params(logical_axes, rules, logical_axes=logical_axes,
                            matrix_axes=matrix_axes, batch_axis_names=batch_axis_names)

    def plan(tree: Any) -> Any:
        return routing.plan_params(tree, rules, logical_axes=logical_axes,
                                   matrix_axes=matrix_axes, batch_axis_names=batch_axis_names)

    def init(params: Any) -> MuonState:
        plans = plan(params)
        mu = jax.tree.map(jnp.zeros_like, params)
        nu = jax.tree.map(lambda p, pl: jnp.zeros_like(p) if pl.group == "adamw"
                          else optax.MaskedNode(), params, plans)
        return MuonState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

    def update(grads: Any, state: MuonState, params: Any = None, **extra_args: Any):
        if params is None:
            raise ValueError("muon: update needs `params` (for weight decay)")
        plans = plan(params)
        lr = (learning_rate(state.count, **extra_args) if callable(learning_rate)
              else learning_rate)
        adam_lr = (adam_learning_rate(state.count, **extra_args) if callable(adam_learning_rate)
                   else adam_learning_rate)
        count = optax.safe_increment(state.count)

        flat_plans, treedef = jax.tree.flatten(plans)
        flat_g = treedef.flatten_up_to(grads)
        flat_p = treedef.flatten_up_to(params)
        flat_mu = treedef.flatten_up_to(state.mu)
        flat_nu = treedef.flatten_up_to(state.nu)
        new_mu, new_nu, updates = list(flat_mu), list(flat_nu), [None] * len(flat_plans)

        # Muon: momentum, then Newton–Schulz on all matrices at once (so a mesh can share it).
        muon_idx = [i for i, pl in enumerate(flat_plans) if pl.group == "muon"]
        directions = []
        for i in muon_idx:
            g = flat_g[i].astype(jnp.float32)
            m = momentum * flat_mu[i] + (1.0 - momentum) * g
            new_mu[i] = m
            directions.append((1.0 - momentum) * g + momentum * m if nesterov else m)
        flat_shardings = None if shardings is None else treedef.flatten_up_to(shardings)
        ortho = spread.orthogonalize_leaves(
            directions, [flat_plans[i] for i in muon_idx], schedule, eps=eps, dtype=ns_dtype,
            shardings=None if shardings is None else [flat_shardings[i] for i in muon_idx],
            spread_axes=tuple(spread_axes))
        for i, o in zip(muon_idx, ortho, strict=True):
            p = flat_p[i]
            scale = _lr_scale(adjust_lr, *flat_plans[i].fans(p.shape))
            updates[i] = (-lr * (weight_decay * p + scale * o)).astype(p.dtype)

        # AdamW (decoupled weight decay, bias-corrected moments).
        c1 = 1.0 - adam_b1 ** count.astype(jnp.float32)
        c2 = 1.0 - adam_b2 ** count.astype(jnp.float32)
        for i, pl in enumerate(flat_plans):
            if pl.group != "adamw":
                continue
            g, p = flat_g[i].astype(jnp.float32), flat_p[i]
            m = adam_b1 * flat_mu[i] + (1.0 - adam_b1) * g
            v = adam_b2 * flat_nu[i] + (1.0 - adam_b2) * jnp.square(g)
            new_mu[i], new_nu[i] = m, v
            step = (m / c1) / (jnp.sqrt(v / c2) + adam_eps)
            updates[i] = (-adam_lr * (step + adam_weight_decay * p)).astype(p.dtype)

        unflatten = treedef.unflatten
        return unflatten(updates), MuonState(count, unflatten(new_mu), unflatten(new_nu))

    return optax.GradientTransformationExtraArgs(init, update)

