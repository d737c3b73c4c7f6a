"""One preprocessing path: a dataset step through the training pipeline and through the
policy gives identical model inputs (one and two cameras); outputs map back to raw units."""

import jax
import numpy as np
import pytest

from wallwm_jax.data.pipeline import make_pipeline
from wallwm_jax.data.tokenizer import Tokenizer
from wallwm_jax.data.transforms import ModelIO, bin_to_steps, duration_bin, resize_frame
from wallwm_jax.models import wallwm
from wallwm_jax.policy import Policy


def _policy_for(config, sampler, params=None):
    params = params if params is not None else wallwm.init_params(config.model,
                                                                   jax.random.PRNGKey(0))
    return Policy(params, config, sampler.norm_stats, sampler.tokenizer_path)


def _step(sampler, i):
    row, t, _ = sampler.draw(i)
    e, k = int(sampler.index.episode[row]), int(sampler.index.event[row])
    return sampler.source[e], k, t


def _assert_same_inputs(policy, sampler, ep, k, t, cameras):
    sample = sampler.make_sample(ep, k, t)
    frames = {name: ep[f"steps/observation/{name}"][t] for name in cameras}
    obs = policy.observation(frames, ep["steps/observation/state"][t],
                             ep["episode_metadata/instruction"], ep["events/caption"][k])
    for field in ("image", "state", "instruction", "caption"):
        got, want = np.asarray(getattr(obs, field))[0], sample[field]
        assert got.dtype == want.dtype, field
        np.testing.assert_array_equal(got, want, err_msg=field)  # bitwise, not close


def test_pipeline_and_policy_give_identical_inputs(tiny_config):
    cfg = tiny_config.data
    cfg.augment.enabled = False
    sampler = make_pipeline(cfg, global_batch=8, seed=0).sampler
    policy = _policy_for(tiny_config, sampler)
    for i in range(5):
        _assert_same_inputs(policy, sampler, *_step(sampler, i), cameras=("image",))


def test_two_camera_policy_sees_the_pipelines_inputs_and_acts(tiny_config):
    """A second camera (the scene mirrored, stored as image_wrist): both paths stack the
    cameras in data.cameras order, and the two-camera policy acts on them."""
    tiny_config.data.cameras = ("image", "image_wrist")
    tiny_config.model.cameras = 2
    tiny_config.data.augment.enabled = False
    sampler = make_pipeline(tiny_config.data, global_batch=8, seed=0).sampler
    policy = _policy_for(tiny_config, sampler)
    ep, k, t = _step(sampler, 0)
    wrist = np.ascontiguousarray(ep["steps/observation/image"][:][:, :, ::-1])
    ep = dict(ep, **{"steps/observation/image_wrist": wrist})
    _assert_same_inputs(policy, sampler, ep, k, t, cameras=("image", "image_wrist"))
    frames = {"image": ep["steps/observation/image"][t],
              "image_wrist": ep["steps/observation/image_wrist"][t]}
    obs = policy.observation(frames, ep["steps/observation/state"][t], "reach", "move")
    assert obs.image.shape == (1, 2, 32, 32, 3)
    np.testing.assert_array_equal(obs.image[0, 1], frames["image_wrist"])
    out = policy.act(frames, ep["steps/observation/state"][t], "reach the goal",
                     ep["events/caption"][k])
    assert out["actions"].shape[1] == 4 and np.all(np.isfinite(out["actions"]))
    with pytest.raises(ValueError, match=r"lacks camera\(s\) \['image_wrist'\]"):
        policy.act({"image": frames["image"]}, ep["steps/observation/state"][t], "x", "y")


def test_outputs_map_back_to_raw_units(tiny_dataset, tiny_config):
    sampler = make_pipeline(tiny_config.data, global_batch=8, seed=0).sampler
    io = ModelIO(tiny_config.data, sampler.norm_stats, Tokenizer(sampler.tokenizer_path))
    raw = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(io.actions(io.normalize_actions(raw)), raw, atol=1e-5)
    edges = tuple(tiny_config.data.duration_bins)
    for steps in (1, edges[0], edges[0] + 1, edges[-1], 10 * edges[-1]):
        back = int(bin_to_steps(duration_bin(steps, edges), edges))
        assert back >= min(steps, edges[-1])  # a bin stands for its upper edge
    assert io.captions(["move the gripper up"], 3)[1:].sum() == 0  # absent slots are 0
    with pytest.raises(ValueError, match="2 captions for 1 caption slot"):
        io.captions(["a", "b"], 1)


def test_frames_of_another_size_are_resized_not_rejected(tiny_config):
    sampler = make_pipeline(tiny_config.data, global_batch=8, seed=0).sampler
    io = ModelIO(tiny_config.data, sampler.norm_stats, Tokenizer(sampler.tokenizer_path))
    big = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
    assert io.images({"image": big}).shape == (32, 32, 3)
    np.testing.assert_array_equal(io.images({"image": big}), resize_frame(big, 32))
    with pytest.raises(ValueError, match=r"camera 'image' has shape \(32, 32\)"):
        io.images({"image": big[:32, :32, 0]})
