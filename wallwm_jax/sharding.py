"""Device mesh and logical-axis sharding: config axis sizes and rule table -> NamedShardings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
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


def logical_rules(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """Config rule table -> the tuple-of-pairs form flax's logical partitioning expects."""
    out = []
    for rule in rules:
        name, axes = rule
        out.append((str(name), tuple(axes) if isinstance(axes, list | tuple) else axes))
    return tuple(out)


def logical_to_sharding(logical_specs: Any, mesh: Mesh,
                        rules: Sequence[Sequence[Any]]) -> Any:
    """Map a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, logical_rules(rules))


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
