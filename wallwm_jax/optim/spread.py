"""Newton–Schulz for many parameters at once, with the work spread over a mesh.

Left to itself, XLA runs Newton–Schulz on an FSDP-sharded matrix by all-gathering it on every
device, so each device orthogonalises every matrix. Here, matrices of the same (oriented)
shape from all parameters are stacked into one [B, m, n] array whose B axis is then sharded
over `spread_axes`: moving a matrix from "rows split over devices" to "whole, on one device"
is an all-to-all, each device runs Newton–Schulz on B/D matrices, and a second all-to-all puts
the results back in the parameters' sharding. Per device that moves 2·⌈B/D⌉ matrices instead
of gathering B, so a stack is spread only when 2·⌈B/D⌉ < B.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from wallwm_jax.optim.newton_schulz import Coeffs, orthogonalize
from wallwm_jax.optim.routing import LeafPlan


def to_stack(x: jax.Array, plan: LeafPlan) -> jax.Array:
    """x (any layout) -> [B, m, n] with m ≤ n: batch axes first, fan-in × fan-out, made wide."""
    perm = plan.batch_axes + plan.in_axes + plan.out_axes
    fan_in, fan_out = plan.fans(x.shape)
    n_batch = math.prod(x.shape[a] for a in plan.batch_axes)
    stack = jnp.transpose(x, perm).reshape(n_batch, fan_in, fan_out)
    return jnp.swapaxes(stack, 1, 2) if fan_in > fan_out else stack


def from_stack(stack: jax.Array, plan: LeafPlan, shape: Sequence[int]) -> jax.Array:
    """Inverse of `to_stack` for a parameter of this shape."""
    perm = plan.batch_axes + plan.in_axes + plan.out_axes
    fan_in, fan_out = plan.fans(shape)
    if fan_in > fan_out:
        stack = jnp.swapaxes(stack, 1, 2)
    x = stack.reshape([shape[a] for a in perm])
    return jnp.transpose(x, np.argsort(perm))


def _sharded_over(sharding: Any, axes: Sequence[str]) -> bool:
    if not isinstance(sharding, NamedSharding):
        return False
    used = set()
    for entry in sharding.spec:
        used.update(entry if isinstance(entry, tuple) else (entry,))
    return bool(used & set(axes))


def orthogonalize_leaves(xs: Sequence[jax.Array], plans: Sequence[LeafPlan],
                         schedule: Sequence[Coeffs], *, eps: float, dtype: str,
                         shardings: Sequence[Any] | None = None,
                         spread_axes: Sequence[str] = ("fsdp",)) -> list[jax.Array]:
    """Newton–Schulz of every matrix of every leaf; returns leaves in their own layout.

    shardings: the NamedSharding of each leaf (or None for all); leaves sharded over a
    spread axis are stacked by shape and spread; the others are done where they are.
    """
    # bf16 Newton–Schulz rounds its input to bf16 anyway: do it first, so moves are half-size.
    stacks = [to_stack(x.astype(dtype), pl) for x, pl in zip(xs, plans, strict=True)]
    out = [None] * len(xs)
    spread_idx: dict[tuple[int, ...], list[int]] = defaultdict(list)
    mesh = None
    for i, stack in enumerate(stacks):
        if shardings is not None and _sharded_over(shardings[i], spread_axes):
            mesh = shardings[i].mesh
            spread_idx[(*stack.shape[1:], stack.dtype)].append(i)
        else:
            out[i] = orthogonalize(stack, schedule, eps=eps, dtype=dtype)
    n_dev = 1 if mesh is None else math.prod(mesh.shape[a] for a in spread_axes)
    for idx in spread_idx.values():
        total = sum(stacks[i].shape[0] for i in idx)
        per_device = -(-total // n_dev)
        if 2 * per_device >= total:
            # Too few matrices to share: gather each once (else XLA may gather per iteration).
            whole = NamedSharding(mesh, P())
            for i in idx:
                out[i] = jax.lax.with_sharding_constraint(orthogonalize(
                    jax.lax.with_sharding_constraint(stacks[i], whole), schedule, eps=eps,
                    dtype=dtype), whole)
            continue
        pad = per_device * n_dev - total
        parts = [stacks[i] for i in idx]
        if pad:  # zero matrices stay zero (the norm is clamped by eps)
            parts.append(jnp.zeros((pad, *parts[0].shape[1:]), parts[0].dtype))
        spread = NamedSharding(mesh, P(tuple(spread_axes), None, None))
        big = jax.lax.with_sharding_constraint(jnp.concatenate(parts, axis=0), spread)
        big = jax.lax.with_sharding_constraint(
            orthogonalize(big, schedule, eps=eps, dtype=dtype), spread)
        start = 0
        for i in idx:
            out[i] = big[start:start + stacks[i].shape[0]]
            start += stacks[i].shape[0]
    results = [from_stack(o, pl, x.shape).astype(x.dtype)
               for o, pl, x in zip(out, plans, xs, strict=True)]
    if shardings is not None:
        results = [r if s is None else jax.lax.with_sharding_constraint(r, s)
                   for r, s in zip(results, shardings, strict=True)]
    return results
