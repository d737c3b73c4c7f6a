"""The vision tower's optional conv stem (model.vision_stem): same patch grid as the patchify
conv, but every token sees overlapping windows, and the default leaves the tower as it was."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wallwm_jax.models import wallwm
from wallwm_jax.models.vit import ViT


def _tokens(stem: str, image: np.ndarray) -> tuple[np.ndarray, dict]:
    """Tokens of a blockless tower (depth 0: patch embedding + position + final norm)."""
    vit = ViT(patch_size=8, width=64, depth=0, num_heads=2, mlp_dim=16, out_width=8, stem=stem)
    params = vit.init(jax.random.key(0), image)
    return np.asarray(vit.apply(params, image, project=False)), params["params"]


def test_conv_stem_keeps_the_grid_and_sees_across_patch_borders():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 48, 48, 3), np.uint8)
    poked = image.copy()
    poked[0, 8, 8] = 255 - poked[0, 8, 8]  # top-left pixel of patch (row 1, column 1)
    for stem, changed in (("none", {7}), ("conv", {0, 1, 6, 7})):
        before, params = _tokens(stem, image)
        after, _ = _tokens(stem, poked)
        assert before.shape == (1, 36, 64)  # a 6 x 6 grid either way
        moved = {i for i in range(36) if np.abs(after[0, i] - before[0, i]).max() > 1e-5}
        assert moved == changed, (stem, moved)
    stem_convs = {k: v["kernel"].value.shape for k, v in params.items() if k.startswith("stem")}
    assert stem_convs == {"stem_conv_0": (3, 3, 3, 16), "stem_conv_1": (3, 3, 16, 32),
                          "stem_conv_2": (3, 3, 32, 64)}  # 16 channels, doubling to the width
    assert params["patch_embed"]["kernel"].value.shape == (1, 1, 64, 64)
    for leaf in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        assert isinstance(leaf, nn.Partitioned) and len(leaf.names) == leaf.value.ndim


def test_stem_default_and_bad_values():
    image = jnp.zeros((1, 48, 48, 3), jnp.uint8)
    _, plain = _tokens("none", image)
    assert not any(k.startswith("stem") for k in plain)
    assert plain["patch_embed"]["kernel"].value.shape == (8, 8, 3, 64)
    with pytest.raises(ValueError, match="vision_stem"):
        _tokens("resnet", image)
    with pytest.raises(ValueError, match="power-of-2"):
        ViT(patch_size=6, width=8, depth=0, num_heads=2, mlp_dim=16, out_width=8,
            stem="conv").init(jax.random.key(0), image)


def test_model_config_reaches_the_tower():
    """`model.vision_stem` in the model config builds the stem; configs without it do not."""
    from experiments.pretrain import get_config

    cfg = get_config("size=tiny,mode=chunk,recipe=pixels").model
    assert "stem_conv_0" not in wallwm.abstract_params(cfg)["vit"]
    assert cfg.vision_stem == "none"
    cfg.vision_stem = "conv"
    vit = wallwm.abstract_params(cfg)["vit"]
    assert vit["stem_conv_2"]["kernel"].shape == (3, 3, 32, 64)
    assert vit["pos_embedding"].shape == (36, 64)  # 48 px, patch 8: still 36 tokens a camera
