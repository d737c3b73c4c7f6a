"""Which optimizer group each parameter joins, and which of its axes form the Muon matrix.

Routing is a short ordered table of (regex over the parameter path → group), first match
wins, as big_vision does for sharding. A path is the '/'-joined dict keys of the leaf, e.g.
`decoder/layers/backbone/query/kernel`.

Matrix axes. Flax kernels are `(inputs..., outputs...)`. Axes named in `batch_axis_names`
(the `layers` axis nn.scan adds, attention `heads`/`kv_heads`) are batch axes: each slice is its
own matrix, never flattened into one. Of the other axes the last is fan-out and the rest are
fan-in. So the query kernel `(layers, embed, heads, head_dim)` is layers·heads matrices of
`embed × head_dim`, and the out-projection `(layers, heads, head_dim, embed)` is layers·heads
matrices of `head_dim × embed`. Without logical names the last two axes form the matrix and
leading axes are batch. `matrix_axes` overrides both: (regex → (fan-in axes, fan-out axes)).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import PartitionSpec

from wallwm_jax.tree_names import path_name

GROUPS = ("muon", "adamw")

# AdamW: embeddings (modules named *embed*), output heads (`*_head`, `action_out`,
# `world_out`), projections of raw low-dimensional inputs (`action_in`, `state_in`: they act
# as embeddings of 4-D vectors), and all that is not a kernel. Muon: every other kernel.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    (r"(^|/)[^/]*embed[^/]*/", "adamw"),
    (r"(^|/)((\w+_)?head|logits|action_out|world_out)/", "adamw"),
    (r"(^|/)(action_in|state_in)/", "adamw"),
    (r"(^|/)kernel$", "muon"),
    (r".*", "adamw"),
)
BATCH_AXIS_NAMES: tuple[str, ...] = ("layers", "heads", "kv_heads")

Rules = Sequence[tuple[str, str]]
MatrixAxesRules = Sequence[tuple[str, tuple[Sequence[int], Sequence[int]]]]


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """How one parameter is optimised. Axes index the parameter's own shape."""

    path: str
    group: str
    batch_axes: tuple[int, ...] = ()
    in_axes: tuple[int, ...] = ()
    out_axes: tuple[int, ...] = ()

    def fans(self, shape: Sequence[int]) -> tuple[int, int]:
        """(fan_in, fan_out) of one matrix of a parameter with this shape."""
        return (math.prod(shape[a] for a in self.in_axes),
                math.prod(shape[a] for a in self.out_axes))


def _is_spec(x: Any) -> bool:
    return x is None or isinstance(x, PartitionSpec) or (
        isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x))


def compile_rules(rules: Rules, name: str = "rules") -> tuple[tuple[re.Pattern, str], ...]:
    """Check a (regex, group) table and compile it; errors name the bad entry."""
    out = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
            raise ValueError(f"muon: {name}[{i}]={rule!r} must be a (regex, group) pair")
        pattern, group = rule
        if group not in GROUPS:
            raise ValueError(f"muon: {name}[{i}] sends '{pattern}' to group '{group}'; "
                             f"expected one of {GROUPS}")
        try:
            out.append((re.compile(pattern), group))
        except re.error as e:
            raise ValueError(f"muon: {name}[{i}] has a bad regex '{pattern}': {e}") from e
    return tuple(out)


def _plan_leaf(path: str, ndim: int, names: Sequence[str | None] | None,
               rules: Sequence[tuple[re.Pattern, str]], matrix_axes: MatrixAxesRules,
               batch_axis_names: Sequence[str]) -> LeafPlan:
    rule = next(((p, g) for p, g in rules if p.search(path)), None)
    if rule is None or rule[1] == "adamw":
        return LeafPlan(path, "adamw")
    override = next((axes for pattern, axes in matrix_axes if re.search(pattern, path)), None)
    if override is not None:
        in_axes = tuple(sorted(a % ndim for a in override[0]))
        out_axes = tuple(sorted(a % ndim for a in override[1]))
        if set(in_axes) & set(out_axes):
            raise ValueError(f"muon: matrix_axes for '{path}' uses an axis as both fan-in and "
                             f"fan-out: {override}")
        used = set(in_axes) | set(out_axes)
        batch = tuple(a for a in range(ndim) if a not in used)
    elif names is not None:
        batch = tuple(a for a, n in enumerate(names) if n in batch_axis_names)
        matrix = [a for a in range(ndim) if a not in batch]
        in_axes, out_axes = tuple(matrix[:-1]), tuple(matrix[-1:])
    else:
        batch, in_axes, out_axes = tuple(range(ndim - 2)), (ndim - 2,), (ndim - 1,)
    if ndim < 2 or not in_axes or not out_axes:
        raise ValueError(
            f"muon: rule '{rule[0].pattern}' sends parameter '{path}' (rank {ndim}, axes "
            f"{tuple(names) if names is not None else 'unnamed'}) to Muon, but it has no "
            "2-D matrix (fan-in × fan-out) besides batch axes; route it to 'adamw'")
    # The batch axes lead, so a matrix's batch index is a row-major index over them.
    return LeafPlan(path, "muon", batch, in_axes, out_axes)


def plan_params(shapes: Any, rules: Rules, *, logical_axes: Any = None,
                matrix_axes: MatrixAxesRules = (),
                batch_axis_names: Sequence[str] = BATCH_AXIS_NAMES) -> Any:
    """A tree of `LeafPlan`, one per leaf of `shapes` (arrays, ShapeDtypeStructs or specs).

    `logical_axes`: optional tree like `shapes` of PartitionSpecs / tuples of logical names.
    A leaf of `shapes` may itself be a logical spec, whose length is then the rank.
    """
    compiled = compile_rules(rules)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_spec)
    if logical_axes is None:
        names = [None] * len(leaves)
    else:
        names = treedef.flatten_up_to(logical_axes)
    plans = []
    for (key_path, leaf), leaf_names in zip(leaves, names, strict=True):
        path = path_name(key_path)
        ndim = len(leaf) if _is_spec(leaf) else len(leaf.shape)
        if leaf_names is not None and len(leaf_names) != ndim:
            raise ValueError(f"muon: logical axes {tuple(leaf_names)} of '{path}' do not match "
                             f"its rank {ndim}")
        plans.append(_plan_leaf(path, ndim, leaf_names, compiled, matrix_axes,
                                batch_axis_names))
    return treedef.unflatten(plans)


def routing_table(plans: Any, shapes: Any) -> str:
    """A readable table: path, shape, group, and for Muon the batch × (fan_in × fan_out)."""
    rows = []
    for plan, leaf in zip(jax.tree.leaves(plans), jax.tree.leaves(shapes), strict=True):
        shape = tuple(leaf.shape)
        if plan.group == "muon":
            fan_in, fan_out = plan.fans(shape)
            n = math.prod(shape[a] for a in plan.batch_axes)
            detail = f"{n} x ({fan_in} x {fan_out})"
        else:
            detail = ""
        rows.append((plan.path, str(shape), plan.group, detail))
    width = max((len(r[0]) for r in rows), default=4)
    return "\n".join(f"{p:<{width}}  {s:<22} {g:<6} {d}" for p, s, g, d in rows)
