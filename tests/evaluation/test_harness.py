"""The episode harness on the real simulator: experts succeed through it, and chunk/unified
modes run without ever reading privileged state (the env raises if they try)."""

import dataclasses

import numpy as np
import pytest

from wallwm_jax.data.tasks import TASK_OBJECTS
from wallwm_jax.envs.metaworld import MetaWorldTask
from wallwm_jax.evaluation import suites
from wallwm_jax.evaluation.harness import (
    PLANNERS,
    GuardedEnv,
    OraclePlanner,
    PrivilegedAccessError,
    Recorder,
    Wording,
    describe_privileged,
    other_task,
    privileged_inputs,
    run_episode,
)
from wallwm_jax.evaluation.runner import PolicySpec, evaluate_suite
from wallwm_jax.policy import load_policy

SHORT = dataclasses.replace(suites.get("demo"), episode_limit=12)
TRAIN_WORDING = Wording(split="train", variant=0)


SCENE = suites.scene_seeds("demo", "reach-v3", "dev", 1)[0]


def _env(task, *, privileged, seed=SCENE):
    return GuardedEnv(MetaWorldTask(task, seed=seed, image_size=32), privileged=privileged)


def test_privileged_inputs_name_what_each_run_reads():
    assert privileged_inputs("event", "oracle", True) == ["phase", "object_goal_state"]
    assert privileged_inputs("event", "oracle", False) == ["phase"]
    assert privileged_inputs("chunk", None, True) == ["object_goal_state"]
    assert privileged_inputs("unified", None, False) == []
    assert privileged_inputs("expert", None, False) == ["simulator"]
    assert describe_privileged([]) == "none" and describe_privileged(None) == "not recorded"


def test_guard_raises_on_privileged_reads():
    env = _env("reach-v3", privileged=False)
    try:
        env.reset()
        with pytest.raises(PrivilegedAccessError):
            env.phase()
        with pytest.raises(PrivilegedAccessError):
            env.expert_action()
    finally:
        env.close()


def test_expert_harness_succeeds_on_a_few_tasks(tmp_path):
    suite = suites.get("mt50_lerobot").subset(
        ("reach-v3", "button-press-topdown-v3", "drawer-close-v3"), 1)
    results = evaluate_suite(PolicySpec("expert"), suite, str(tmp_path), progress=False)
    assert results["summary"]["overall"]["successes"] == 3
    assert results["mode"] == "expert" and results["privileged"] is True
    assert all(ep["steps"] < suite.episode_limit for ep in results["episodes"])


@pytest.mark.parametrize("mode", ["chunk", "unified"])
def test_non_event_modes_never_read_privileged_state(mode, trained_policies):
    policy = load_policy(trained_policies[mode].export)
    env = _env("push-v3", privileged=False)
    try:
        record = run_episode(env, policy, task="push-v3", suite=SHORT, mode=mode,
                             wording=TRAIN_WORDING, planner=None, execute_steps=None)
    finally:
        env.close()
    assert "error" not in record, record.get("error")
    assert record["steps"] == SHORT.episode_limit  # an untrained policy uses every step
    assert sum(record["chunk_lengths"]) >= record["steps"]
    if mode == "unified":  # its own decoded captions are recorded per replan
        assert len(record["captions"]) == len(record["chunk_lengths"])
        assert all(isinstance(c, list) and c for c in record["captions"])


class _Seeing:
    """The policy, noting every frame and state it is given (the frames it acts on)."""

    def __init__(self, policy):
        self.policy, self.seen = policy, []

    def act(self, image, state, *args, **kwargs):
        self.seen.append((np.array(image["image"] if isinstance(image, dict) else image),
                          np.array(state)))
        return self.policy.act(image, state, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.policy, name)


@pytest.mark.parametrize("mode", ["chunk", "event", "unified"])
def test_frames_rendered_only_where_the_policy_looks_are_the_same(mode, trained_policies):
    """Without a recorder the chunk's steps run unrendered and the frame the policy acts on
    next is rendered after them; with one (videos) every step is rendered. Same scene, same
    policy seed: the policy sees the same frames and states, and the records are equal."""
    policy = load_policy(trained_policies[mode].export)
    suite = dataclasses.replace(SHORT, episode_limit=10)
    runs = []
    for recorder in (None, Recorder()):
        policy.reset(0)
        seeing = _Seeing(policy)
        env = _env("push-v3", privileged=mode == "event")  # the oracle reads the phase
        try:
            record = run_episode(env, seeing, task="push-v3", suite=suite, mode=mode,
                                 wording=TRAIN_WORDING,
                                 planner=OraclePlanner() if mode == "event" else None,
                                 execute_steps=3, recorder=recorder)
        finally:
            env.close()
        assert "error" not in record, record.get("error")
        runs.append((record, seeing.seen, recorder))
    (lazy, lazy_seen, _), (each, each_seen, recorder) = runs
    assert len(recorder.frames) == each["steps"] + 1  # every step was rendered there
    assert lazy == each and len(lazy["chunk_lengths"]) >= 3  # replans: frames after chunks
    assert len(lazy_seen) == len(each_seen) == len(lazy["chunk_lengths"])
    for (image, state), (want_image, want_state) in zip(lazy_seen, each_seen, strict=True):
        np.testing.assert_array_equal(image, want_image)
        np.testing.assert_array_equal(state, want_state)


