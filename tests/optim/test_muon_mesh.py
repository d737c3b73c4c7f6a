"""Muon on a mesh (FSDP over 8 fake devices) equals Muon on one device; batch axes are batch."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wallwm_jax.optim import muon, orthogonalize

LOGICAL = {
    "layers": {"mlp": {"kernel": P("layers", "embed", "mlp")},                  # 8 x (64, 32)
               "query": {"kernel": P("layers", "embed", "heads", "head_dim")},  # 2*4 x (64, 16)
               "out": {"kernel": P("layers", "heads", "head_dim", "embed")},    # 8 x (16, 64)
               "norm": {"scale": P("layers", "embed")}},
    "odd": {"kernel": P("layers", "embed", "mlp")},                             # 5 x (64, 24)
    "proj": {"kernel": P("embed", "mlp")},                                      # (64, 128)
}
SHAPES = {
    "layers": {"mlp": {"kernel": (8, 64, 32)}, "query": {"kernel": (2, 64, 4, 16)},
               "out": {"kernel": (2, 4, 16, 64)}, "norm": {"scale": (8, 64)}},
    "odd": {"kernel": (5, 64, 24)},
    "proj": {"kernel": (64, 128)},
}


def _tree(seed):
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    return jax.tree.map(lambda s: jax.random.normal(next(keys), s, jnp.float32), SHAPES,
                        is_leaf=lambda x: isinstance(x, tuple))


def _fsdp(mesh):
    to_mesh = lambda spec: NamedSharding(mesh, P(*("fsdp" if n == "embed" else None
                                                   for n in spec)))
    return jax.tree.map(to_mesh, LOGICAL)


def _run(tx, params, grads, shardings=None):
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    if shardings is not None:
        params = jax.device_put(params, shardings)
        grads = [jax.device_put(g, shardings) for g in grads]
    state = tx.init(params)
    for g in grads:
        updates, state = step(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state, step


def test_sharded_equals_unsharded_and_spreads_the_work():
    mesh = Mesh(np.array(jax.devices()[:8]), ("fsdp",))
    shardings = _fsdp(mesh)
    params, grads = _tree(0), [_tree(s) for s in (1, 2, 3)]
    kw = dict(weight_decay=0.1, ns_dtype="float32", logical_axes=LOGICAL)
    ref, _, _ = _run(muon(0.02, **kw), params, grads)
    tx = muon(0.02, shardings=shardings, **kw)
    got, state, step = _run(tx, params, grads, shardings)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, ref)
    # the state keeps the parameters' shardings (so Orbax saves it like the params)
    for leaf, sharding in zip(jax.tree.leaves(state.mu), jax.tree.leaves(shardings),
                              strict=True):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    hlo = step.lower(grads[0], state, got).compile().as_text()
    assert re.search(r"all-to-all", hlo), "stacked matrices should move by all-to-all"


def test_stacked_and_head_axes_are_batch_axes():
    params = _tree(4)
    stacks = {"mlp": (params["layers"]["mlp"]["kernel"], lambda x, i: x[i]),
              "query": (params["layers"]["query"]["kernel"],
                        lambda x, i: x[i // 4, :, i % 4, :]),
              "out": (params["layers"]["out"]["kernel"], lambda x, i: x[i // 4, i % 4])}
    tx = muon(1.0, momentum=0.0, nesterov=False, adjust_lr=None, ns_dtype="float32",
              logical_axes=LOGICAL)
    updates, _ = tx.update(params, tx.init(params), jax.tree.map(jnp.zeros_like, params))
    for name, (grad, take) in stacks.items():
        n = 8
        for i in range(n):
            want = -orthogonalize(take(grad, i), [(3.4445, -4.775, 2.0315)] * 5, dtype="float32")
            np.testing.assert_allclose(take(updates["layers"][name]["kernel"], i), want,
                                       atol=2e-6, err_msg=f"{name}[{i}]")
