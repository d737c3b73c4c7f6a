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


def _all_scene_seeds(split, n=100):
    """{(scene set, task): seeds} of every suite's first n episodes in `split`."""
    out = {}
    for name in suites.names():
        suite = suites.get(name)
        for task in suite.tasks:
            out[(suite.scene_set, task)] = suites.scene_seeds(name, task, split, n)
    return out


def test_dev_and_test_scenes_are_disjoint_across_all_suites():
    dev, test = _all_scene_seeds("dev"), _all_scene_seeds("test")
    for seeds in (*dev.values(), *test.values()):
        assert len(set(seeds)) == len(seeds)  # distinct scenes per (suite, task, episode)
    dev_all = {s for seeds in dev.values() for s in seeds}
    test_all = {s for seeds in test.values() for s in seeds}
    assert not dev_all & test_all  # no dev scene of any suite is a test scene of any suite
    assert 2**32 <= min(dev_all) and max(dev_all) < 2**33
    assert 2**33 <= min(test_all) and max(test_all) < 2**34
    # The demo recipe was tuned on scenes that were mt10_seen's: no longer the same scenes.
    for task in DEMO_TASKS:
        assert not (set(suites.scene_seeds("demo", task, "test", 100))
                    & set(suites.scene_seeds("mt10_seen", task, "test", 100)))
    # The language suite asks its question of mt10_seen's scenes (a paired comparison).
    assert (suites.scene_seeds("mt10_paraphrase", "push-v3", "test", 10)
            == suites.scene_seeds("mt10_seen", "push-v3", "test", 10))


def test_scenes_never_meet_training_seeds():
    # Every seed a MetaWorld dataset build can draw for the suites' tasks (build seeds 0-4,
    # up to 1000 episodes per task) is below 2**32, so below every dev and test scene.
    build = {episode_seed(s, t, i) for s in range(5) for t in MT50_TASKS for i in range(1000)}
    assert max(build) < suites.TRAIN_SEED_LIMIT == min(suites.SPLIT_SEED_BASE.values())
    for split in suites.SPLITS:
        scenes = {s for seeds in _all_scene_seeds(split).values() for s in seeds}
        assert not scenes & build, split


def test_scene_seeds_are_a_prefix_and_check_their_arguments():
    ten = suites.scene_seeds("mt10_seen", "reach-v3", "test", 10)
    assert suites.scene_seeds(suites.get("mt10_seen"), "reach-v3", "test", 3) == ten[:3]
    assert suites.scene_seeds("mt10_seen", "reach-v3", "dev", 10) != ten
    with pytest.raises(ValueError, match="unknown scene split 'val'; splits: dev, test"):
        suites.scene_seeds("mt10_seen", "reach-v3", "val", 1)
    with pytest.raises(ValueError, match="task 'door-lock-v3' is not in suite 'mt10_seen'"):
        suites.scene_seeds("mt10_seen", "door-lock-v3", "test", 1)


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
