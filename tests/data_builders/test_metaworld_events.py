"""metaworld_events builder: real rollouts -> ArrayRecord readable without TensorFlow."""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders.metaworld_events import metaworld_events as mwe
from data_builders.metaworld_events import rollouts
from wallwm_jax.data import captions
from wallwm_jax.data.statistics import load_norm_stats
from wallwm_jax.data.tokenizer import Tokenizer
from wallwm_jax.envs.metaworld import DEMO_TASKS


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return data_dir, mwe.build(data_dir, episodes_per_task=2, image_size=32)


@pytest.mark.xdist_group("mw_events_built")  # one worker builds `built`
def test_layout_and_no_tensorflow(built):
    data_dir, version_dir = built
    assert version_dir == os.path.join(
        data_dir, "metaworld_events", "demo-e2-i32-s0", "1.0.0")
    files = set(os.listdir(version_dir))
    assert {"dataset_info.json", "features.json", "norm_stats.json", "tokenizer.model"} <= files
    assert any(f.startswith("metaworld_events-train.array_record") for f in files)
    assert "tensorflow" not in sys.modules


@pytest.mark.xdist_group("mw_events_built")  # one worker builds `built`
def test_features_from_data_source(built):
    _, version_dir = built
    builder = tfds.builder_from_directory(version_dir)
    assert set(builder.info.splits) == {"train", "val"}
    source = builder.as_data_source(split="train")
    assert len(source) == len(DEMO_TASKS)  # 2 per task: 1 train, 1 val
    ep = source[0]
    steps = ep["steps"]
    t = len(steps["action"])
    image = np.stack(steps["observation"]["image"])
    assert image.shape == (t, 32, 32, 3) and image.dtype == np.uint8
    assert np.stack(steps["observation"]["state"]).dtype == np.float32
    assert np.stack(steps["action"]).shape == (t, 4)
    assert list(steps["is_first"]) == [True] + [False] * (t - 1)
    assert list(steps["is_last"]) == [False] * (t - 1) + [True]
    assert bool(ep["episode_metadata"]["success"])
    start, end = np.asarray(ep["events"]["start"]), np.asarray(ep["events"]["end"])
    assert start.dtype == np.int32 and start[0] == 0 and end[-1] == t
    np.testing.assert_array_equal(start[1:], end[:-1])
    assert len(ep["events"]["caption"]) == len(ep["events"]["phase"]) == len(start)


@pytest.mark.xdist_group("mw_events_built")  # one worker builds `built`
def test_train_split_uses_only_train_wording(built):
    _, version_dir = built
    source = tfds.builder_from_directory(version_dir).as_data_source(split="train")
    heldout = {captions.event_caption(task, phase, variant=v, split="heldout")
               for task in DEMO_TASKS for phase in captions.PHASE_TEMPLATES for v in range(2)}
    heldout |= {captions.instruction(task, variant=v, split="heldout")
                for task in DEMO_TASKS for v in range(2)}
    seen = set()
    for i in range(len(source)):
        ep = source[i]
        seen |= {c.decode() for c in ep["events"]["caption"]}
        seen.add(ep["episode_metadata"]["instruction"].decode())
    assert seen and not seen & heldout


@pytest.mark.xdist_group("mw_events_built")  # one worker builds `built`
def test_norm_stats_equal_numpy_on_train_split(built):
    _, version_dir = built
    source = tfds.builder_from_directory(version_dir).as_data_source(split="train")
    actions = np.concatenate([np.stack(source[i]["steps"]["action"])
                              for i in range(len(source))])
    stats = load_norm_stats(version_dir)
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["action"]["q99"], np.quantile(actions, 0.99, axis=0),
                               rtol=1e-5, atol=1e-7)
    assert stats["state"]["std"].shape == (4,)


@pytest.mark.xdist_group("mw_events_built")  # one worker builds `built`
def test_tokenizer_stored_with_dataset(built):
    _, version_dir = built
    tok = Tokenizer(version_dir)
    text = captions.instruction("push-v3", variant=1)
    assert tok.decode(tok.encode(text, 32)) == text


