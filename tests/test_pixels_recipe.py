"""Policies that act from pixels: `recipe=pixels` reads no privileged simulator state, its
export is evaluated on exactly what `mt10_seen` renders (4-D state, scene + gripper camera),
and experiments/pixel_visibility.py counts an object's pixels in real MuJoCo renders."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from experiments.pretrain import get_config

MODES = ("chunk", "event", "unified")


@pytest.mark.parametrize("mode", MODES)
def test_pixels_recipe_reads_agent_state_and_two_cameras(mode):
    from wallwm_jax.config_check import validate

    config = get_config(f"size=tiny,mode={mode},recipe=pixels")
    assert config.data.privileged_state is False and config.model.state_dim == 4
    assert config.data.cameras == ("image", "image_gripper") and config.model.cameras == 2
    assert config.model.image_size == config.data.image_size == 48
    assert config.data.action_target_gain == 10.0  # the demo's position targets
    validate(config, check_data=False)
    # the other recipes keep their fields
    assert get_config(f"size=tiny,mode={mode},recipe=demo").model.state_dim == 10


def test_pixels_sweep_trials_read_no_privileged_state_and_report_test_scenes():
    from wallwm_jax.sweep.hyper import load_sweep
    from wallwm_jax.sweep.runner import trial_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sweep = load_sweep(os.path.join(root, "experiments", "sweeps", "pixels.py:size=tiny"))
    configs = [trial_config(sweep, t) for t in sweep.trials]
    assert sorted((c.mode, c.seed) for c in configs) == sorted(
        (m, s) for m in MODES for s in (0, 1, 2))
    for c in configs:
        assert (c.data.privileged_state, c.model.state_dim, c.model.cameras) == (False, 4, 2)
        assert c.data.layout == c.mode
    assert sweep.eval["suites"] == ["mt10_seen"] and sweep.eval["split"] == "test"


@pytest.fixture(scope="module")
def pixels_export(tiny_dataset, tmp_path_factory):
    """A chunk-mode recipe=pixels model at its init, exported with the tiny dataset's
    statistics and tokenizer (4-D state, 4-D actions, as the recipe's)."""
    from wallwm_jax.data.statistics import load_norm_stats
    from wallwm_jax.export import export_bundle
    from wallwm_jax.models import wallwm

    config = get_config("size=tiny,mode=chunk,recipe=pixels")
    params = jax.device_get(wallwm.init_params(config.model, jax.random.PRNGKey(0)))
    out = str(tmp_path_factory.mktemp("pixels") / "export")
    return export_bundle(out, params, config, load_norm_stats(tiny_dataset),
                         os.path.join(tiny_dataset, "tokenizer.model"))


def test_pixels_export_is_evaluated_on_what_mt10_seen_renders(pixels_export, tmp_path):
    from wallwm_jax.envs.metaworld import MetaWorldTask
    from wallwm_jax.evaluation import suites
    from wallwm_jax.evaluation.runner import PolicySpec, _env_cameras, check_actor, evaluate_suite
    from wallwm_jax.policy import load_policy

    policy = load_policy(pixels_export)
    assert not policy.privileged_state and policy.state_dim == 4
    suite = dataclasses.replace(suites.get("mt10_seen").subset(("push-v3",), 1), episode_limit=2)
    check_actor(policy, suite)
    # the observation the evaluator builds for this policy: 4-D state, both cameras at 48 px
    env = MetaWorldTask("push-v3", seed=1, image_size=48, camera=suite.camera,
                        camera_setup=suite.camera_setup, extra_cameras=_env_cameras(policy))
    try:
        obs = env.reset()
    finally:
        env.close()
    assert sorted(obs) == ["image", "image_gripper", "state"]
    assert obs["state"].shape == (4,)
    assert obs["image"].shape == obs["image_gripper"].shape == (48, 48, 3)
    assert not np.array_equal(obs["image"], obs["image_gripper"])
    res = evaluate_suite(PolicySpec(pixels_export), suite, str(tmp_path / "ev"), actor=policy,
                         progress=False, split="dev")
    episode = res["episodes"][0]
    assert "error" not in episode, episode.get("error")
    assert episode["steps"] == 2
    assert res["privileged_state"] is False and res["privileged"] is False
    assert res["privileged_inputs"] == [] and res["protocol"]["state_dims"] == 4


def test_visibility_counts_grow_with_image_size():
    from experiments.pixel_visibility import measure_task
    from wallwm_jax.evaluation.suites import scene_seeds

    seeds = scene_seeds("mt10_seen", "push-v3", "dev", 1)
    rows = measure_task("push-v3", seeds, [32, 128], ["corner2", "gripper"], hi_res=256)
    by = {(r["camera"], r["size"]): r for r in rows}
    small, large = by["gripper", 32], by["gripper", 128]
    # the puck and the goal under the hand's camera: a few pixels at 32, ~16x that at 128
    assert 0 < small["object_px"][0] < large["object_px"][0]
    assert 0 < small["goal_px"][0] < large["goal_px"][0]
    # the scene camera sees the puck too; a 128-px render's count and the area from a
    # 256-px render (independent renders) agree
    scene = by["corner2", 128]
    assert scene["object_px"][0] > 0
    assert scene["object_px"][0] == pytest.approx(scene["object_area"][0], rel=0.35)
    assert large["object_px"][0] == pytest.approx(large["object_area"][0], rel=0.1)
