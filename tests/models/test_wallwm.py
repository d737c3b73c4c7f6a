"""WALL-WM functional API: shapes, logical axes, training signal, caching, scan/loop, remat."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from wallwm_jax.models import wallwm
from wallwm_jax.models.wallwm import WallWM

AXIS_NAMES = {None, "embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "patch",
              "layers", "expert_embed", "expert_mlp"}


def test_every_param_has_logical_axes_of_its_rank(tiny_cfg):
    params = wallwm.init_params(tiny_cfg, jax.random.key(0))
    axes = wallwm.param_logical_axes(tiny_cfg)
    assert jax.tree.structure(params) == jax.tree.structure(
        axes, is_leaf=lambda x: isinstance(x, PartitionSpec))
    flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, PartitionSpec))
    for (path, p), spec in zip(jax.tree_util.tree_leaves_with_path(params), flat_axes,
                                   strict=True):
        name = jax.tree_util.keystr(path)
        assert p.dtype == jnp.float32, name
        assert isinstance(spec, PartitionSpec) and len(spec) == p.ndim, (name, spec, p.shape)
        assert set(spec) <= AXIS_NAMES, (name, spec)
        named = [a for a in spec if a is not None]
        assert len(named) == len(set(named)), (name, spec)  # a mesh axis can shard one dim
        if "decoder" in name and "layers" in name:
            assert spec[0] == "layers" and p.shape[0] == tiny_cfg.depth, name
        if "'blocks'" in name:
            assert spec[0] == "layers" and p.shape[0] == tiny_cfg.vit_depth, name


def test_output_shapes(tiny_cfg, tiny_batch):
    params = wallwm.init_params(tiny_cfg, jax.random.key(0))
    loss, metrics = jax.jit(functools.partial(wallwm.compute_loss, tiny_cfg))(
        params, tiny_batch, jax.random.key(1))
    assert set(metrics) == {"loss", "loss/action", "loss/caption", "loss/duration",
                            "loss/world"}
    chex.assert_shape(list(metrics.values()), ())
    assert np.isfinite(float(loss)) and float(loss) == float(metrics["loss"])

    b, cfg = tiny_batch.actions.shape[0], tiny_cfg
    out = jax.jit(functools.partial(wallwm.sample_actions, tiny_cfg, num_steps=3))(
        params, tiny_batch.obs, jax.random.key(2))
    chex.assert_shape(out["actions"], (b, cfg.max_event_len, cfg.action_dim))
    chex.assert_shape(out["duration_bin"], (b, 1))
    chex.assert_shape(out["action_events"], (b, cfg.max_event_len))
    assert not np.any(out["action_events"])  # event mode: every step in the given event
    chex.assert_shape(out["world"], (b, cfg.world_size, cfg.world_size, 3))
    assert out["duration_bin"].dtype == jnp.int32
    assert np.all(np.isfinite(out["actions"]))
    assert np.all(np.abs(out["world"]) <= 1.0)


def test_loss_decreases_on_fixed_batch(tiny_cfg, tiny_batch):
    params = wallwm.init_params(tiny_cfg, jax.random.key(0))
    opt = optax.adam(3e-3)
    rng = jax.random.key(1)  # fixed noise and t: a deterministic objective

    @jax.jit
    def step(params, opt_state):
        (loss, metrics), grads = jax.value_and_grad(
            functools.partial(wallwm.compute_loss, tiny_cfg), has_aux=True)(
            params, tiny_batch, rng)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    opt_state = opt.init(params)
    history = []
    for _ in range(30):
        params, opt_state, metrics = step(params, opt_state)
        history.append(jax.device_get(metrics))
    first, last = history[0], history[-1]
    assert np.isfinite(last["loss"])
    assert last["loss"] < 0.6 * first["loss"], (first, last)
    for term in ("action", "caption", "duration", "world"):
        assert last[f"loss/{term}"] < first[f"loss/{term}"], term


def test_cached_velocity_matches_joint_forward(tiny_cfg, tiny_batch):
    cfg = ml_collections.FrozenConfigDict(tiny_cfg)
    params = {"params": wallwm.init_params(tiny_cfg, jax.random.key(0))}
    model = WallWM(cfg)
    x_t = jax.random.normal(jax.random.key(4), tiny_batch.actions.shape)
    t = jnp.linspace(0.1, 0.9, x_t.shape[0])
    joint = model.apply(params, tiny_batch.obs, x_t, t)
    cache, heads = model.apply(params, tiny_batch.obs, method=WallWM.encode)
    cached = model.apply(params, tiny_batch.obs, cache, x_t, t, method=WallWM.velocity)
    assert float(jnp.abs(joint["velocity"]).max()) > 1e-3
    np.testing.assert_allclose(cached, joint["velocity"], atol=1e-5)
    np.testing.assert_allclose(heads["duration_logits"], joint["duration_logits"], atol=1e-5)
    np.testing.assert_allclose(heads["world"], joint["world"], atol=1e-5)


def _stack_loop_layers(loop_params, depth, vit_depth):
    """Loop layout (decoder/layers_i, vit/block_i) -> scan layout (decoder/layers,
    vit/blocks, leading layer dim)."""
    params = dict(loop_params)
    for group, loop_name, scan_name, n in (("decoder", "layers_", "layers", depth),
                                           ("vit", "block_", "blocks", vit_depth)):
        tree = dict(params[group])
        layers = [tree.pop(f"{loop_name}{i}") for i in range(n)]
        tree[scan_name] = jax.tree.map(lambda *x: jnp.stack(x), *layers)
        params[group] = tree
    return params


def test_scan_loop_and_remat_agree_and_action_loss_reaches_backbone(tiny_cfg, tiny_batch):
    # Action loss only: the gradient-continuous path (docs/model.md) must move the
    # backbone and the token embeddings, through the caption/instruction keys and values.
    tiny_cfg.loss_weights = ml_collections.ConfigDict(
        dict(action=1.0, caption=0.0, duration=0.0, world=0.0))
    loop_cfg = tiny_cfg.copy_and_resolve_references()
    loop_cfg.scan_layers = False
    loop_params = wallwm.init_params(loop_cfg, jax.random.key(0))
    scan_params = _stack_loop_layers(loop_params, tiny_cfg.depth, tiny_cfg.vit_depth)
    assert jax.tree.structure(scan_params) == jax.tree.structure(
        wallwm.init_params(tiny_cfg, jax.random.key(0)))

    def loss_and_grad(cfg, params):
        fn = functools.partial(wallwm.compute_loss, cfg)
        return jax.jit(jax.value_and_grad(lambda p: fn(p, tiny_batch, jax.random.key(1))[0]))(
            params)

    ref_loss, ref_grad = loss_and_grad(tiny_cfg, scan_params)
    loop_loss = jax.jit(functools.partial(wallwm.compute_loss, loop_cfg))(
        loop_params, tiny_batch, jax.random.key(1))[0]
    np.testing.assert_allclose(loop_loss, ref_loss, rtol=1e-5)
    assert float(jnp.abs(ref_grad["decoder"]["layers"]["backbone"]["key"]["kernel"]).max()) > 0
    assert float(jnp.abs(ref_grad["embedder"]["embedding"]).max()) > 0
    # Remat changes only what the backward pass stores, never the values.
    remat_cfg = tiny_cfg.copy_and_resolve_references()
    remat_cfg.remat_policy = "full"
    loss, grad = loss_and_grad(remat_cfg, scan_params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    chex.assert_trees_all_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_untied_caption_head_and_attention_switch(tiny_cfg, tiny_batch):
    untied = tiny_cfg.copy_and_resolve_references()
    untied.tie_embeddings = False
    params = wallwm.init_params(untied, jax.random.key(0))
    assert params["caption_head"]["kernel"].shape == (untied.width, untied.vocab_size)
    assert "caption_head" not in wallwm.init_params(tiny_cfg, jax.random.key(0))
    loss_fn = jax.jit(lambda p, cfg: wallwm.compute_loss(cfg, p, tiny_batch, jax.random.key(1)),
                      static_argnums=1)
    grads = jax.grad(lambda p: loss_fn(p, ml_collections.FrozenConfigDict(untied))[0])(params)
    assert float(jnp.abs(grads["caption_head"]["kernel"]).max()) > 0
    # "xla" is what "auto" picks on CPU: identical loss; an unknown name is refused by name.
    tied = wallwm.init_params(tiny_cfg, jax.random.key(0))
    xla = tiny_cfg.copy_and_resolve_references()
    xla.attention = "xla"
    np.testing.assert_array_equal(loss_fn(tied, ml_collections.FrozenConfigDict(xla))[0],
                                  loss_fn(tied, ml_collections.FrozenConfigDict(tiny_cfg))[0])
    xla.attention = "flash"
    with pytest.raises(ValueError, match="model.attention='flash'"):
        wallwm.init_params(xla, jax.random.key(0))


def test_two_cameras_share_the_vit_and_are_told_apart(tiny_cfg, tiny_batch):
    two = tiny_cfg.copy_and_resolve_references()
    two.cameras = 2
    params = wallwm.init_params(two, jax.random.key(0))
    assert params["vit"]["camera_embedding"].shape == (2, two.vit_width)
    image = np.asarray(tiny_batch.obs.image)
    swapped = np.stack([image, image[::-1]], axis=1)  # [B, 2, H, W, 3]
    obs = tiny_batch.obs.replace(image=swapped)
    model = WallWM(ml_collections.FrozenConfigDict(two))
    tokens = model.apply({"params": params}, obs.image, method=lambda m, x: m.vit(x))
    n = (two.image_size // two.patch_size) ** 2
    assert tokens.shape == (image.shape[0], 2 * n, two.width)
    # Same pixels through camera 0 vs camera 1 differ only by the camera embedding.
    assert not np.allclose(tokens[0, :n], tokens[-1, n:])
    loss, _ = wallwm.compute_loss(two, params, tiny_batch.replace(obs=obs), jax.random.key(1))
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="model.cameras=2"):
        wallwm.compute_loss(two, params, tiny_batch, jax.random.key(1))
