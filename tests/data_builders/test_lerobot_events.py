"""LeRobot v3 -> event dataset, on a dataset written by lerobot's own writer
(testdata/lerobot_tiny, from testdata/make_lerobot_tiny.py): episodes, events, frames and
stats as in the source; errors name the key; a two-camera model trains on the result."""

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_builders.lerobot_events import build
from data_builders.rlds_events.mapping import KeyMapping
from wallwm_jax.data.episodes import open_dataset

SOURCE = os.path.join(os.path.dirname(__file__), "testdata", "lerobot_tiny")
MAPPING = KeyMapping(image_keys=("observation.images.top", "observation.images.wrist"),
                     state_key="observation.state", action_key="action", gripper_index=3,
                     instruction_key="task")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return build(SOURCE, str(tmp_path_factory.mktemp("lerobot_out")), MAPPING)


def _source_frames():
    table = pq.read_table(os.path.join(SOURCE, "data", "chunk-000", "file-000.parquet"))
    return table.to_pydict()


def test_episodes_events_and_frames_match_the_source(converted):
    report = json.load(open(os.path.join(converted, "build_report.json")))
    assert report["source_episodes"] == 2 and report["episodes"] == {"train": 1, "val": 1}
    src = _source_frames()
    tasks = pq.read_table(os.path.join(SOURCE, "meta", "tasks.parquet")).to_pydict()
    by_index = dict(zip(tasks["task_index"], tasks["__index_level_0__"], strict=True))
    seen = set()
    for split in ("train", "val"):
        ep = open_dataset(converted, split)[0]
        first = ep["steps/action"][0].tolist()  # the scripted episodes start differently
        e = next(src["episode_index"][i] for i, a in enumerate(src["action"])
                 if src["frame_index"][i] == 0 and np.allclose(a, first))
        seen.add(e)
        rows = [i for i, x in enumerate(src["episode_index"]) if x == e]
        np.testing.assert_array_equal(ep["steps/action"],
                                      np.asarray([src["action"][i] for i in rows], np.float32))
        np.testing.assert_array_equal(ep["steps/observation/state"], np.asarray(
            [src["observation.state"][i] for i in rows], np.float32))
        for ours, theirs in (("image", "observation.images.top"),
                             ("image_wrist", "observation.images.wrist")):
            want = np.asarray(Image.open(io.BytesIO(src[theirs][rows[5]]["bytes"])))
            np.testing.assert_array_equal(ep[f"steps/observation/{ours}"][5], want)
        assert ep["episode_metadata/instruction"] == by_index[src["task_index"][rows[0]]]
        starts, ends = ep["events/start"], ep["events/end"]
        assert len(starts) >= 2 and starts[0] == 0 and ends[-1] == len(rows)
        assert "close the gripper" in ep["events/caption"]  # the grasp is an event
    assert seen == {0, 1}
    for name in ("norm_stats.json", "tokenizer.model"):
        assert os.path.exists(os.path.join(converted, name))


def test_missing_key_lists_the_available_ones(tmp_path):
    bad = KeyMapping(image_keys=("observation.images.front",), state_key="observation.state",
                     action_key="action", gripper_index=3, instruction_key="task")
    with pytest.raises(ValueError, match=r"observation.images.front: missing \(an image key\); "
                                         r"available keys: \['action', 'episode_index'.*"
                                         r"'observation.images.top'.*'task'\]"):
        build(SOURCE, str(tmp_path), bad)
    with pytest.raises(ValueError, match="expected the gripper index 4 to be < 4"):
        build(SOURCE, str(tmp_path), KeyMapping(image_keys=("observation.images.top",),
                                                state_key="observation.state",
                                                action_key="action", gripper_index=4))


def test_two_camera_model_trains_on_the_converted_data(converted, tmp_path):
    from experiments.pretrain import get_config
    from wallwm_jax.train import train_and_evaluate

    config = get_config("size=tiny,mode=event")
    config.data.data_dir = converted
    config.data.image_size = 32
    config.data.cameras = ("image", "image_wrist")
    config.model.cameras = 2
    config.batch_size, config.total_steps, config.checkpoint.every_steps = 8, 3, 3
    result = train_and_evaluate(config, str(tmp_path / "run"))
    assert result["last_step"] == 3
    assert all(np.isfinite(v) for v in result["losses"])
