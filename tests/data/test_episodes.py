"""EpisodeSource: flat validated episodes; errors name the dataset, split, episode and field."""

import os

import numpy as np
import pytest

from wallwm_jax.data.episodes import (
    FEATURE_NAMES,
    EpisodeSource,
    open_dataset,
    validate_episode,
)


@pytest.fixture(scope="module")
def dataset_dir(tiny_dataset):
    """The session's MetaWorld dataset (reach and push, 32 px: 6 train / 2 val episodes)."""
    return tiny_dataset


@pytest.fixture(scope="module")
def episode(dataset_dir):
    return open_dataset(dataset_dir, "val")[0]  # a push episode: four events


def test_flat_record_format(dataset_dir, episode):
    source = open_dataset(dataset_dir, "train")
    assert isinstance(source, EpisodeSource) and source.dataset_dir == dataset_dir
    assert len(source) == 6 and len(open_dataset(dataset_dir, "val")) == 2
    assert set(episode) == set(FEATURE_NAMES)
    t = len(episode["steps/action"])
    assert episode["steps/observation/image"].shape == (t, 32, 32, 3)
    assert episode["steps/observation/image"].dtype == np.uint8
    for i in range(len(source)):  # every env in the building process rendered real frames
        assert np.asarray(source[i]["steps/observation/image"]).mean() > 50
    assert episode["steps/observation/state"].dtype == np.float32
    assert episode["steps/action"].shape == (t, 4)
    assert episode["steps/is_first"].dtype == np.bool_
    assert episode["events/start"].dtype == np.int32
    assert episode["episode_metadata/task"] == "push-v3"
    assert isinstance(episode["episode_metadata/instruction"], str)
    assert all(isinstance(c, str) for c in episode["events/caption"])
    assert episode["events/phase"] == ["reach", "grasp", "push", "hold"]
    assert episode["episode_metadata/success"] is True


def _broken(episode, **changes):
    bad = dict(episode)
    bad.update(changes)
    return bad


@pytest.mark.parametrize("field, change", [
    ("events/start", lambda e: {"events/start": e["events/start"] + np.eye(
        len(e["events/start"]), dtype=np.int32)[-1]}),  # gap before the last event
    ("events/end", lambda e: {"events/end": e["events/end"] - np.eye(
        len(e["events/end"]), dtype=np.int32)[-1]}),  # does not reach T
    ("steps/action", lambda e: {"steps/action": np.where(
        np.arange(len(e["steps/action"]))[:, None] == 3, np.nan, e["steps/action"])}),
    ("steps/observation/state", lambda e: {"steps/observation/state": np.full_like(
        e["steps/observation/state"], np.inf)}),
    ("steps/observation/image", lambda e: {"steps/observation/image": np.asarray(e[
        "steps/observation/image"])[:, :16]}),
    ("events/caption", lambda e: {"events/caption": e["events/caption"][:-1]}),
])
def test_validator_names_the_field(episode, field, change):
    validate_episode(episode, image_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=f"field '{field}'"):
        validate_episode(_broken(episode, **change(episode)), image_shape=(32, 32, 3))


def test_source_error_names_dir_split_index_and_field(dataset_dir):
    source = open_dataset(dataset_dir, "train")
    raw = source._source[0]
    raw["events"]["end"] = list(raw["events"]["end"])
    raw["events"]["end"][0] -= 1  # a hole between event 0 and event 1
    source._source = [raw, raw]
    with pytest.raises(ValueError) as err:
        source[1]
    message = str(err.value)
    assert dataset_dir in message and "'train'" in message and "episode 1" in message
    assert "field 'events/start'" in message and "tile" in message


def test_missing_dataset_and_split(tmp_path, dataset_dir):
    with pytest.raises(FileNotFoundError, match="dataset_info.json"):
        open_dataset(str(tmp_path))
    with pytest.raises(ValueError, match="test"):
        open_dataset(dataset_dir, "test")


def test_frames_decode_lazily_and_equal_the_eager_decode(dataset_dir):
    import tensorflow_datasets as tfds

    source = open_dataset(dataset_dir, "train")
    frames = source[0]["steps/observation/image"]
    eager = tfds.builder_from_directory(dataset_dir).as_data_source(split="train")[0]
    want = np.stack(eager["steps"]["observation"]["image"])
    assert frames.shape == want.shape
    np.testing.assert_array_equal(frames[3], want[3])
    np.testing.assert_array_equal(frames[-1], want[-1])
    np.testing.assert_array_equal(frames[2:5], want[2:5])
    np.testing.assert_array_equal(np.asarray(frames), want)


def test_corrupt_frame_names_episode_field_and_step(dataset_dir):
    source = open_dataset(dataset_dir, "train")
    raw = source._source[0]
    images = list(raw["steps"]["observation"]["image"])
    images[4] = images[4][:20]  # a truncated PNG
    raw["steps"]["observation"]["image"] = images
    source._source = [raw]
    frames = source[0]["steps/observation/image"]
    frames[3]  # intact frames still decode
    with pytest.raises(ValueError, match=r"episode 0 field 'steps/observation/image' step 4"):
        frames[4]


def test_corrupt_record_file_names_the_files_and_index(dataset_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dataset_dir, broken)
    [record] = [f for f in os.listdir(broken) if "-train.array_record" in f]
    path = broken / record
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 4096] = b"\x00" * 4096  # clobber the middle
    path.write_bytes(bytes(data))
    source = open_dataset(str(broken), "train")
    with pytest.raises(ValueError) as err:
        for i in range(len(source)):
            np.asarray(source[i]["steps/observation/image"])
    message = str(err.value)
    assert str(broken) in message and "episode" in message
    assert record in message or "step" in message
