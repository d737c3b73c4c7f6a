"""The seed and total_steps are inputs of one compiled train step (`RunInputs`), reused through a
caller-owned `StepCache`; the ahead-of-time compiled step takes the same four arguments."""

import jax
import numpy as np
from jax.sharding import Mesh

from experiments.pretrain import get_config
from wallwm_jax.models import wallwm
from wallwm_jax.optim.factory import learning_rate_schedule
from wallwm_jax.train_step import StepCache, make_train_step


def _config(seed: int, total_steps: int):
    config = get_config("size=tiny,mode=event")
    config.batch_size = 8
    config.seed, config.total_steps = seed, total_steps
    config.optimizer.warmup_steps = 2
    return config


def _batch(step):
    """A random batch with the step's abstract shapes, placed with its batch sharding."""
    rng = np.random.default_rng(0)

    def one(a):
        if np.issubdtype(a.dtype, np.floating):
            x = rng.standard_normal(a.shape).astype(a.dtype)
        elif a.dtype == np.bool_:
            x = np.ones(a.shape, bool)
        else:
            x = rng.integers(0, 4, a.shape).astype(a.dtype)
        return jax.device_put(x, a.sharding)

    return jax.tree.map(one, step.abstract_batch)


def _run(step, batch, n: int, update=None):
    """`n` updates from fresh weights (seed 0 init); returns (params, per-step lr, losses)."""
    params, state = step.init_fn(jax.random.PRNGKey(0))
    update = update or step.update_fn
    lrs, losses = [], []
    for _ in range(n):
        params, state, metrics = update(params, state, batch, step.run_inputs)
        lrs.append(float(metrics["lr"]))
        losses.append(float(metrics["loss"]))
    return jax.device_get(params), lrs, losses


def _mesh() -> Mesh:
    # One device: what is tested is the step's inputs, not its partitioning (every multi-device
    # training test runs the same step over 8 devices).
    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


def test_seed_and_length_are_inputs_of_one_program():
    jax.config.update("jax_threefry_partitionable", True)
    mesh, cache = _mesh(), StepCache()
    short, long_, other_seed = (make_train_step(_config(s, t), mesh, cache=cache)
                                for s, t in ((0, 6), (0, 60), (1, 6)))
    # One traced program for all three runs (the cache), three sets of run inputs.
    assert short.update_fn is long_.update_fn is other_seed.update_fn
    assert len(cache) == 1
    assert int(long_.run_inputs.total_steps) == 60
    batch = _batch(short)
    p_short, lr_short, loss_short = _run(short, batch, 4)
    _, lr_long, _ = _run(long_, batch, 4)
    p_seed, _, loss_seed = _run(other_seed, batch, 4)
    # The LR each update used follows the run's own schedule (the length is read at run time).
    assert lr_short == [float(short.lr_schedule(i, 6)) for i in range(4)]
    assert lr_long == [float(learning_rate_schedule(_config(0, 60).optimizer, 60)(i))
                       for i in range(4)]
    assert lr_short[3] != lr_long[3]
    # The seed reaches the step's flow noise/time key: same init and batch, another loss.
    assert loss_short[0] != loss_seed[0]
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p_short),
                                                        jax.tree.leaves(p_seed), strict=True))

    # Ahead-of-time: lower(...).compile() is called like the step and gives the same bits.
    compiled = short.update_fn.lower(*short.abstract_inputs).compile()
    assert compiled.memory_analysis() is not None
    p_aot, lr_aot, loss_aot = _run(short, batch, 4, update=compiled)
    assert lr_aot == lr_short and loss_aot == loss_short
    for a, b in zip(jax.tree.leaves(p_aot), jax.tree.leaves(p_short), strict=True):
        np.testing.assert_array_equal(a, b)


def test_program_fields_build_a_new_step_and_later_edits_do_not_leak():
    mesh, cache = _mesh(), StepCache()
    config = _config(0, 6)
    first = make_train_step(config, mesh, cache=cache)
    config.model.depth += 1  # edits after building: a different program, the first untouched
    deeper = make_train_step(config, mesh, cache=cache)
    assert deeper.update_fn is not first.update_fn
    assert wallwm.count_params(first.abstract_params) < wallwm.count_params(
        deeper.abstract_params)
    config.model.depth -= 1
    assert make_train_step(config, mesh, cache=cache).update_fn is first.update_fn
    # Without a cache nothing is kept: each call traces its own step.
    assert make_train_step(config, mesh).update_fn is not first.update_fn


def test_step_cache_drops_the_least_recently_used():
    cache = StepCache(max_size=2)
    cache.put("a", "step a")
    cache.put("b", "step b")
    assert cache.get("a") == "step a"  # now "b" is the least recently used
    cache.put("c", "step c")
    assert (cache.get("b"), cache.get("a"), cache.get("c"), len(cache)) == (
        None, "step a", "step c", 2)
