"""MetaWorld tasks: seeded positions, upright images, expert success, phase events tiling."""

import numpy as np
import pytest

from wallwm_jax.envs.metaworld import (
    DEMO_TASKS,
    MetaWorldTask,
    rollout_expert,
    segment_phases,
)


def test_segment_phases_tiles_and_merges_short_runs():
    phases = ["a"] * 3 + ["b"] + ["a"] * 2 + ["c"] * 4 + ["d"]
    events = segment_phases(phases)
    assert events[0][0] == 0 and events[-1][1] == len(phases)
    assert all(e0[1] == e1[0] for e0, e1 in zip(events, events[1:], strict=False))
    assert all(end - start >= 2 for start, end, _ in events)
    assert [p for _, _, p in events] == ["a", "c"]  # "b" and "d" absorbed, the two "a" joined


def test_segment_phases_short_first_run_joins_next():
    assert segment_phases(["x", "y", "y", "y"]) == [(0, 4, "y")]


def test_positions_vary_with_seed_and_images_are_upright():
    env = MetaWorldTask("push-v3", seed=0, image_size=32)
    try:
        a = env.reset()
        puck_a = env._obs[4:7].copy()
        env.reset(seed=1)
        puck_b = env._obs[4:7].copy()
        env.reset(seed=0)
        np.testing.assert_allclose(env._obs[4:7], puck_a)
        assert not np.allclose(puck_a, puck_b)
        assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.uint8
        assert a["state"].shape == (4,) and a["state"].dtype == np.float32
        # Upright corner2 view: the brown table top sits in the lower half of the frame
        # (MuJoCo's raw frame is upside down and puts it in the upper half).
        image = a["image"].astype(float)
        wood_rows = np.nonzero(image[..., 0] > image[..., 2] + 30)[0]
        assert wood_rows.size > 50 and wood_rows.mean() > 16
    finally:
        env.close()


@pytest.mark.parametrize("task", ["reach-v3", "push-v3"])
def test_first_frame_draws_the_goal_where_it_is_scored(task):
    """The frame reset returns draws this scene's goal where the task scores it (MetaWorld's
    reset moves the goal site without updating the position it is drawn at)."""
    import mujoco

    env = MetaWorldTask(task, seed=0, image_size=32)
    try:
        for seed in (1, 2):
            env.reset(seed=seed)
            model, data = env._env.model, env._env.data
            goal = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
            np.testing.assert_allclose(data.site_xpos[goal], env._env._target_pos, atol=1e-6)
    finally:
        env.close()


@pytest.mark.parametrize("task", DEMO_TASKS)
def test_expert_succeeds_and_events_tile(task):
    successes = 0
    for seed in range(3):
        ep = rollout_expert(task, seed=seed, image_size=16, max_steps=200)
        successes += ep["success"]
        t = len(ep["actions"])
        assert ep["images"].shape == (t, 16, 16, 3)
        assert ep["images"].mean() > 50  # rendered, not black (a later env in one process)
        assert ep["states"].shape == (t, 4) and ep["actions"].shape == (t, 4)
        assert np.abs(ep["actions"]).max() <= 1.0
        events = ep["events"]
        assert events[0][0] == 0 and events[-1][1] == t
        assert all(e0[1] == e1[0] for e0, e1 in zip(events, events[1:], strict=False))
        assert all(end > start for start, end, _ in events)
        if ep["success"]:
            assert events[-1][2] == "hold" and events[-1][1] - events[-1][0] == 5
    assert successes >= 3 * 0.8


@pytest.mark.parametrize("task", ["reach-v3", "reach-wall-v3"])
def test_reach_expert_puts_the_scored_point_on_the_goal(task):
    """MetaWorld scores reach by the tool centre point; its own expert drives the hand (~4.5 cm
    above it) onto the goal. Ours settles with the scored point near the goal instead."""
    from metaworld.policies import SawyerReachV3Policy, SawyerReachWallV3Policy

    raw = {"reach-v3": SawyerReachV3Policy, "reach-wall-v3": SawyerReachWallV3Policy}[task]()
    env = MetaWorldTask(task, seed=5, image_size=16)
    env.render_images = False
    try:
        final = {}
        for name in ("ours", "metaworld"):
            env.reset()
            for _ in range(150):
                action = (env.expert_action() if name == "ours"
                          else raw.get_action(env._obs.copy()))
                env.step(action)
            final[name] = float(np.linalg.norm(env._env.tcp_center - env._obs[-3:]))
    finally:
        env.close()
    assert final["metaworld"] > 0.03  # on the edge of the 5 cm ball
    assert final["ours"] < 0.01, final


