"""`make_optimizer`: one optimizer whose update reads the run's length (`total_steps=`), with the
same state and the same numbers as the optax optimizers built for that length."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from wallwm_jax.optim.factory import learning_rate_schedule, make_optimizer, muon_settings
from wallwm_jax.optim.routing import plan_params

LOGICAL = {"mlp": {"kernel": P("embed", "mlp"), "bias": P("mlp")},
           "token_embed": {"embedding": P("vocab", "embed")}}
SHAPES = {"mlp": {"kernel": (16, 24), "bias": (24,)}, "token_embed": {"embedding": (10, 16)}}


def _opt_cfg(name: str, **extra) -> ml_collections.ConfigDict:
    fields = dict(name=name, learning_rate=0.02, warmup_steps=2, weight_decay=0.1,
                  grad_clip=1.0, b1=0.9, b2=0.95, eps=1e-8,
                  muon=dict(momentum=0.95, nesterov=True, ns_steps=5, ns_dtype="float32",
                            adjust_lr="original", rules=()))
    return ml_collections.ConfigDict(dict(fields, **extra))


def _tree(seed: int):
    keys = iter(jax.random.split(jax.random.key(seed), 8))
    return jax.tree.map(lambda s: jax.random.normal(next(keys), s, jnp.float32), SHAPES,
                        is_leaf=lambda x: isinstance(x, tuple))


def _reference(opt_cfg, total_steps):
    """The optax optimizer of a fixed length, as the train step built it inside the update."""
    schedule = learning_rate_schedule(opt_cfg, total_steps)
    if opt_cfg.name == "adamw":
        base = optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                           weight_decay=opt_cfg.weight_decay)
    else:
        kw = muon_settings(opt_cfg)
        plans = plan_params(LOGICAL, kw["rules"], logical_axes=LOGICAL)
        dims = jax.tree.map(lambda pl: (optax.contrib.MuonDimensionNumbers(
            pl.in_axes, pl.out_axes) if pl.group == "muon" else None), plans)
        base = optax.contrib.muon(schedule, ns_steps=kw["ns_steps"], beta=kw["momentum"],
                                  nesterov=kw["nesterov"], eps=1e-7, adam_b1=kw["adam_b1"],
                                  adam_b2=kw["adam_b2"], adam_eps_root=0.0,
                                  weight_decay=opt_cfg.weight_decay,
                                  muon_weight_dimension_numbers=dims)
    return optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip), base)


def _train(update, state, n: int = 5):
    params = _tree(0)
    for i in range(n):
        updates, state = update(_tree(i + 1), state, params, jnp.int32(7))
        params = optax.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("name", ["adamw", "optax_muon"])
def test_run_length_as_an_input_gives_the_fixed_length_optimizers_numbers(name):
    opt_cfg = _opt_cfg(name)
    tx = make_optimizer(opt_cfg, learning_rate_schedule(opt_cfg), LOGICAL)
    ours, state = _train(jax.jit(lambda g, s, p, n: tx.update(g, s, p, total_steps=n)),
                         tx.init(_tree(0)))
    ref, ref_state = _train(jax.jit(lambda g, s, p, n: _reference(opt_cfg, n).update(g, s, p)),
                            _reference(opt_cfg, 7).init(_tree(0)))
    jax.tree.map(np.testing.assert_array_equal, ours, ref)
    if name == "adamw":  # the same state as optax.adamw: checkpoints restore either way
        assert jax.tree.structure(state) == jax.tree.structure(ref_state)


@pytest.mark.parametrize("name", ["adamw", "muon", "optax_muon"])
def test_one_optimizer_serves_any_length(name):
    opt_cfg = _opt_cfg(name, freeze=())
    tx = make_optimizer(opt_cfg, learning_rate_schedule(opt_cfg), LOGICAL)
    fixed = make_optimizer(opt_cfg, 7, LOGICAL)  # an int is the length, bound
    params, grads = _tree(0), _tree(1)
    state = tx.init(params)
    for _ in range(3):  # past the warmup, where the length matters
        state = tx.update(grads, state, params, total_steps=7)[1]
    short, _ = tx.update(grads, state, params, total_steps=7)
    long_, _ = tx.update(grads, state, params, total_steps=700)
    bound, _ = fixed.update(grads, state, params)
    jax.tree.map(np.testing.assert_array_equal, short, bound)
    assert not np.array_equal(short["mlp"]["bias"], long_["mlp"]["bias"])


def test_freeze_passes_the_length_through():
    opt_cfg = _opt_cfg("muon", freeze=("vit",))
    tx = make_optimizer(opt_cfg, learning_rate_schedule(opt_cfg), LOGICAL)
    params = _tree(0)
    updates, _ = tx.update(_tree(1), tx.init(params), params, total_steps=7)
    assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_schedule_takes_the_length_as_an_argument():
    opt_cfg = _opt_cfg("adamw")
    schedule = learning_rate_schedule(opt_cfg)
    assert float(schedule(2, 100)) == pytest.approx(0.02)  # the peak, after 2 warmup steps
    assert float(schedule(100, 100)) == pytest.approx(0.002)  # 10% at the end
    assert float(learning_rate_schedule(opt_cfg, 100)(50)) == float(schedule(50, 100))
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        learning_rate_schedule(_opt_cfg("adamw", learning_rate=0.0))
