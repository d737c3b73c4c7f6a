"""Mesh construction and batch sharding on 8 fake CPU devices."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from wallwm_jax import sharding


def mesh_cfg(**sizes):
    return ml_collections.ConfigDict(dict(dict(data=-1, fsdp=1, tensor=1), **sizes))


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(("sizes", "want"), [
    (dict(), (8, 1, 1)),
    (dict(data=2, fsdp=-1), (2, 4, 1)),
    (dict(data=1, fsdp=4, tensor=2), (1, 4, 2)),
])
def test_mesh_shape_resolves_minus_one(sizes, want):
    assert sharding.mesh_shape(mesh_cfg(**sizes), 8) == want


@pytest.mark.parametrize("sizes", [dict(data=-1, fsdp=-1), dict(data=3), dict(data=2, fsdp=2),
                                   dict(data=0)])
def test_bad_mesh_is_rejected_with_axis_names(sizes):
    with pytest.raises(ValueError, match="mesh"):
        sharding.mesh_shape(mesh_cfg(**sizes), 8)


def test_global_batch_is_split_over_data_and_fsdp():
    mesh = sharding.make_mesh(mesh_cfg(data=2, fsdp=4))
    local = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    out = sharding.global_batch(local, mesh)["x"]
    assert out.shape == (16, 3)
    assert out.sharding.spec == PartitionSpec(("data", "fsdp"))
    shard_rows = sorted(int(s.data[0, 0]) // 3 for s in out.addressable_shards)
    assert shard_rows == list(range(0, 16, 2))  # 8 shards of 2 rows each
    np.testing.assert_array_equal(np.asarray(out), local["x"])


def test_logical_rules_map_params_to_mesh_axes():
    mesh = sharding.make_mesh(mesh_cfg(data=1, fsdp=4, tensor=2))
    rules = (("embed", "fsdp"), ("mlp", "tensor"))
    specs = {"w": PartitionSpec("embed", "mlp"), "b": PartitionSpec("mlp"),
             "n": PartitionSpec(None)}
    out = sharding.logical_to_sharding(specs, mesh, rules)
    assert out["w"].spec == PartitionSpec("fsdp", "tensor")
    assert out["b"].spec == PartitionSpec("tensor")
    assert out["n"].spec == PartitionSpec(None)


def test_indivisible_dimension_stays_replicated():
    mesh = sharding.make_mesh(mesh_cfg(data=1, fsdp=8))
    specs = {"a": PartitionSpec("embed", None), "b": PartitionSpec("embed", None)}
    shapes = {"a": jax.ShapeDtypeStruct((16, 3), np.float32),
              "b": jax.ShapeDtypeStruct((12, 3), np.float32)}
    out = sharding.logical_to_sharding(specs, mesh, (("embed", "fsdp"),), shapes)
    assert out["a"].spec == PartitionSpec("fsdp", None)
    assert out["b"].spec == PartitionSpec(None, None)  # 12 rows do not split 8 ways


def test_optimizer_state_follows_parameter_paths():
    import optax

    mesh = sharding.make_mesh(mesh_cfg(data=1, fsdp=4, tensor=2))
    params = {"w": jax.ShapeDtypeStruct((8, 8), np.float32),
              "v": jax.ShapeDtypeStruct((8, 8), np.float32)}
    specs = {"w": PartitionSpec("embed", "mlp"), "v": PartitionSpec("mlp", "embed")}
    shard = sharding.logical_to_sharding(specs, mesh, (("embed", "fsdp"), ("mlp", "tensor")),
                                         params)
    state = jax.eval_shape(optax.adam(1e-3).init, params)
    out = sharding.opt_state_sharding(state, params, shard, mesh)
    mu, nu = out[0].mu, out[0].nu
    # Same shape, different layouts: each moment must follow its own parameter.
    assert mu["w"].spec == PartitionSpec("fsdp", "tensor")
    assert mu["v"].spec == PartitionSpec("tensor", "fsdp")
    assert nu["v"].spec == PartitionSpec("tensor", "fsdp")
    assert out[0].count.spec == PartitionSpec()


def test_train_step_pins_activations_to_the_batch_axes():
    """The model's residual-stream constraints bind to the mesh inside the train step (and
    are inert outside it), so FSDP shards the batch rather than gathering activations."""
    from experiments.pretrain import get_config
    from wallwm_jax.train_step import make_train_step

    config = get_config("size=tiny")
    config.mesh.data, config.mesh.fsdp = 1, -1
    config.batch_size = 8
    fns = make_train_step(config, sharding.make_mesh(config.mesh))
    hlo = fns.update_fn.lower(fns.abstract_params, fns.abstract_state,
                              fns.abstract_batch).as_text()
    constrained = [line for line in hlo.splitlines() if "sharding_constraint" in line]
    assert constrained and all("fsdp" in line for line in constrained)