@pytest.mark.xdist_group("mw_events_built")  # one worker builds `built`
def test_rebuild_is_skipped(built):
    data_dir, version_dir = built
    record = [f for f in os.listdir(version_dir) if "train.array_record" in f][0]
    mtime = os.path.getmtime(os.path.join(version_dir, record))
    assert mwe.build(data_dir, episodes_per_task=2, image_size=32) == version_dir
    assert os.path.getmtime(os.path.join(version_dir, record)) == mtime
    # Stats lost after the dataset was finished (e.g. a crash right after) are recomputed
    # from the train split on disk, identically.
    before = load_norm_stats(version_dir)
    os.remove(os.path.join(version_dir, "norm_stats.json"))
    mwe.build(data_dir, episodes_per_task=2, image_size=32)
    after = load_norm_stats(version_dir)
    for key in before:
        for name in before[key]:
            np.testing.assert_allclose(after[key][name], before[key][name], rtol=1e-6)


def test_interrupted_build_does_not_look_finished(tmp_path, monkeypatch):
    calls = []

    def crash_on_second(job):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return job[0], job[1], {"success": False, "actions": np.zeros((1, 4))}

    monkeypatch.setattr(mwe, "rollout_job", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        mwe.build(str(tmp_path), episodes_per_task=2, image_size=16, tasks=DEMO_TASKS[:2])
    assert len(calls) == 2
    builder = mwe.MetaworldEvents(data_dir=str(tmp_path), config=mwe.make_config(
        "demo", episodes_per_task=2, image_size=16, tasks=DEMO_TASKS[:2]))
    assert not builder.is_prepared()
    assert not os.path.exists(builder.data_dir)
    found = [f for _, _, files in os.walk(tmp_path) for f in files if f == "dataset_info.json"]
    assert not found


def test_builder_of_an_unbuilt_dataset_leaves_no_temp_dir(tmp_path, monkeypatch):
    """TFDS looks for an unbuilt dataset's info on its bucket through an empty temp dir it
    never removes (one per builder made: hundreds in /tmp after a few builds); ours skip it."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))  # this process's temp files go there
    builder = mwe.MetaworldEvents(data_dir=str(tmp_path / "data"), config=mwe.make_config(
        "demo", episodes_per_task=2, image_size=16, tasks=DEMO_TASKS[:1]))
    assert not builder.is_prepared()
    assert builder.info.features["steps"]["observation"]["image"].shape == (16, 16, 3)
    assert os.listdir(temp) == []


def test_splits_are_disjoint_and_seeds_distinct():
    splits = mwe.split_episodes(10)
    assert list(splits["train"]) == list(range(8)) and list(splits["val"]) == [8, 9]
    seeds = {mwe.episode_seed(0, t, i) for t in DEMO_TASKS for i in range(10)}
    assert len(seeds) == 30 and mwe.episode_seed(0, "push-v3", 3) != mwe.episode_seed(
        1, "push-v3", 3)


def test_overrides_get_their_own_config_name():
    assert mwe.make_config("demo").name == "demo"
    assert mwe.make_config("mt10").tasks[0] == "reach-v3"
    assert mwe.make_config("demo", seed=1).name == "demo-e10-i64-s1"
    with pytest.raises(ValueError, match="episodes_per_task"):
        mwe.make_config("demo", episodes_per_task=1)


@pytest.mark.xdist_group("mw_events_built")  # one worker builds `built`
def test_dataset_info_records_config(built):
    _, version_dir = built
    with open(os.path.join(version_dir, "dataset_info.json")) as f:
        info = json.load(f)
    assert info["configName"] == "demo-e2-i32-s0"


def test_worker_pool_gives_the_same_dataset(tmp_path):
    kwargs = dict(episodes_per_task=2, image_size=16, tasks=("reach-v3",))
    dirs = [mwe.build(str(tmp_path / f"w{n}"), num_workers=n, **kwargs) for n in (1, 2)]
    sources = [tfds.builder_from_directory(d).as_data_source(split="train") for d in dirs]
    a, b = sources[0][0], sources[1][0]
    np.testing.assert_array_equal(np.stack(a["steps"]["action"]), np.stack(b["steps"]["action"]))
    np.testing.assert_array_equal(np.stack(a["steps"]["observation"]["image"]),
                                  np.stack(b["steps"]["observation"]["image"]))
    assert list(a["events"]["caption"]) == list(b["events"]["caption"])


@pytest.mark.xdist_group("mw_events_built")  # one worker builds `built`
def test_build_report_is_stored_and_adds_up(built):
    _, version_dir = built
    with open(os.path.join(version_dir, mwe.REPORT_FILE)) as f:
        report = json.load(f)
    builder = tfds.builder_from_directory(version_dir)
    n = sum(len(builder.as_data_source(split=s)) for s in ("train", "val"))
    assert report["episodes"] == n and report["rollouts"] >= n
    assert report["episodes_per_min"] > 0 and report["events_per_episode"]["min"] >= 1
    assert report["rollouts"] - report["episodes"] == sum(report["excluded"].values())
    assert "expert success" in mwe.format_report(report)


def test_interrupted_build_resumes_from_cached_rollouts(tmp_path, monkeypatch):
    kwargs = dict(episodes_per_task=3, image_size=16, tasks=("reach-v3",))  # 2 train, 1 val
    real_job, real_rollout = mwe.rollout_job, rollouts.rollout_expert
    calls = []

    def crash_after_two(job):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_job(job)

    def counting_rollout(*args, **kw):
        calls.append(args)
        return real_rollout(*args, **kw)

    monkeypatch.setattr(rollouts, "rollout_expert", counting_rollout)
    monkeypatch.setattr(mwe, "rollout_job", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        mwe.build(str(tmp_path / "a"), **kwargs)
    assert len(calls) == 2
    monkeypatch.setattr(mwe, "rollout_job", real_job)
    version_dir = mwe.build(str(tmp_path / "a"), **kwargs)
    assert len(calls) == 3  # the two train rollouts came from the cache, only val ran
    fresh = mwe.build(str(tmp_path / "b"), **kwargs)
    a = tfds.builder_from_directory(version_dir).as_data_source(split="train")[0]
    b = tfds.builder_from_directory(fresh).as_data_source(split="train")[0]
    np.testing.assert_array_equal(np.stack(a["steps"]["action"]), np.stack(b["steps"]["action"]))
    np.testing.assert_array_equal(np.stack(a["steps"]["observation"]["image"]),
                                  np.stack(b["steps"]["observation"]["image"]))
    with open(os.path.join(version_dir, mwe.REPORT_FILE)) as f:
        assert json.load(f)["reused_rollouts"] == 2
    assert not os.listdir(tmp_path / "a" / "metaworld_events" / ".rollouts")  # cache cleared


def test_bad_episode_is_excluded_and_counted_or_fails_strict(tmp_path, monkeypatch):
    real = rollouts.rollout_expert
    seen = []

    def nan_in_second(*args, **kw):
        out = real(*args, **kw)
        seen.append(1)
        if len(seen) == 2:
            out["actions"] = out["actions"].copy()
            out["actions"][3, 1] = np.nan
        return out

    monkeypatch.setattr(rollouts, "rollout_expert", nan_in_second)
    kwargs = dict(episodes_per_task=3, image_size=16, tasks=("reach-v3",))
    version_dir = mwe.build(str(tmp_path / "lenient"), **kwargs)
    with open(os.path.join(version_dir, mwe.REPORT_FILE)) as f:
        report = json.load(f)
    assert report["excluded"] == {"invalid field 'steps/action'": 1}
    builder = tfds.builder_from_directory(version_dir)
    assert len(builder.as_data_source(split="train")) == 1  # 2 train episodes, 1 excluded
    seen.clear()
    with pytest.raises(ValueError, match=r"reach-v3_000001: field 'steps/action'.*--strict"):
        mwe.build(str(tmp_path / "strict"), strict=True, **kwargs)


def test_gripper_camera_is_stored_and_fed_to_the_model(tmp_path):
    from experiments.pretrain import get_config
    from wallwm_jax.data.pipeline import make_pipeline

    version_dir = mwe.build(str(tmp_path), episodes_per_task=2, image_size=16,
                            tasks=("push-v3",), cameras=("gripper",))
    assert "-cgripper" in version_dir
    ep = tfds.builder_from_directory(version_dir).as_data_source(split="train")[0]
    scene = np.stack(ep["steps"]["observation"]["image"])
    gripper = np.stack(ep["steps"]["observation"]["image_gripper"])
    assert gripper.shape == scene.shape and gripper.mean() > 20
    assert not np.array_equal(gripper, scene)
    config = get_config("size=tiny,mode=event")
    config.data.data_dir, config.data.image_size = version_dir, 16
    config.data.cameras = ("image", "image_gripper")
    sample = make_pipeline(config.data, global_batch=2, seed=0).sampler(0)
    assert sample["image"].shape == (2, 16, 16, 3)
    config.data.cameras = ("image", "image_wrist")
    with pytest.raises(ValueError, match="image_wrist"):
        make_pipeline(config.data, global_batch=2, seed=0).sampler(0)


@pytest.mark.xdist_group("mw_events_built")  # one worker builds `built`
def test_paraphrase_split_is_recorded_and_heldout_never_used(built):
    _, version_dir = built
    with open(os.path.join(version_dir, mwe.PARAPHRASES_FILE)) as f:
        record = json.load(f)
    assert set(record) == set(DEMO_TASKS)
    heldout = {t for task in record.values() for t in task["heldout"]["instruction"]}
    heldout |= {c for task in record.values() for cs in task["heldout"]["captions"].values()
                for c in cs}
    train = {t for task in record.values() for t in task["train"]["instruction"]}
    assert heldout and not heldout & train
    seen = set()
    for split in ("train", "val"):
        source = tfds.builder_from_directory(version_dir).as_data_source(split=split)
        for i in range(len(source)):
            ep = source[i]
            seen |= {c.decode() for c in ep["events"]["caption"]}
            seen.add(ep["episode_metadata"]["instruction"].decode())
    assert seen and not seen & heldout


def test_lerobot_camera_setup_builds_the_view_mt50_lerobot_renders():
    from wallwm_jax.envs.metaworld import MetaWorldTask, rollout_expert

    cfg = mwe.make_config("mt50", camera_setup="lerobot")
    assert cfg.name == "mt50-viewlerobot" and cfg.camera_setup == "lerobot"
    with pytest.raises(ValueError, match="camera_setup must be 'ours' or 'lerobot'"):
        mwe.make_config("demo", camera_setup="front")
    seed = mwe.episode_seed(0, "reach-v3", 0)
    # The builder's job path (what `build` runs per episode) with the LeRobot view ...
    _, _, rollout = mwe.rollout_job(rollouts.RolloutJob(
        "reach-v3", 0, seed, image_size=16, max_steps=mwe.MAX_STEPS, cameras=(),
        privileged_state=False, action_noise=0.0, camera_setup="lerobot", cache_dir=None))
    ours = rollout_expert("reach-v3", seed=seed, image_size=16, max_steps=2)
    # ... gives the first frame the evaluation environment of mt50_lerobot shows that seed.
    env = MetaWorldTask("reach-v3", seed=seed, image_size=16, camera_setup="lerobot")
    try:
        first = env.reset()["image"]
    finally:
        env.close()
    np.testing.assert_array_equal(rollout["images"][0], first)
    assert not np.array_equal(rollout["images"][0], ours["images"][0])
    np.testing.assert_array_equal(rollout["states"][:2], ours["states"])  # same episode
