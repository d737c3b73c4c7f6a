"""Caption decoding never attends a camera the batch marks missing (a mixture's robot without
it), as the training forward does not: changing that camera's pixels changes no caption,
duration or action; changing a present camera's pixels does."""

import jax
import jax.numpy as jnp
import numpy as np

from wallwm_jax.models import wallwm
from wallwm_jax.models.decoding import decode_caption, staircase_decode

MAX_LEN = 6


def _obs(cfg, batch, image):
    return batch.obs.replace(image=image, caption=batch.obs.caption[:, :0],
                             camera_mask=np.array([[True, False]] * image.shape[0]))


def test_a_missing_camera_reaches_no_caption_or_action(unified_cfg, batch_factory):
    cfg = unified_cfg
    cfg.cameras = 2
    batch = batch_factory(cfg, batch_size=2)
    params = wallwm.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (2, 2, cfg.image_size, cfg.image_size, 3), np.uint8)
    other_missing = image.copy()
    other_missing[:, 1] = 255 - other_missing[:, 1]
    other_present = image.copy()
    other_present[:, 0] = 255 - other_present[:, 0]

    @jax.jit
    def run(obs):
        caption = decode_caption(cfg, params, obs, jax.random.key(2), max_len=MAX_LEN,
                                 return_logits=True)
        stair = staircase_decode(cfg, params, obs, jax.random.key(2), max_len=MAX_LEN)
        return caption, stair

    base = run(_obs(cfg, batch, image))
    same = run(_obs(cfg, batch, other_missing))
    moved = run(_obs(cfg, batch, other_present))
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(same), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The present camera is read: its pixels move the first caption's logits.
    assert not np.allclose(np.asarray(base[0][1]), np.asarray(moved[0][1]))
    assert jnp.asarray(base[1]["actions"]).shape[0] == 2
