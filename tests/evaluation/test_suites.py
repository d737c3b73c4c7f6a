"""Suite definitions: task partitions, the LeRobot protocol, seed disjointness, wording."""

import pytest

from data_builders.metaworld_events.metaworld_events import episode_seed
from wallwm_jax.data import captions
from wallwm_jax.envs.metaworld import DEMO_TASKS, MT10_TASKS, MT50_TASKS
from wallwm_jax.evaluation import suites


def test_every_task_is_in_exactly_one_group():
    for name in suites.names():
        suite = suites.get(name)
        flat = [t for ts in suite.groups.values() for t in ts]
        assert len(flat) == len(set(flat)) == len(suite.tasks), name
        assert all(suite.group_of(t) in suite.groups for t in suite.tasks)
        assert set(suite.tasks) <= set(MT50_TASKS), name


def test_suite_contents():
    assert suites.get("mt10_seen").tasks == MT10_TASKS
    assert suites.get("mt10_paraphrase").tasks == MT10_TASKS
    assert suites.get("mt10_paraphrase").wording == "heldout"
    heldout = suites.get("mt50_heldout").tasks
    assert len(heldout) == 40 and not set(heldout) & set(MT10_TASKS)
    assert set(heldout) | set(MT10_TASKS) == set(MT50_TASKS)
    assert suites.get("demo").tasks == DEMO_TASKS


def test_lerobot_protocol():
    suite = suites.get("mt50_lerobot")
    assert {g: len(ts) for g, ts in suite.groups.items()} == {
        "easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    assert set(suite.tasks) == set(MT50_TASKS)
    assert suite.episodes_per_task == 10 and suite.episode_limit == 500
    assert suite.camera == "corner2" and suite.camera_setup == "lerobot"
    assert suite.state_dims == 4
    assert set(suite.instructions) == set(MT50_TASKS)
    assert suite.instructions["push-v3"] == "Push the puck to a goal"
    assert suite.differences  # what we do differently is written down


def test_eval_seeds_never_meet_dataset_seeds():
    eval_seeds = {suites.eval_seed(t, ep) for t in MT50_TASKS for ep in range(50)}
    assert len(eval_seeds) == 50 * 50  # distinct scenes per (task, episode)
    assert min(eval_seeds) >= suites.EVAL_SEED_BASE
    build_seeds = {episode_seed(s, t, i) for s in range(3) for t in MT50_TASKS
                   for i in range(200)}
    assert max(build_seeds) < suites.EVAL_SEED_BASE  # by construction: 32-bit digests
    assert not eval_seeds & build_seeds


def test_paraphrase_suite_words_nothing_a_dataset_trains_on():
    suite = suites.get("mt10_paraphrase")
    train = set(captions.train_texts(MT10_TASKS))
    for task in suite.tasks:
        for v in range(captions.num_variants("heldout")):
            assert captions.instruction(task, variant=v, split="heldout") not in train
            for phase in captions.PHASE_TEMPLATES:
                wording = captions.template_caption(task, phase, variant=v, split="heldout")
                assert wording not in train


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid suites: mt10_seen, mt10_paraphrase"):
        suites.get("mt11")
    with pytest.raises(ValueError, match="not in suite 'demo'; its tasks: reach-v3"):
        suites.get("demo").subset(("door-open-v3",), None)
    small = suites.get("mt50_lerobot").subset(("push-v3", "reach-v3"), 2)
    assert small.groups == {"easy": ("reach-v3",), "hard": ("push-v3",)}
    assert small.episodes_per_task == 2
