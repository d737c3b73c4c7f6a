"""Mesh construction, the sharding rules (params, activations, batch) and the optimizer
state's sharding on 8 fake CPU devices."""

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


def test_rules_place_batch_activations_and_params_from_one_table():
    mesh = sharding.make_mesh(mesh_cfg(data=2, fsdp=4))
    rules = sharding.ShardingRules.from_config((
        ("batch", "data"), ("activation_batch", ("data", "fsdp")), ("embed", "fsdp"),
        ("embed", "data")))
    assert sharding.ShardingRules.from_config(rules) is rules
    # The batch follows the `batch` rule (here: data only), not a fixed (data, fsdp).
    assert rules.batch(mesh).spec == PartitionSpec("data")
    assert rules.batch_divisor(mesh) == 2
    out = sharding.global_batch({"x": np.zeros((4, 3), np.float32)}, mesh, rules)["x"]
    assert out.sharding.spec == PartitionSpec("data")
    assert rules.activations() == (("activation_batch", ("data", "fsdp")),)
    # Parameters: the first rule naming a logical axis wins.
    w = rules.params({"w": PartitionSpec("embed", None)}, mesh)["w"]
    assert w.spec == PartitionSpec("fsdp", None)
    # Without a `batch` rule the batch is split over data and fsdp.
    assert sharding.ShardingRules.from_config(()).batch(mesh).spec == PartitionSpec(
        ("data", "fsdp"))


def test_optimizer_state_follows_each_parameter_not_its_shape():
    import optax

    mesh = sharding.make_mesh(mesh_cfg(data=1, fsdp=4, tensor=2))
    params = {"w": jax.ShapeDtypeStruct((8, 8), np.float32),
              "v": jax.ShapeDtypeStruct((8, 8), np.float32)}
    specs = {"w": PartitionSpec("embed", "mlp"), "v": PartitionSpec("mlp", "embed")}
    shard = sharding.logical_to_sharding(specs, mesh, (("embed", "fsdp"), ("mlp", "tensor")),
                                         params)
    out = sharding.opt_state_sharding(optax.adam(1e-3), params, shard)
    mu, nu = out[0].mu, out[0].nu
    # Same shape, different layouts: each moment must follow its own parameter.
    assert mu["w"].spec == PartitionSpec("fsdp", "tensor")
    assert mu["v"].spec == PartitionSpec("tensor", "fsdp")
    assert nu["v"].spec == PartitionSpec("tensor", "fsdp")
    assert out[0].count.spec == PartitionSpec()


MOMENTS = ("mu", "nu")  # the params-shaped fields of AdamW's, Muon's and optax Muon's states


@pytest.mark.parametrize("name", ["adamw", "muon", "optax_muon"])
def test_every_param_mirroring_state_leaf_has_its_parameters_sharding(name):
    """The tiny model on an 8-device (fsdp 4 x tensor 2) mesh: each moment leaf has the
    sharding of the parameter it mirrors; every other state leaf is replicated."""
    from experiments.pretrain import get_config
    from wallwm_jax.models import wallwm
    from wallwm_jax.optim.factory import learning_rate_schedule, make_optimizer
    from wallwm_jax.tree_names import path_name

    config = get_config("size=tiny,mode=event")
    config.optimizer.name = name
    mesh = sharding.make_mesh(mesh_cfg(data=1, fsdp=4, tensor=2))
    shapes = jax.eval_shape(lambda: wallwm.init_params(config.model, jax.random.key(0)))
    axes = wallwm.param_logical_axes(config.model)
    param_sh = sharding.ShardingRules.from_config(config.sharding_rules).params(axes, mesh,
                                                                                shapes)
    by_name = {path_name(p): s for p, s in jax.tree_util.tree_leaves_with_path(param_sh)}
    shape_of = {path_name(p): a.shape for p, a in jax.tree_util.tree_leaves_with_path(shapes)}
    assert len({s.spec for s in by_name.values()}) > 3  # fsdp, tensor, both, replicated
    tx = make_optimizer(config.optimizer, learning_rate_schedule(config.optimizer), axes,
                        param_sh)
    state = jax.eval_shape(tx.init, shapes)
    state_sh = sharding.opt_state_sharding(tx, shapes, param_sh)
    mirrored = 0
    for (path, leaf), got in zip(jax.tree_util.tree_leaves_with_path(state),
                                 jax.tree.leaves(state_sh), strict=True):
        names = [getattr(k, "name", None) for k in path]
        field = next((i for i, n in enumerate(names) if n in MOMENTS), None)
        if field is None:
            assert got.spec == PartitionSpec(), path_name(path)  # counts, optax's ns_coeffs
            continue
        param = path_name(path[field + 1:])
        assert leaf.shape == shape_of[param], path_name(path)
        assert got == by_name[param], (path_name(path), got, by_name[param])
        mirrored += 1
    assert mirrored >= len(by_name)  # every parameter has at least its first moment


def test_train_step_pins_activations_to_the_batch_axes():
    """The model's residual-stream constraints bind to the mesh inside the train step (and
    are inert outside it), so FSDP shards the batch rather than gathering activations."""
    from experiments.pretrain import get_config
    from wallwm_jax.train_step import make_train_step

    config = get_config("size=tiny")
    config.mesh.data, config.mesh.fsdp = 1, -1
    config.batch_size = 8
    fns = make_train_step(config, sharding.make_mesh(config.mesh))
    hlo = fns.update_fn.lower(*fns.abstract_inputs).as_text()
    constrained = [line for line in hlo.splitlines() if "sharding_constraint" in line]
    assert constrained and all("fsdp" in line for line in constrained)
