"""Device mesh and logical-axis sharding: config axis sizes and rule table -> NamedShardings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules: Sequence[Sequence[Any]],
                        shapes: Any = None) -> Any:
    """Map a pytree of logical PartitionSpecs to NamedShardings on `mesh`.

    The first rule naming a logical axis wins; a mesh axis is used at most once per array,
    size-1 mesh axes are dropped, and (when `shapes` is given) a dimension that the mesh
    axes do not divide stays replicated instead of failing at compile time.
    """
    table: dict[str, tuple[str, ...]] = {}
    for name, axes in rules:
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        table.setdefault(str(name), axes)

    def one(spec: PartitionSpec, leaf: Any = None) -> NamedSharding:
        dims = leaf.shape if leaf is not None else (None,) * len(spec)
        used: set[str] = set()
        out: list[Any] = []
        for name, dim in zip(spec, dims, strict=True):
            axes = tuple(a for a in table.get(name, ()) if a not in used and mesh.shape[a] > 1)
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


def opt_state_sharding(state_shapes: Any, param_shapes: Any, param_shardings: Any,
                       mesh: Mesh) -> Any:
    """Optimizer-state leaves get the sharding of the parameter whose path ends their own
    path (and whose shape they have); counts and other scalars are replicated."""
    by_path = {}
    for (path, leaf), s in zip(jax.tree_util.tree_flatten_with_path(param_shapes)[0],
                               jax.tree.leaves(param_shardings), strict=True):
        by_path[_keys(path)] = (tuple(leaf.shape), s)

    def one(path: Any, leaf: Any) -> NamedSharding:
        keys = _keys(path)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit and hit[0] == tuple(leaf.shape):
                return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, state_shapes)


def _keys(path: Any) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every data-parallel axis; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Per-host numpy batch -> one global jax.Array per leaf, sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
