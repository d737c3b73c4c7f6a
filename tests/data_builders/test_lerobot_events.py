"""LeRobot v3 -> event dataset, on datasets written by lerobot's own writer
(testdata/lerobot_tiny with image cameras, testdata/lerobot_tiny_video with AV1 video
cameras; make_lerobot_tiny*.py wrote them): episodes, events, frames and stats as in the
source; errors name the key or the video file; a two-camera model trains on the result."""

import io
import json
import os
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_builders.lerobot_events import build
from data_builders.rlds_events.mapping import KeyMapping
from wallwm_jax.data.episodes import open_dataset

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
SOURCE = os.path.join(TESTDATA, "lerobot_tiny")
VIDEO_SOURCE = os.path.join(TESTDATA, "lerobot_tiny_video")
VIDEO_FRAMES = os.path.join(TESTDATA, "lerobot_tiny_video_frames.npz")  # what the writer got
VIDEO_FILE = "videos/{}/chunk-000/file-000.mp4"
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


# tests/test_mixture.py trains a two-camera model on a converted LeRobot dataset (lerobot_arm7)
# under 8 devices, beside MetaWorld: the same path, in a fixture the suite builds anyway.
@pytest.mark.slow
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


@pytest.fixture(scope="module")
def converted_video(tmp_path_factory):
    return build(VIDEO_SOURCE, str(tmp_path_factory.mktemp("lerobot_video_out")), MAPPING)


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of [T, H, W, 3] uint8 frames."""
    mse = ((a.astype(np.float64) - b) ** 2).mean(axis=(1, 2, 3))
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def test_video_frames_decode_to_the_frames_the_writer_was_given(converted_video):
    # lerobot encodes RGB as yuv420p AV1 at crf 30 (its defaults), so no exact match is
    # possible: each frame must be >= 20 dB (30 dB on average) from its source frame, while
    # a frame one step off is < 15 dB away (each frame has its own band, see the script).
    info = json.load(open(os.path.join(VIDEO_SOURCE, "meta", "info.json")))
    assert info["features"]["observation.images.top"]["info"]["video.codec"] == "av1"
    report = json.load(open(os.path.join(converted_video, "build_report.json")))
    assert report["source_episodes"] == 2 and report["episodes"] == {"train": 1, "val": 1}
    src = pq.read_table(os.path.join(VIDEO_SOURCE, "data", "chunk-000",
                                     "file-000.parquet")).to_pydict()
    given = np.load(VIDEO_FRAMES)
    seen = set()
    for split in ("train", "val"):
        ep = open_dataset(converted_video, split)[0]
        first = ep["steps/action"][0].tolist()
        e = next(src["episode_index"][i] for i, a in enumerate(src["action"])
                 if src["frame_index"][i] == 0 and np.allclose(a, first))
        seen.add(e)
        rows = [src["index"][i] for i, x in enumerate(src["episode_index"]) if x == e]
        for ours, theirs in (("image", "observation.images.top"),
                             ("image_wrist", "observation.images.wrist")):
            got = np.stack([ep[f"steps/observation/{ours}"][t] for t in range(len(rows))])
            want = given[theirs][rows]
            assert got.shape == want.shape == (30, 32, 32, 3) and got.dtype == np.uint8
            own = _psnr(got, want)
            assert own.min() >= 20 and own.mean() >= 30, (theirs, e, own.round(1))
            assert _psnr(got[1:], want[:-1]).max() < 15 and _psnr(got[:-1], want[1:]).max() < 15
        assert len(ep["events/start"]) >= 2
    assert seen == {0, 1}


def test_missing_or_undecodable_video_is_named(tmp_path):
    source = str(tmp_path / "src")
    shutil.copytree(VIDEO_SOURCE, source)
    top = os.path.join(source, VIDEO_FILE.format("observation.images.top"))
    wrist = os.path.join(source, VIDEO_FILE.format("observation.images.wrist"))
    os.remove(top)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{top}: missing video file")):
        build(source, str(tmp_path / "out1"), MAPPING)
    shutil.copy(os.path.join(VIDEO_SOURCE, VIDEO_FILE.format("observation.images.top")), top)
    # Retag the AV1 track with a codec FFmpeg does not know: what a PyAV without an AV1
    # decoder sees.
    with open(wrist, "rb") as f:
        data = f.read()
    assert data.count(b"av01") >= 1  # the sample entry (and maybe a brand in ftyp)
    with open(wrist, "wb") as f:
        f.write(data.replace(b"av01", b"zzzz"))
    with pytest.raises(RuntimeError, match=re.escape(wrist) + r": codec av1 cannot be decoded by "
                                           r"this PyAV .*pip install \"wallwm_jax\[lerobot\]\""):
        build(source, str(tmp_path / "out2"), MAPPING)
    with open(wrist, "wb") as f:
        f.write(b"\0" * len(data))
    with pytest.raises(RuntimeError, match=re.escape(f"{wrist}: cannot decode")):
        build(source, str(tmp_path / "out3"), MAPPING)


def test_cli_keeps_tfds_bars_and_notices_for_verbosity(tmp_path):
    # The converter's report says what happened; TFDS's progress bars ("Generating splits")
    # and its notices (e.g. "Using custom data configuration") only with --verbosity.
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outs = {}
    for name, extra in (("default", []), ("verbose", ["--verbosity=0"])):
        out = subprocess.run(
            [sys.executable, "-m", "data_builders.lerobot_events", "--source", SOURCE,
             "--data_dir", str(tmp_path / name), "--gripper_index", "3", *extra],
            capture_output=True, text=True, cwd=repo, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "train 1, val 1 episodes from 2 source episodes" in out.stdout
        outs[name] = out
    assert outs["default"].stderr == ""
    verbose = outs["verbose"].stderr
    assert "Generating splits" in verbose and "Using custom data configuration" in verbose
