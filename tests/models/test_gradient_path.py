"""The action loss reaches the backbone weights (docs/model.md): jax.grad of the
flow-matching term w.r.t. backbone kernels is non-zero and matches central finite differences.

fp32 throughout (the model casts to float32 in several places, so x64 would not buy real
double precision): entries are chosen where the gradient is large, and the finite difference
uses eps = 1e-3 with a ~1e-2 relative tolerance.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wallwm_jax.models import wallwm

EPS = 1e-3
RTOL = 2e-2
# (decoder-layer path under params["decoder"]["layers"]["backbone"], layer index)
KERNELS = [(("key", "kernel"), 0), (("mlp", "up", "kernel"), 0), (("value", "kernel"), 1)]


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    if not path:
        return value
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def test_action_loss_gradient_wrt_backbone_matches_finite_differences(tiny_cfg, tiny_batch):
    tiny_cfg.loss_weights = ml_collections.ConfigDict(
        dict(action=1.0, caption=0.0, duration=0.0, world=0.0))
    tiny_cfg.dtype = "float32"
    params = wallwm.init_params(tiny_cfg, jax.random.key(0))
    rng = jax.random.key(1)  # same noise and t for every evaluation

    loss_fn = jax.jit(lambda p: wallwm.compute_loss(tiny_cfg, p, tiny_batch, rng)[0])
    grads = jax.jit(jax.grad(loss_fn))(params)

    for path, layer in KERNELS:
        full_path = ("decoder", "layers", "backbone", *path)
        stacked = _get(params, full_path)

        def fn(kernel, full_path=full_path, stacked=stacked, layer=layer):
            return float(loss_fn(_set(params, full_path, stacked.at[layer].set(kernel))))

        kernel = stacked[layer]
        grad = np.asarray(_get(grads, full_path)[layer])
        assert np.abs(grad).max() > 1e-4, (path, layer)
        # The entries with the largest |gradient| (well above fp32 round-off of the loss).
        for idx in np.argsort(-np.abs(grad).ravel())[:2]:
            index = np.unravel_index(idx, grad.shape)
            fd = (fn(kernel.at[index].add(EPS)) - fn(kernel.at[index].add(-EPS))) / (2 * EPS)
            np.testing.assert_allclose(grad[index], fd, rtol=RTOL, atol=1e-4,
                                       err_msg=f"{path} layer {layer} entry {index}")
        # Directional derivative along a random N(0, 1) direction covers every entry.
        direction = jax.random.normal(jax.random.key(7), kernel.shape)
        fd = (fn(kernel + EPS * direction) - fn(kernel - EPS * direction)) / (2 * EPS)
        analytic = float(jnp.vdot(grad, direction))
        assert abs(analytic) > 1e-5, (path, layer)
        np.testing.assert_allclose(analytic, fd, rtol=RTOL, atol=2e-4,
                                   err_msg=f"{path} layer {layer} directional")

    # The action expert reads only the backbone's keys/values: the last layer's backbone
    # MLP and query act after the last shared attention, so the action loss cannot reach them.
    last = tiny_cfg.depth - 1
    backbone = grads["decoder"]["layers"]["backbone"]
    assert float(jnp.abs(backbone["mlp"]["up"]["kernel"][last]).max()) == 0.0
    assert float(jnp.abs(backbone["query"]["kernel"][last]).max()) == 0.0
    assert float(jnp.abs(backbone["key"]["kernel"][last]).max()) > 0.0
