"""rlds_events: a real OXE-style TFDS source on disk, converted (plain and with Apache Beam),
read back with open_dataset; key-mapping errors; bad episodes excluded, or raised when strict;
a TFRecord dataset written by real TFDS and converted in place by `tfds convert_format`
(testdata/rlds_tfrecord_tiny); a missing or non-TFDS source as one error line."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from data_builders.rlds_events import KeyMapping, build, plan_splits
from data_builders.rlds_events.mapping import segment
from data_builders.rlds_events.rlds_events import open_source
from wallwm_jax.data.episodes import FEATURE_NAMES, open_dataset
from wallwm_jax.data.statistics import load_norm_stats
from wallwm_jax.data.tokenizer import Tokenizer

T, CLOSE_AT, STOP_AT, LIFT_AT = 40, 20, 12, 25  # move right, stop, close the gripper, lift
N_EPISODES, NAN_EPISODE = 8, 5
MAPPING = KeyMapping(image_keys=("image", "wrist_image"), state_key="state",
                     action_key="action", gripper_index=6, position_slice=(0, 3),
                     instruction_key="language_instruction", image_size=16)


def source_episode(i: int) -> dict:
    """Known structure: +x motion [0, 12), still [12, 25) with the gripper closing at 20,
    +z motion [25, 40); state = [xyz, 4 joint values, gripper], action = [vxyz, 3 rot, grip]."""
    rng = np.random.default_rng(i)
    action = np.zeros((T, 7), np.float32)
    action[:STOP_AT, 0] = 0.02 * (1 + 0.1 * i)
    action[LIFT_AT:, 2] = 0.03
    action[:, 3:6] = rng.normal(0, 1e-4, (T, 3))
    action[CLOSE_AT:, 6] = 1.0
    state = np.zeros((T, 8), np.float32)
    state[:, :3] = np.cumsum(np.r_[rng.normal(0, 0.1, (1, 3)), action[:-1, :3]], 0)
    state[:, 3:7] = rng.normal(0, 1, (T, 4))
    state[:, 7] = action[:, 6]
    if i == NAN_EPISODE:
        action[7, 1] = np.nan
    frames = (np.arange(T)[:, None, None, None] * 6 + rng.integers(0, 9, (1, 32, 32, 3)))
    return {"episode_metadata": {"episode_index": i}, "steps": {
        "observation": {"image": frames.astype(np.uint8),
                        "wrist_image": (255 - frames).astype(np.uint8), "state": state},
        "action": action, "language_instruction": [f"pick up block {i % 3}"] * T,
        "is_first": np.arange(T) == 0, "is_last": np.arange(T) == T - 1,
        "is_terminal": np.arange(T) == T - 1}}


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")  # TFDS encodes raw arrays only with TF
    return buf.getvalue()


def encoded(episode: dict) -> dict:
    """`episode` with its frames PNG-encoded, as the source builder writes it."""
    obs = episode["steps"]["observation"]
    return {**episode, "steps": {**episode["steps"], "observation": {
        **obs, **{k: [_png(f) for f in obs[k]] for k in ("image", "wrist_image")}}}}


class OxeLikeSource(tfds.core.GeneratorBasedBuilder):
    """A tiny Open X-Embodiment style RLDS dataset (train split only)."""

    VERSION = tfds.core.Version("0.1.0")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        image = tfds.features.Image(shape=(32, 32, 3), dtype=np.uint8, encoding_format="png")
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "steps": tfds.features.Dataset({
                "observation": {"image": image, "wrist_image": image,
                                "state": tfds.features.Tensor(shape=(8,), dtype=np.float32)},
                "action": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                "language_instruction": tfds.features.Text(),
                "is_first": np.bool_, "is_last": np.bool_, "is_terminal": np.bool_}),
            "episode_metadata": {"episode_index": np.int32}}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(N_EPISODES):
            yield f"ep{i}", encoded(source_episode(i))


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> str:
    builder = OxeLikeSource(data_dir=os.fspath(tmp_path_factory.mktemp("src")))
    builder.download_and_prepare(file_format="array_record", download_config=(
        tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)))
    return os.fspath(builder.data_dir)


@pytest.fixture(scope="module")
def built(source_dir, tmp_path_factory) -> str:
    return build(source_dir, os.fspath(tmp_path_factory.mktemp("out")), MAPPING)


def generation_index(source_dir: str) -> dict[str, int]:
    """Converted episode id ("train_<position in the source split>") -> `source_episode` index
    (TFDS shuffles examples on write, so positions differ from generation order)."""
    source = tfds.builder_from_directory(source_dir).as_data_source(split="train")
    return {f"train_{p:06d}": int(source[p]["episode_metadata"]["episode_index"])
            for p in range(len(source))}


def read_by_id(version_dir: str) -> dict[str, dict]:
    """Every episode of every split, keyed by episode_metadata/episode_id."""
    builder = tfds.builder_from_directory(version_dir)
    out = {}
    for split in builder.info.splits:
        source = builder.as_data_source(split=split)
        for i in range(len(source)):
            ep = source[i]
            out[ep["episode_metadata"]["episode_id"].decode()] = {"split": split, **ep}
    return out


def test_open_dataset_reads_the_converted_episodes(built):
    train, val = open_dataset(built, "train"), open_dataset(built, "val")
    assert len(train) + len(val) == N_EPISODES - 1 and len(val) >= 1
    ep = train[0]
    assert set(FEATURE_NAMES) <= set(ep)
    assert np.asarray(ep["steps/observation/image"]).shape == (T, 16, 16, 3)
    assert np.asarray(ep["steps/observation/image_wrist"]).dtype == np.uint8
    assert ep["steps/observation/state"].shape == (T, 8)
    assert ep["steps/action"].dtype == np.float32 and ep["steps/action"].shape == (T, 7)


def test_features_dtypes_and_events(source_dir, built):
    info = tfds.builder_from_directory(built).info
    steps = info.features["steps"]
    assert set(steps["observation"].keys()) == {"image", "image_wrist", "state"}
    assert steps["observation"]["image"].shape == (16, 16, 3)
    assert steps["observation"]["state"].shape == (8,) and steps["action"].shape == (7,)
    assert steps["action"].np_dtype == np.float32 and steps["is_first"].np_dtype == np.bool_
    assert set(info.splits) == {"train", "val"}
    episodes, index_of = read_by_id(built), generation_index(source_dir)
    assert sorted(index_of[k] for k in episodes) == [
        i for i in range(N_EPISODES) if i != NAN_EPISODE]
    for key, ep in episodes.items():
        start, end = np.asarray(ep["events"]["start"]), np.asarray(ep["events"]["end"])
        assert start.dtype == np.int32 and start[0] == 0 and end[-1] == T
        assert np.all(end > start) and np.array_equal(start[1:], end[:-1]), key
        captions = [c.decode() for c in ep["events"]["caption"]]
        phases = [p.decode() for p in ep["events"]["phase"]]
        k = captions.index("close the gripper")
        assert abs(int(start[k]) - CLOSE_AT) <= 2, (key, start, captions)
        assert phases[k] == "close_gripper" and captions[0] == "move the gripper right"
        assert captions[-1] == "lift" and phases[-1] == "lift"
        index = index_of[key]
        assert ep["episode_metadata"]["instruction"].decode() == f"pick up block {index % 3}"
        assert bool(ep["episode_metadata"]["success"])
        src = source_episode(index)["steps"]
        np.testing.assert_array_equal(ep["steps"]["action"], src["action"])
        frame = np.asarray(ep["steps"]["observation"]["image"])
        assert frame.shape == (T, 16, 16, 3)
        # a resize keeps the mean colour, so frames are not scrambled across steps
        np.testing.assert_allclose(frame.mean((1, 2, 3)),
                                   src["observation"]["image"].mean((1, 2, 3)), atol=2)


def test_norm_stats_and_tokenizer(source_dir, built):
    index_of = generation_index(source_dir)
    ids = [index_of[k] for k, ep in read_by_id(built).items() if ep["split"] == "train"]
    states = np.concatenate([source_episode(i)["steps"]["observation"]["state"] for i in ids])
    actions = np.concatenate([source_episode(i)["steps"]["action"] for i in ids])
    stats = load_norm_stats(built)
    assert len(ids) == len(open_dataset(built, "train")) and stats["action"]["mean"].shape == (7,)
    np.testing.assert_allclose(stats["state"]["mean"], states.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["state"]["q99"], np.quantile(states, 0.99, 0), rtol=1e-5)
    tok = Tokenizer(built)
    assert tok.decode(tok.encode("close the gripper", 32)) == "close the gripper"
    report = json.load(open(os.path.join(built, "build_report.json")))
    assert report["excluded"] == {"steps/action": 1}
    assert index_of[report["excluded_episodes"][0]["episode"]] == NAN_EPISODE


def test_strict_raises_naming_episode_and_key(source_dir, tmp_path):
    position = {i: int(k.split("_")[1]) for k, i in generation_index(source_dir).items()}
    with pytest.raises(ValueError, match=rf"episode {position[NAN_EPISODE]}: steps/action: "
                                         "non-finite"):
        build(source_dir, os.fspath(tmp_path), MAPPING, strict=True)


@pytest.mark.parametrize("change, message", [
    (dict(image_keys=("image", "side_image")),
     r"steps/observation/side_image: missing .*available keys: \[.*wrist_image"),
    (dict(gripper_index=7), r"steps/action: shape \(T, 7\), expected the gripper index 7"),
    (dict(state_key="proprio"), r"steps/observation/proprio: missing"),
    (dict(position_slice=(6, 9)), r"steps/observation/state: shape \(T, 8\), expected the "
                                  r"position slice 6:9"),
    (dict(instruction_key="goal"), r"steps/goal: missing"),
    (dict(action_key="is_first"), r"steps/is_first: shape \(None,\) bool, expected"),
])
def test_mapping_errors_name_the_key(source_dir, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        build(source_dir, os.fspath(tmp_path), dataclasses.replace(MAPPING, **change))


def test_gripper_open_high_inverts_the_command():
    src = source_episode(0)["steps"]
    actions, states = src["action"], src["observation"]["state"]
    starts, captions = segment(actions, states, MAPPING)
    flipped = actions.copy()
    flipped[:, 6] = 1.0 - flipped[:, 6]  # a dataset where 1 means open
    starts_high, captions_high = segment(
        flipped, states, dataclasses.replace(MAPPING, gripper_open_high=True))
    assert "close the gripper" in captions and captions_high == captions
    np.testing.assert_array_equal(starts_high, starts)
    assert "open the gripper" in segment(flipped, states, MAPPING)[1]


def test_plan_splits_keeps_source_splits_or_carves_val():
    assert plan_splits({"train": 3, "test": 2}, 0.5, 0) == {
        "train": [("train", 0), ("train", 1), ("train", 2)], "test": [("test", 0), ("test", 1)]}
    plan = plan_splits({"train": 20}, 0.25, 0)
    assert len(plan["val"]) == 5 and len(plan["train"]) == 15
    assert sorted(plan["train"] + plan["val"]) == [("train", i) for i in range(20)]
    assert plan == plan_splits({"train": 20}, 0.25, 0) != plan_splits({"train": 20}, 0.25, 1)


def test_beam_path_writes_the_same_episodes(source_dir, built, tmp_path, monkeypatch):
    # A temp root of this test's own: other tests (the --beam CLI on the other worker) may
    # build at the same time and must not show up here.
    temp_root = tmp_path / "temp_root"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(temp_root))
    beam_dir = build(source_dir, os.fspath(tmp_path), MAPPING, beam=True, workers=2)
    assert "tensorflow" not in sys.modules  # TFDS's Beam + ArrayRecord path runs without TF
    # Nothing of the Beam run is left in the temp root (its job server left `beam-temp*`).
    left = [n for n in os.listdir(temp_root) if n.startswith(("beam-temp", "wallwm_beam_"))]
    assert left == [], left
    plain, beamed = read_by_id(built), read_by_id(beam_dir)
    assert sorted(plain) == sorted(beamed)
    flat = tfds.core.utils.flatten_nest_dict
    for key in plain:
        a, b = flat(plain[key]), flat(beamed[key])
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]),
                                          err_msg=f"{key} {name}")
    report = json.load(open(os.path.join(beam_dir, "build_report.json")))
    assert report["beam"] and report["excluded"] == {"steps/action": 1}
    assert open(os.path.join(beam_dir, "norm_stats.json")).read() == open(
        os.path.join(built, "norm_stats.json")).read()


def test_cli(source_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "data_builders.rlds_events", "--source", source_dir,
         "--data_dir", os.fspath(tmp_path), "--image_keys", "image", "--state_key", "state",
         "--action_key", "action", "--gripper_index", "6", "--position_slice", "0:3",
         "--instruction_key", "language_instruction", "--val_fraction", "0.2", "--beam",
         "--workers", "2"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    version_dir = out.stdout.strip().splitlines()[-1]
    assert "1 invalid steps/action" in out.stdout and "beam" in out.stdout
    # Beam neither parses our flags (one warning per flag) nor logs its workers' INFO lines.
    assert "Unparseable argument" not in out.stderr, out.stderr
    assert "apache_beam.runners.worker" not in out.stderr, out.stderr
    assert set(tfds.builder_from_directory(version_dir).info.splits) == {"train", "val"}


# Written by real TFDS as TFRecord and converted in place by `tfds convert_format`, as an Open
# X-Embodiment download is after following docs/rlds.md (testdata/make_rlds_tfrecord_tiny.py).
TFRECORD_SOURCE = os.path.join(os.path.dirname(__file__), "testdata", "rlds_tfrecord_tiny",
                               "1.0.0")
TFRECORD_EXPECTED = os.path.join(os.path.dirname(__file__), "testdata",
                                 "rlds_tfrecord_tiny_expected.npz")
TFRECORD_T, TFRECORD_CLOSE_AT = 30, 15


def converter_cli(source: str, data_dir: str, *extra: str) -> subprocess.CompletedProcess:
    """`python -m data_builders.rlds_events` on `source` with the OXE-style mapping."""
    return subprocess.run(
        [sys.executable, "-m", "data_builders.rlds_events", "--source", source,
         "--data_dir", data_dir, "--image_keys", "image", "--state_key", "state",
         "--action_key", "action", "--gripper_index", "6", "--position_slice", "0:3",
         "--instruction_key", "language_instruction", *extra],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_converted_in_place_source_reads_its_array_record():
    source, file_format = open_source(TFRECORD_SOURCE)
    assert source.info.file_format.value == "tfrecord"  # as `tfds convert_format` leaves it
    assert file_format == "array_record"


def test_cli_converts_a_tfrecord_source_converted_in_place(tmp_path):
    out = converter_cli(TFRECORD_SOURCE, os.fspath(tmp_path), "--val_fraction", "0.25")
    assert out.returncode == 0, out.stderr
    version_dir = out.stdout.strip().splitlines()[-1]
    assert set(tfds.builder_from_directory(version_dir).info.splits) == {"train", "val"}
    expected = np.load(TFRECORD_EXPECTED)
    source = tfds.builder_from_directory(TFRECORD_SOURCE).as_data_source(
        split="train", file_format="array_record")
    index_of = {f"train_{p:06d}": int(source[p]["episode_metadata"]["episode_index"])
                for p in range(len(source))}
    episodes = read_by_id(version_dir)
    assert sorted(episodes) == sorted(index_of) and len(episodes) == 4
    for key, ep in episodes.items():
        i = index_of[key]
        np.testing.assert_array_equal(ep["steps"]["action"], expected[f"{i}/action"])
        np.testing.assert_array_equal(ep["steps"]["observation"]["state"],
                                      expected[f"{i}/state"])
        np.testing.assert_array_equal(ep["steps"]["observation"]["image"],
                                      expected[f"{i}/image"])  # PNG, no resize: exact
        assert (ep["episode_metadata"]["instruction"].decode()
                == str(expected[f"{i}/instruction"]) == f"pick up block {i % 3}")
        start, end = np.asarray(ep["events"]["start"]), np.asarray(ep["events"]["end"])
        assert start[0] == 0 and end[-1] == TFRECORD_T
        assert np.array_equal(start[1:], end[:-1]), key
        captions = [c.decode() for c in ep["events"]["caption"]]
        k = captions.index("close the gripper")
        assert abs(int(start[k]) - TFRECORD_CLOSE_AT) <= 2, (key, start, captions)
        assert captions[0] == "move the gripper right" and captions[-1] == "lift"


def tfrecord_only_copy(directory) -> str:
    """The committed source as it was before `tfds convert_format`: without its array_record
    shard and without `alternativeFileFormats` (make_rlds_tfrecord_tiny.py checks that this is
    all the conversion changed in dataset_info.json)."""
    copy = os.path.join(directory, "rlds_tfrecord_tiny", "1.0.0")
    shutil.copytree(TFRECORD_SOURCE, copy,
                    ignore=lambda _, names: [n for n in names if ".array_record-" in n])
    info_path = os.path.join(copy, "dataset_info.json")
    info = json.load(open(info_path))
    del info["alternativeFileFormats"]
    with open(info_path, "w") as f:
        json.dump(info, f)
    return copy


def test_cli_refuses_a_tfrecord_only_source_with_the_conversion_command(tmp_path):
    source = tfrecord_only_copy(tmp_path)
    assert tfds.builder_from_directory(source).info.available_file_formats() == {
        tfds.core.FileFormat.TFRECORD}
    out = converter_cli(source, os.fspath(tmp_path / "out"))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    assert (f"`tfds convert_format --dataset_version_dir={source} "
            "--out_file_format=array_record`") in out.stderr
    assert "stored as tfrecord" in out.stderr and not os.path.exists(tmp_path / "out")


def a_file(directory) -> str:
    os.makedirs(directory)
    path = os.path.join(directory, "episodes.tfrecord")
    open(path, "w").write("not a dataset dir")
    return path


@pytest.mark.parametrize("make_source, message", [
    (lambda d: os.path.join(d, "missing"), r"missing: no such directory \(expected a TFDS "
                                           r"dataset version dir"),
    (a_file, r"episodes\.tfrecord: not a directory \(expected a TFDS dataset version dir"),
    (lambda d: os.path.dirname(tfrecord_only_copy(d)),
     r"rlds_tfrecord_tiny: not a TFDS dataset, it has no dataset_info\.json \(version dirs "
     r"below it: .*rlds_tfrecord_tiny/1\.0\.0\)"),
], ids=["missing", "a_file", "a_dataset_parent_dir"])
def test_cli_missing_or_not_a_tfds_source_is_one_error_line(tmp_path, make_source, message):
    source = make_source(tmp_path / "src")
    out = converter_cli(source, os.fspath(tmp_path / "out"))
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    assert re.search(message, out.stderr) and source in out.stderr, out.stderr


def test_a_dir_without_or_with_a_broken_dataset_info_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a TFDS dataset, it has no "
                                                r"dataset_info\.json \(expected"):
        open_source(os.fspath(tmp_path))
    (tmp_path / "dataset_info.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"not a readable TFDS dataset \(ParseError: "):
        open_source(os.fspath(tmp_path))
