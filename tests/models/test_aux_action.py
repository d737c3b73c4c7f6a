"""The auxiliary action head (`model.aux_action_weight`, docs/model.md): off, the model, its
parameters and its loss are exactly those of a config without the field; on, its MSE is logged
and its gradient reaches the vision tower on its own."""

import jax
import ml_collections
import numpy as np

from wallwm_jax.models import wallwm

NO_OTHER_TERMS = dict(action=0.0, caption=0.0, duration=0.0, world=0.0)


def _leaves(tree):
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_off_is_the_model_without_the_field(tiny_cfg, tiny_batch):
    assert tiny_cfg.aux_action_weight == 0.0  # the default
    before = ml_collections.ConfigDict(tiny_cfg.to_dict())
    del before.aux_action_weight, before.aux_action_steps  # a config from before the field
    params = wallwm.init_params(tiny_cfg, jax.random.key(0))
    old = wallwm.init_params(before, jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(old)
    want = _leaves(old)
    for name, value in _leaves(params).items():
        np.testing.assert_array_equal(value, want[name], err_msg=name)
    rng = jax.random.key(1)
    loss, metrics = wallwm.compute_loss(tiny_cfg, params, tiny_batch, rng)
    old_loss, old_metrics = wallwm.compute_loss(before, params, tiny_batch, rng)
    assert np.asarray(loss).tobytes() == np.asarray(old_loss).tobytes()
    assert sorted(metrics) == sorted(old_metrics) and "loss/aux_action" not in metrics


def test_on_logs_its_loss_and_its_gradient_reaches_the_tower(tiny_cfg, tiny_batch):
    tiny_cfg.dtype = "float32"
    tiny_cfg.aux_action_weight = 0.5
    tiny_cfg.aux_action_steps = 2
    params = wallwm.init_params(tiny_cfg, jax.random.key(0))
    head = params["aux_action_head"]
    n_img = (tiny_cfg.image_size // tiny_cfg.patch_size) ** 2
    assert head["from_tokens"]["kernel"].shape == (n_img, tiny_cfg.width, 2 * 4)
    rng = jax.random.key(1)
    loss, metrics = wallwm.compute_loss(tiny_cfg, params, tiny_batch, rng)
    weights = tiny_cfg.loss_weights
    rest = sum(weights[k] * metrics[f"loss/{k}"] for k in weights)
    np.testing.assert_allclose(loss, rest + 0.5 * metrics["loss/aux_action"], rtol=1e-6)
    # the head's MSE against the chunk's first two actions, recomputed from its prediction
    out = wallwm.WallWM(wallwm._frozen(tiny_cfg)).apply(
        {"params": params}, tiny_batch.obs, np.asarray(tiny_batch.actions), np.ones(4))
    err = np.mean((np.asarray(out["aux_actions"]) - tiny_batch.actions[:, :2]) ** 2, -1)
    mask = tiny_batch.action_mask[:, :2]
    np.testing.assert_allclose(metrics["loss/aux_action"], (err * mask).sum() / mask.sum(),
                               rtol=1e-5)

    # the auxiliary term alone (every other weight 0) moves the tower and to_backbone
    tiny_cfg.loss_weights = ml_collections.ConfigDict(NO_OTHER_TERMS)
    grads = jax.grad(lambda p: wallwm.compute_loss(tiny_cfg, p, tiny_batch, rng)[0])(params)
    for name, g in _leaves(grads["vit"]).items():
        assert np.abs(g).max() > 0, name
    assert not any(np.abs(g).max() for g in _leaves(grads["decoder"]).values())
    # and it is zero with the weight 0 (the same head, not in the loss)
    tiny_cfg.aux_action_weight = 0.0
    off = jax.grad(lambda p: wallwm.compute_loss(tiny_cfg, p, tiny_batch, rng)[0])(
        wallwm.init_params(tiny_cfg, jax.random.key(0)))
    assert not any(np.abs(g).max() for g in _leaves(off["vit"]).values())


def test_sampling_does_not_need_the_head(tiny_cfg, tiny_batch):
    """Inference reads no head parameter: sampling with and without them gives the same."""
    tiny_cfg.aux_action_weight = 1.0
    params = wallwm.init_params(tiny_cfg, jax.random.key(0))
    rng = jax.random.key(2)
    got = wallwm.sample_actions(tiny_cfg, params, tiny_batch.obs, rng, num_steps=2)
    off = ml_collections.ConfigDict(tiny_cfg.to_dict())
    off.aux_action_weight = 0.0
    bare = {k: v for k, v in params.items() if k != "aux_action_head"}
    want = wallwm.sample_actions(off, bare, tiny_batch.obs, rng, num_steps=2)
    np.testing.assert_array_equal(got["actions"], want["actions"])
