"""Device mesh and sharding: config axis sizes -> mesh; `config.sharding_rules` -> one
`ShardingRules` placing parameters, activations and the batch; optimizer state like its params."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """Resolve the (data, fsdp, tensor) sizes; one axis may be -1 = all remaining devices."""
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]

    def named(values: list[int]) -> dict[str, int]:
        return dict(zip(MESH_AXES, values, strict=True))

    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {named(sizes)}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
        raise ValueError(f"mesh {named(sizes)} does not divide the "
                         f"{num_devices} available devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"mesh {named(sizes)} uses {int(np.prod(sizes))} "
                         f"devices, but {num_devices} are available")
    return tuple(sizes)


def make_mesh(mesh_cfg: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over the devices of all processes with axes ('data', 'fsdp', 'tensor')."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(mesh_cfg, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


# Batch axes when the rules name no `batch` (the config's default rule says the same).
DEFAULT_BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """`config.sharding_rules`, read once: an ordered table of (logical axis, mesh axes).

    One object places everything the train step touches: parameters (`params`, first rule
    naming a logical axis wins), the model's residual-stream constraints (`activations`, the
    `activation_*` rules) and the global batch (`batch`, the `batch` rule).
    """

    table: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_config(cls, rules: Sequence[Sequence[Any]] | ShardingRules | None) -> ShardingRules:
        """From `config.sharding_rules` ((name, "axis" | ("axis", ...) | None), ...); a
        `ShardingRules` is returned as it is, None gives the empty table."""
        if isinstance(rules, ShardingRules):
            return rules
        table = []
        for name, axes in rules or ():
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            table.append((str(name), axes))
        return cls(tuple(table))

    def mesh_axes(self, name: str) -> tuple[str, ...] | None:
        """The mesh axes of the first rule naming `name` (None when no rule names it)."""
        return next((axes for n, axes in self.table if n == name), None)

    def params(self, logical_specs: Any, mesh: Mesh, shapes: Any = None) -> Any:
        """A pytree of logical PartitionSpecs -> NamedShardings on `mesh`.

        A mesh axis is used at most once per array, size-1 mesh axes are dropped, and (when
        `shapes` is given) a dimension that the mesh axes do not divide stays replicated
        instead of failing at compile time.
        """

        def one(spec: PartitionSpec, leaf: Any = None) -> NamedSharding:
            dims = leaf.shape if leaf is not None else (None,) * len(spec)
            used: set[str] = set()
            out: list[Any] = []
            for name, dim in zip(spec, dims, strict=True):
                axes = tuple(a for a in self.mesh_axes(name) or () if a not in used
                             and mesh.shape[a] > 1)
                size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
                if axes and (dim is None or dim % size == 0):
                    used.update(axes)
                    out.append(axes[0] if len(axes) == 1 else axes)
                else:
                    out.append(None)
            return NamedSharding(mesh, PartitionSpec(*out))

        is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
        if shapes is None:
            return jax.tree.map(one, logical_specs, is_leaf=is_spec)
        return jax.tree.map(one, logical_specs, shapes, is_leaf=is_spec)

    def activations(self) -> tuple[tuple[str, Any], ...]:
        """The `activation_*` rules as flax logical-axis rules (`models.layers`'
        `activation_sharding` constrains the residual streams with them)."""
        return tuple((name, (axes[0] if len(axes) == 1 else axes) if axes else None)
                     for name, axes in self.table if name.startswith("activation_"))

    @property
    def batch_axes(self) -> tuple[str, ...]:
        """Mesh axes the leading (batch) axis of every batch leaf is split over."""
        axes = self.mesh_axes("batch")
        return DEFAULT_BATCH_AXES if axes is None else axes

    def batch(self, mesh: Mesh) -> NamedSharding:
        """Leading (batch) axis split over `batch_axes`; the rest replicated."""
        return NamedSharding(mesh, PartitionSpec(self.batch_axes or None))

    def batch_divisor(self, mesh: Mesh) -> int:
        """How many ways the batch is split: a global batch must be a multiple of it."""
        return int(np.prod([mesh.shape[a] for a in self.batch_axes]))


def logical_to_sharding(logical_specs: Any, mesh: Mesh,
                        rules: Sequence[Sequence[Any]] | ShardingRules,
                        shapes: Any = None) -> Any:
    """`ShardingRules.from_config(rules).params(logical_specs, mesh, shapes)`."""
    return ShardingRules.from_config(rules).params(logical_specs, mesh, shapes)


def opt_state_sharding(tx: Any, param_shapes: Any, param_shardings: Any) -> Any:
    """Shardings of `tx.init(params)`'s leaves, derived from the parameters' shardings.

    `tx.init` is traced (no arrays made) on parameters that carry their shardings in their
    types (JAX's explicit sharding mode), so each state leaf made from a parameter
    (`zeros_like`, a cast, ...) comes out with exactly that parameter's sharding, whatever
    the optax tree around it; counts and other leaves made from scratch are replicated.
    """
    mesh = jax.tree.leaves(param_shardings)[0].mesh
    explicit = Mesh(mesh.devices, mesh.axis_names,
                    axis_types=(AxisType.Explicit,) * len(mesh.axis_names))
    typed = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                          sharding=NamedSharding(explicit, s.spec)),
        param_shapes, param_shardings)
    state = jax.eval_shape(tx.init, typed)
    return jax.tree.map(
        lambda a: NamedSharding(mesh, a.sharding.spec if a.sharding is not None
                                else PartitionSpec()), state)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: Any, mesh: Mesh,
                 rules: Sequence[Sequence[Any]] | ShardingRules | None = None) -> Any:
    """Per-host numpy batch -> one global jax.Array per leaf, its leading axis split over the
    batch axes of `rules` (`config.sharding_rules` or a `ShardingRules`; default
    `DEFAULT_BATCH_AXES`)."""
    sharding = ShardingRules.from_config(rules).batch(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
