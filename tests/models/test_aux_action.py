"""The auxiliary action head (`model.aux_action_weight`, docs/model.md): off, the model, its
parameters and its loss are exactly those of a config without the field; on, its MSE against
the chunk's first actions is logged and its gradient reaches the vision tower on its own."""

import jax
import ml_collections
import numpy as np

from wallwm_jax.models import wallwm


def test_off_is_the_model_without_the_field(tiny_cfg, tiny_batch):
    """The same traced programs (init and loss) as a config from before the field: the same
    parameters and the same loss, bit for bit, at the cost of tracing, not compiling."""
    assert tiny_cfg.aux_action_weight == 0.0  # the default
    before = ml_collections.ConfigDict(tiny_cfg.to_dict())
    del before.aux_action_weight, before.aux_action_steps
    rng = jax.random.key(1)

    def programs(cfg):
        params = wallwm.abstract_params(cfg)
        init = jax.make_jaxpr(lambda r: wallwm.init_params(cfg, r))(rng)
        loss = jax.make_jaxpr(lambda p: wallwm.compute_loss(cfg, p, tiny_batch, rng))(params)
        return params, str(init), str(loss)

    (params, init, loss), (old_params, old_init, old_loss) = programs(tiny_cfg), programs(before)
    assert params == old_params
    assert init == old_init
    assert loss == old_loss and "aux" not in loss


def test_on_logs_its_loss_and_its_gradient_reaches_the_tower(tiny_cfg, tiny_batch):
    tiny_cfg.dtype = "float32"
    tiny_cfg.aux_action_weight = 0.5
    tiny_cfg.aux_action_steps = 2
    params = wallwm.init_params(tiny_cfg, jax.random.key(0))
    n_img = (tiny_cfg.image_size // tiny_cfg.patch_size) ** 2
    assert params["aux_action_head"]["from_tokens"]["kernel"].shape == (
        n_img, tiny_cfg.width, 2 * tiny_cfg.action_dim)
    rng = jax.random.key(1)

    def aux_term(vit, params):  # the auxiliary term alone, as a function of the tower
        _, metrics = wallwm.compute_loss(tiny_cfg, {**params, "vit": vit}, tiny_batch, rng)
        return metrics["loss/aux_action"], metrics

    step = jax.jit(jax.value_and_grad(aux_term, has_aux=True))
    (_, metrics), grads = step(params["vit"], params)
    weights = tiny_cfg.loss_weights
    rest = sum(weights[k] * metrics[f"loss/{k}"] for k in weights)
    np.testing.assert_allclose(metrics["loss"], rest + 0.5 * metrics["loss/aux_action"],
                               rtol=1e-6)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):  # every tower weight moves
        assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)

    # A head that reads nothing and predicts its bias b: its loss is the masked MSE of b
    # against the chunk's first two (normalised) actions.
    b = np.linspace(-1, 1, 2 * tiny_cfg.action_dim).astype(np.float32)
    head = jax.tree.map(np.zeros_like, params["aux_action_head"])
    head["from_tokens"]["bias"] = b
    (aux, _), _ = step(params["vit"], {**params, "aux_action_head": head})
    err = np.mean((b.reshape(2, -1)[None] - tiny_batch.actions[:, :2]) ** 2, -1)
    mask = tiny_batch.action_mask[:, :2]
    np.testing.assert_allclose(aux, (err * mask).sum() / mask.sum(), rtol=1e-5)
