"""Freezing parts of the model during fine-tuning (`optimizer.freeze`, experiments/finetune.py).

A frozen parameter gets a zero gradient before the optimizer (so clipping and moments ignore
it) and a zero update after it (so weight decay cannot move it): it stays bitwise as loaded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from wallwm_jax.tree_names import path_name

# Part name -> regex over the flat parameter name ("vit/...", "decoder/layers/backbone/...").
FREEZE_GROUPS = {
    "vit": r"^vit/",
    "backbone": r"^embedder/|/backbone/|^decoder/backbone_norm/",
}


def frozen_mask(params: Any, parts: Sequence[str]) -> Any:
    """bool per leaf of `params`: whether it belongs to one of `parts` (FREEZE_GROUPS)."""
    unknown = [p for p in parts if p not in FREEZE_GROUPS]
    if unknown:
        raise ValueError(f"optimizer.freeze={tuple(parts)}: unknown part(s) {unknown}; "
                         f"expected some of {sorted(FREEZE_GROUPS)}")
    pattern = re.compile("|".join(f"(?:{FREEZE_GROUPS[p]})" for p in parts)) if parts else None

    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(pattern and pattern.search(path_name(path))), params)


def freeze(inner: optax.GradientTransformation,
           parts: Sequence[str]) -> optax.GradientTransformationExtraArgs:
    """`inner` with the parameters of `parts` held fixed (extra update arguments such as
    `total_steps` pass through to it)."""
    parts = tuple(parts)
    frozen_mask({}, parts)  # reject unknown parts when the optimizer is built

    def zero(tree: Any) -> Any:
        mask = frozen_mask(tree, parts)
        return jax.tree.map(lambda u, m: jnp.zeros_like(u) if m else u, tree, mask)

    inner = optax.with_extra_args_support(inner)

    def update(updates: Any, state: Any, params: Any = None, **extra_args: Any
               ) -> tuple[Any, Any]:
        updates, state = inner.update(zero(updates), state, params, **extra_args)
        return zero(updates), state

    return optax.GradientTransformationExtraArgs(inner.init, update)