def test_event_mode_with_oracle_needs_privileged_access(trained_policies):
    policy = load_policy(trained_policies["event"].export)
    for privileged in (False, True):
        env = _env("reach-v3", privileged=privileged)
        try:
            record = run_episode(env, policy, task="reach-v3", suite=SHORT, mode="event",
                                 wording=TRAIN_WORDING, planner=OraclePlanner(),
                                 execute_steps=None)
        finally:
            env.close()
        if privileged:
            assert "error" not in record and record["steps"] == SHORT.episode_limit
            assert record["captions"][0] == "move the gripper to the goal point"
        else:
            assert "PrivilegedAccessError" in record["error"] and not record["success"]


def test_execute_steps_bounds_each_chunk(trained_policies):
    policy = load_policy(trained_policies["chunk"].export)
    env = _env("reach-v3", privileged=False)
    try:
        record = run_episode(env, policy, task="reach-v3", suite=SHORT, mode="chunk",
                             wording=TRAIN_WORDING, planner=None, execute_steps=5)
    finally:
        env.close()
    assert record["chunk_lengths"] == [5, 5, 5]


def test_planners_choose_their_captions():
    """oracle follows the phase, constant keeps the first phase's caption, blank is empty,
    wrong_task words the current phase with another task's objects; the ones that read the
    phase need a privileged env."""
    task = "push-v3"
    other = other_task(task)
    assert TASK_OBJECTS[other][0] != TASK_OBJECTS[task][0]
    env = _env(task, privileged=True)
    try:
        env.reset()
        planners = {name: PLANNERS[name]() for name in PLANNERS}
        first_phase = env.phase()
        first = {n: p(env, task, TRAIN_WORDING) for n, p in planners.items()}
        assert first["oracle"] == first["constant"] == TRAIN_WORDING.caption(task, first_phase)
        assert first["blank"] == ""
        assert first["wrong_task"] == TRAIN_WORDING.caption(other, first_phase)
        assert first["wrong_task"] != first["oracle"]
        for _ in range(60):
            if env.phase() != first_phase:
                break
            env.step(env.expert_action())
        phase = env.phase()
        assert phase != first_phase
        now = {n: p(env, task, TRAIN_WORDING) for n, p in planners.items()}
        assert now["oracle"] == TRAIN_WORDING.caption(task, phase) != first["oracle"]
        assert now["constant"] == first["constant"]
        assert now["wrong_task"] == TRAIN_WORDING.caption(other, phase)
    finally:
        env.close()
    assert {n: PLANNERS[n].privileged for n in PLANNERS} == {
        "oracle": True, "constant": True, "blank": False, "wrong_task": True}
    assert privileged_inputs("unified", "oracle", False) == ["phase"]
    assert privileged_inputs("event", "blank", False) == []
    env = _env(task, privileged=False)
    try:
        env.reset()
        assert PLANNERS["blank"]()(env, task, TRAIN_WORDING) == ""
        with pytest.raises(PrivilegedAccessError):
            PLANNERS["constant"]()(env, task, TRAIN_WORDING)
    finally:
        env.close()


def test_unified_executes_the_predicted_duration(trained_policies):
    """Each unified chunk runs min(k, execute_steps) steps, k = the predicted steps up to the
    end of its last decoded event (at most Tmax); the caption of an event predicted to go on
    is given back at the next replan, and only then."""
    policy = load_policy(trained_policies["unified"].export)
    tmax = int(policy.config.model.max_event_len)
    suite = dataclasses.replace(SHORT, episode_limit=36)
    seen = set()
    for cap in (3, tmax - 2):  # cuts most chunks; cuts only chunks longer than tmax - 2
        env = _env("push-v3", privileged=False)
        try:
            record = run_episode(env, policy, task="push-v3", suite=suite, mode="unified",
                                 wording=TRAIN_WORDING, planner=None, execute_steps=cap)
        finally:
            env.close()
        assert "error" not in record, record.get("error")
        replans = record["replans"]
        assert len(replans) == len(record["chunk_lengths"]) >= 2
        for r, n in zip(replans, record["chunk_lengths"], strict=True):
            k = max(1, min(sum(r["event_steps"]), tmax))
            want = min(k, cap)
            assert n == want or r is replans[-1]  # the last one ends with the episode
            assert r["executed"] <= n
            if r is not replans[-1]:
                seen.add("under the cap" if n == k else "capped")
        for prev, nxt in zip(replans[:-1], replans[1:], strict=True):
            assert nxt["given"] == (prev["in_effect_after"] is not None)
            if nxt["given"]:
                assert nxt["caption"] == prev["in_effect_after"]
        if cap == 3:  # a capped chunk stops inside its first event: that caption goes on
            assert replans[1]["given"]
    assert seen == {"under the cap", "capped"}
