"""The vision tower's keypoint read-out (model.vision_readout): spatial-softmax arithmetic and
where the keypoint tokens sit among the image tokens."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wallwm_jax.models.vit import ViT, spatial_softmax


def _reference(logits: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Loops: sum over cells of softmax weight x cell centre, x from the column, y the row."""
    n, h, w, k = logits.shape
    out = np.zeros((n, k, 2))
    for i in range(n):
        for c in range(k):
            z = logits[i, :, :, c] * scale[c]
            p = np.exp(z - z.max())
            p /= p.sum()
            for r in range(h):
                for q in range(w):
                    out[i, c] += p[r, q] * np.array([(2 * q + 1) / w - 1, (2 * r + 1) / h - 1])
    return out


def _assert_named(params) -> None:
    """Every param carries one logical axis name per dim (the sharding rules zip them)."""
    for leaf in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        assert isinstance(leaf, nn.Partitioned) and len(leaf.names) == leaf.value.ndim


def test_spatial_softmax_matches_loops_and_places_peaks():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    scale = np.array([1.0, 0.5, 2.0, 0.0], np.float32)
    got = np.asarray(spatial_softmax(jnp.asarray(logits), jnp.asarray(scale)))
    np.testing.assert_allclose(got, _reference(logits, scale), atol=1e-5)
    np.testing.assert_allclose(got[:, 3], 0.0, atol=1e-6)  # scale 0: uniform -> the centre

    peak = np.full((1, 4, 6, 2), -1e4, np.float32)
    peak[0, 1, 4, 0] = 0.0  # row 1, column 4 of a 4 x 6 grid
    peak[0, 0, 0, 1] = peak[0, 3, 0, 1] = 0.0  # two equal peaks: their midpoint
    got = np.asarray(spatial_softmax(jnp.asarray(peak)))
    np.testing.assert_allclose(got[0, 0], [9 / 6 - 1, 3 / 4 - 1], atol=1e-6)
    np.testing.assert_allclose(got[0, 1], [1 / 6 - 1, 0.0], atol=1e-6)


def test_pixel_keypoints_find_a_red_pixel_and_follow_each_camera():
    """Weights set by hand so keypoint 0 is a red-pixel detector: its token's first two
    features are the pixel's (x, y), one token block per camera after its 36 patches."""
    vit = ViT(patch_size=8, width=8, depth=1, num_heads=2, mlp_dim=16, out_width=8, cameras=2,
              readout="pixel_keypoints", keypoints=3)
    image = np.zeros((1, 2, 48, 48, 3), np.uint8)
    image[0, 0, 5, 40, 0] = 255  # camera 0: row 5, column 40
    image[0, 1, 30, 2, 0] = 255  # camera 1: row 30, column 2
    boxed = vit.init(jax.random.key(0), image)["params"]
    _assert_named(boxed)
    params = jax.tree.map(np.array, nn.unbox(boxed))
    conv = params["keypoint_conv"]  # hidden 0 = 5 (r - g - b - 1), inputs in [-1, 1]:
    conv["kernel"][:] = 0.0  # 10 at a red pixel, 0 at black, -10 at white
    conv["bias"][:] = 0.0
    conv["kernel"][1, 1, :, 0] = [5.0, -5.0, -5.0]
    conv["bias"][0] = -5.0
    logits = params["keypoint_logits"]
    logits["kernel"][:] = 0.0
    logits["bias"][:] = 0.0
    logits["kernel"][0, 0, 0, 0] = 8.0  # e^80 outweighs the other 2,303 pixels
    kin = params["keypoint_in"]
    kin["kernel"][:] = 0.0
    kin["bias"][:] = 0.0
    kin["kernel"][0, 0] = kin["kernel"][1, 1] = 1.0
    params["keypoint_embedding"][:] = 0.0
    params["camera_embedding"][:] = 0.0
    out = np.asarray(vit.apply({"params": params}, image, project=False))
    assert out.shape == (1, 2 * (36 + 3), 8)
    cam0, cam1 = out[0, 36:39], out[0, 39 + 36:]
    np.testing.assert_allclose(cam0[0, :2], [81 / 48 - 1, 11 / 48 - 1], atol=1e-4)
    np.testing.assert_allclose(cam1[0, :2], [5 / 48 - 1, 61 / 48 - 1], atol=1e-4)
    np.testing.assert_allclose(cam0[1, :2], 0.0, atol=1e-6)  # all-zero logits: the centre


def test_readout_none_keeps_patch_tokens_and_bad_name_fails():
    image = jnp.zeros((2, 16, 16, 3), jnp.uint8)
    plain = ViT(patch_size=8, width=8, depth=1, num_heads=2, mlp_dim=16, out_width=4)
    keyed = ViT(patch_size=8, width=8, depth=1, num_heads=2, mlp_dim=16, out_width=4,
                readout="patch_keypoints", keypoints=5)
    p_plain = plain.init(jax.random.key(0), image)
    p_keyed = keyed.init(jax.random.key(0), image)
    assert set(p_plain["params"]) < set(p_keyed["params"])
    _assert_named(p_keyed["params"])
    a = plain.apply(p_plain, image)
    b = keyed.apply({"params": {**p_keyed["params"], **p_plain["params"]}}, image)
    assert a.shape == (2, 4, 4) and b.shape == (2, 4 + 5, 4)
    np.testing.assert_allclose(b[:, :4], a, atol=1e-6)  # the patches are unchanged
    with pytest.raises(ValueError, match="vision_readout"):
        ViT(patch_size=8, width=8, depth=1, num_heads=2, mlp_dim=16, out_width=4,
            readout="keypoints").init(jax.random.key(0), image)
