"""`data.action_target_gain`: the model learns the position targets a proportional controller
aimed at, and every executed step turns its target back into the robot's action at the hand
of that step (real dataset, real pipeline, real Policy, real MetaWorld)."""

import dataclasses

import jax
import numpy as np
import pytest

from wallwm_jax.data import statistics
from wallwm_jax.data.pipeline import make_pipeline
from wallwm_jax.data.transforms import controller_actions, position_targets
from wallwm_jax.envs.metaworld import MetaWorldTask
from wallwm_jax.evaluation import suites
from wallwm_jax.evaluation.harness import GuardedEnv, OraclePlanner, Wording, run_episode
from wallwm_jax.models import wallwm
from wallwm_jax.policy import Policy

GAIN = 10.0


def _train_steps(source):
    eps = [source[i] for i in range(len(source))]
    return (np.concatenate([np.asarray(e["steps/action"], np.float32) for e in eps]),
            np.concatenate([np.asarray(e["steps/observation/state"], np.float32) for e in eps]))


def test_targets_invert_to_the_recorded_actions(tiny_config):
    sampler = make_pipeline(tiny_config.data, global_batch=8, seed=0).sampler
    actions, states = _train_steps(sampler.source)
    targets = position_targets(actions, states, GAIN)
    np.testing.assert_array_equal(targets[:, 3:], actions[:, 3:])  # the gripper is untouched
    assert np.abs(targets[:, :3] - states[:, :3]).max() <= 1.0 / GAIN + 1e-6  # |a| <= 1
    back = np.stack([controller_actions(g, s, GAIN) for g, s in zip(targets, states,
                                                                      strict=True)])
    np.testing.assert_allclose(back, actions, rtol=0, atol=1e-5)  # float32 round trip


def test_pipeline_trains_on_targets_with_their_own_statistics(tiny_config):
    cfg = tiny_config.data
    cfg.augment.enabled = False
    cfg.action_target_gain = GAIN
    sampler = make_pipeline(cfg, global_batch=8, seed=0).sampler
    actions, states = _train_steps(sampler.source)
    want = statistics.compute_norm_stats({"action": position_targets(actions, states, GAIN)})
    np.testing.assert_allclose(sampler.norm_stats["action"]["mean"],
                               want["action"]["mean"], rtol=1e-6)
    # The state statistics stay the dataset's.
    stored = statistics.load_norm_stats(cfg.data_dir)
    np.testing.assert_array_equal(sampler.norm_stats["state"]["mean"], stored["state"]["mean"])
    # A sample's chunk is the targets of its steps; the val split normalises with the train
    # split's target statistics, so a model sees one scale in training and evaluation.
    for i in range(4):
        row, t, _ = sampler.draw(i)
        ep = sampler.source[int(sampler.index.episode[row])]
        sample = sampler(i)
        n = int(sample["action_mask"].sum())
        got = statistics.unnormalize(sample["actions"][:n], sampler.norm_stats["action"])
        want_chunk = position_targets(ep["steps/action"][t:t + n],
                                      ep["steps/observation/state"][t:t + n], GAIN)
        np.testing.assert_allclose(got, want_chunk, rtol=1e-5, atol=1e-5)
    val = make_pipeline(cfg, global_batch=8, seed=0, split="val").sampler
    np.testing.assert_array_equal(val.norm_stats["action"]["std"],
                                  sampler.norm_stats["action"]["std"])


class _Spy:
    """The real policy, with what it returned and the states it was asked at kept."""

    def __init__(self, policy, env):
        self.policy, self.env, self.planned = policy, env, []

    def act(self, *args, **kwargs):
        out = self.policy.act(*args, **kwargs)
        self.planned.append((len(self.env.executed), np.asarray(out["actions"])))
        return out

    def env_action(self, action, state):
        return self.policy.env_action(action, state)


class _Recording(GuardedEnv):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hands, self.executed = [], []

    def reset(self):
        obs = super().reset()
        self.hands = [np.asarray(obs["state"][:3]).copy()]
        return obs

    def step(self, action):
        self.executed.append(np.asarray(action).copy())
        obs, success = super().step(action)
        self.hands.append(np.asarray(obs["state"][:3]).copy())
        return obs, success


@pytest.mark.parametrize("gain", [0.0, GAIN])
def test_the_harness_executes_each_target_at_the_hand_of_its_step(tiny_config, gain):
    cfg = tiny_config
    cfg.data.action_target_gain = gain
    sampler = make_pipeline(cfg.data, global_batch=8, seed=0).sampler
    params = wallwm.init_params(cfg.model, jax.random.PRNGKey(0))
    policy = Policy(params, cfg, sampler.norm_stats, sampler.tokenizer_path)
    assert policy.action_space == ("position_targets" if gain else "actions")
    scene = suites.scene_seeds("demo", "reach-v3", "dev", 4)[3]
    env = _Recording(MetaWorldTask("reach-v3", seed=scene, image_size=32), privileged=True)
    spy = _Spy(policy, env)
    suite = dataclasses.replace(suites.get("demo"), episode_limit=10)
    try:
        record = run_episode(env, spy, task="reach-v3", suite=suite, mode="event",
                             wording=Wording(split="train", variant=0),
                             planner=OraclePlanner(), execute_steps=4)
    finally:
        env.close()
    assert "error" not in record and record["steps"] == len(env.executed) > 4
    assert len(spy.planned) >= 2  # replanned at least once, from a moved hand
    for j, executed in enumerate(env.executed):
        start, chunk = max((p for p in spy.planned if p[0] <= j), key=lambda p: p[0])
        want = np.array(chunk[j - start], np.float32)
        if gain:  # the controller's action at the hand this step started from
            want[:3] = np.float32(gain) * (want[:3] - env.hands[j].astype(np.float32))
        np.testing.assert_array_equal(executed, np.clip(want, -1.0, 1.0), err_msg=f"step {j}")