def test_push_expert_goes_through_its_phases_in_order():
    ep = rollout_expert("push-v3", seed=3, image_size=16)
    assert [p for _, _, p in ep["events"]] == ["reach", "grasp", "push", "hold"]


@pytest.mark.parametrize("task,phases", [("shelf-place-v3", {"reach", "grasp", "transport"}),
                                         ("sweep-into-v3", {"reach", "push"})])
def test_mt50_tasks_get_privileged_phases_from_object_motion(task, phases):
    from wallwm_jax.envs.metaworld import MT50_TASKS

    assert len(MT50_TASKS) == 50 and task in MT50_TASKS
    ep = rollout_expert(task, seed=1, image_size=16, max_steps=200)
    assert ep["success"]
    names = [p for _, _, p in ep["events"]]
    assert phases <= set(names) and names[-1] == "hold"
    assert ep["events"][0][0] == 0 and ep["events"][-1][1] == len(ep["actions"])
    assert all(a[1] == b[0] for a, b in zip(ep["events"][:-1], ep["events"][1:], strict=True))


def _assert_same_rollout(a, b):
    assert a.keys() == b.keys() and a["phases"] == b["phases"] and a["events"] == b["events"]
    for key in ("images", "states", "actions", "images_gripper"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_reused_environments_run_each_episode_as_a_new_one(monkeypatch):
    """`episode_env` hands an episode the idle environment of its configuration (no second
    MuJoCo model or GL context), and what that computes is what a new one computes: each
    scene run again in the kept environments, two tasks taking turns (each rendering with its
    own GL context), gives the same frames (scene and gripper camera), states, actions and
    phases, bit for bit. Another thread gets its own environment; a discarded one is closed."""
    from concurrent.futures import ThreadPoolExecutor

    from wallwm_jax.envs import metaworld

    options = {"image_size": 32, "max_steps": 20, "extra_cameras": ("gripper",),
               "action_noise": 0.1}
    runs = [(task, seed) for seed in (3, 4) for task in ("push-v3", "peg-insert-side-v3")]
    new = {}
    for task, seed in runs:
        metaworld.close_idle_envs()
        new[task, seed] = rollout_expert(task, seed=seed, **options)  # a new environment
    rollout_expert("push-v3", seed=5, **options)  # now one of each task is kept
    assert len(metaworld._IDLE) == 2
    for task, seed in runs:  # again, in the kept environments, the tasks taking turns
        _assert_same_rollout(rollout_expert(task, seed=seed, **options), new[task, seed])
    assert len(metaworld._IDLE) == 2
    assert not np.array_equal(new["push-v3", 3]["states"], new["push-v3", 4]["states"])
    idle = dict(metaworld._IDLE)
    with ThreadPoolExecutor(1) as pool:
        _assert_same_rollout(pool.submit(rollout_expert, "push-v3", seed=3, **options).result(),
                             new["push-v3", 3])
    assert metaworld._IDLE == idle

    spec = {"image_size": 32, "extra_cameras": ("gripper",), "privileged_state": False,
            "camera_setup": "ours"}
    with metaworld.episode_env("push-v3", seed=5, **spec) as env:
        reused = env
        env.discard()
    with metaworld.episode_env("push-v3", seed=5, **spec) as env:
        assert env is not reused  # the discarded one was closed
        kept = env
    with metaworld.episode_env("push-v3", seed=6, **spec) as env:
        assert env is kept
    # At most MAX_IDLE are kept, the least recently used closed first.
    monkeypatch.setattr(metaworld, "MAX_IDLE", 1)
    rollout_expert("peg-insert-side-v3", seed=3, **options)
    assert [key[0] for key in metaworld._IDLE] == ["peg-insert-side-v3"]
    metaworld.close_idle_envs()
    assert metaworld._IDLE == {}
