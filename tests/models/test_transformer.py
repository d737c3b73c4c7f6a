"""Mixture-of-transformers decoder: staircase isolation and exact prefix K/V caching."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wallwm_jax.models.masks import staircase_mask, with_padding
from wallwm_jax.models.transformer import MoTDecoder

PREFIX, CAPTIONS, EVENTS = 3, (2, 2), [0, 0, 1, 1]
NV = PREFIX + sum(CAPTIONS)


def _setup(tiny_cfg, scan=True):
    tiny_cfg.scan_layers = scan
    cfg = ml_collections.FrozenConfigDict(tiny_cfg)
    rng = np.random.default_rng(0)
    x_vlm = jnp.asarray(rng.normal(size=(2, NV, cfg.width)), jnp.float32)
    x_act = jnp.asarray(rng.normal(size=(2, len(EVENTS), cfg.expert_width)), jnp.float32)
    pos = (jnp.broadcast_to(jnp.arange(NV), (2, NV)),
           jnp.broadcast_to(NV + jnp.arange(len(EVENTS)), (2, len(EVENTS))))
    mask = with_padding(staircase_mask(PREFIX, CAPTIONS, EVENTS), jnp.ones((2, NV + 4), bool))
    model = MoTDecoder(cfg)
    params = model.init(jax.random.key(0), x_vlm, x_act, pos, mask)
    return model, params, x_vlm, x_act, pos, mask


def test_later_caption_does_not_reach_earlier_event(tiny_cfg):
    model, params, x_vlm, x_act, pos, mask = _setup(tiny_cfg)
    h_vlm, h_act, _ = model.apply(params, x_vlm, x_act, pos, mask)
    x_vlm2 = x_vlm.at[:, PREFIX + CAPTIONS[0]:].add(1.0)  # change caption 1 only
    h_vlm2, h_act2, _ = model.apply(params, x_vlm2, x_act, pos, mask)
    np.testing.assert_array_equal(h_act2[:, :2], h_act[:, :2])  # event-0 steps: unchanged
    np.testing.assert_array_equal(h_vlm2[:, :PREFIX + CAPTIONS[0]], h_vlm[:, :PREFIX + 2])
    assert np.abs(h_act2[:, 2:] - h_act[:, 2:]).max() > 1e-3  # event-1 steps do see it


def test_cached_prefix_matches_joint_forward(tiny_cfg):
    for scan in (True, False):
        model, params, x_vlm, x_act, pos, mask = _setup(tiny_cfg.copy_and_resolve_references(),
                                                        scan)
        h_vlm, h_act, _ = model.apply(params, x_vlm, x_act, pos, mask)
        h_vlm_only, _, cache = model.apply(params, x_vlm, None, (pos[0], None),
                                           mask[:, :NV, :NV])
        assert cache[0].shape == (tiny_cfg.depth, 2, NV, tiny_cfg.num_kv_heads,
                                  tiny_cfg.head_dim)
        _, h_act_cached, _ = model.apply(params, None, x_act, (None, pos[1]), mask[:, NV:],
                                         cache)
        np.testing.assert_allclose(h_vlm_only, h_vlm, atol=1e-5)
        np.testing.assert_allclose(h_act_cached, h_act, atol=1e-5)
