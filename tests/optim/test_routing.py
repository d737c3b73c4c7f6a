"""Routing on the real model: every parameter lands in the expected group with the right
matrix; run with -s to see the table."""

import jax
import pytest

from experiments.pretrain import get_config
from wallwm_jax.models.wallwm import init_params, param_logical_axes
from wallwm_jax.optim import DEFAULT_RULES, plan_params, routing_table

ADAMW_KERNELS = {"embedder", "vit/patch_embed", "duration_head", "action_out", "world_out",
                 "action_in", "state_in"}


@pytest.fixture(scope="module")
def tiny():
    cfg = get_config("size=tiny").model
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    logical = param_logical_axes(cfg)
    return cfg, shapes, plan_params(shapes, DEFAULT_RULES, logical_axes=logical)


def test_every_parameter_in_its_group(tiny):
    cfg, shapes, plans = tiny
    print("\n" + routing_table(plans, shapes))
    for plan, leaf in zip(jax.tree.leaves(plans), jax.tree.leaves(shapes), strict=True):
        module = plan.path.rsplit("/", 1)[0]
        expected = ("muon" if plan.path.endswith("/kernel") and module not in ADAMW_KERNELS
                    else "adamw")
        assert plan.group == expected, (plan.path, leaf.shape, plan.group)
        if plan.group == "adamw":
            assert leaf.ndim < 2 or not plan.path.endswith("/kernel") or module in ADAMW_KERNELS


def test_stacked_layers_and_heads_are_batch_axes(tiny):
    cfg, shapes, plans = tiny
    layer = lambda tree: tree["decoder"]["layers"]["backbone"]
    depth, width, heads, hd = cfg.depth, cfg.width, cfg.num_heads, cfg.head_dim
    kv = cfg.num_kv_heads
    expect = {  # name: (number of matrices, fan_in, fan_out)
        "query": (depth * heads, width, hd), "key": (depth * kv, width, hd),
        "out": (depth * heads, hd, width)}
    for name, (n, fan_in, fan_out) in expect.items():
        plan, shape = layer(plans)[name]["kernel"], layer(shapes)[name]["kernel"].shape
        assert plan.fans(shape) == (fan_in, fan_out), name
        assert len(plan.batch_axes) == 2 and plan.batch_axes[0] == 0, name
        assert shape[plan.batch_axes[0]] * shape[plan.batch_axes[1]] == n, name
    gate = layer(plans)["mlp"]["gate"]["kernel"]
    assert gate.batch_axes == (0,) and gate.fans((depth, width, cfg.mlp_dim)) == (width,
                                                                                cfg.mlp_dim)


def test_override_matrix_axes(tiny):
    _, shapes, _ = tiny
    plans = plan_params(shapes, DEFAULT_RULES,
                        matrix_axes=((r"backbone/query/kernel$", ((1,), (2, 3))),))
    q = plans["decoder"]["layers"]["backbone"]["query"]["kernel"]
    assert q.batch_axes == (0,) and q.in_axes == (1,) and q.out_axes == (2, 3)
