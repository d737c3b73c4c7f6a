"""Dataset inspection CLI: summary numbers equal direct counts; the pictures are real PNGs."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from wallwm_jax.data import event_index as ei
from wallwm_jax.data import inspect as inspect_lib
from wallwm_jax.data.episodes import open_dataset


@pytest.fixture(scope="module")
def dataset_copy(tiny_dataset, tmp_path_factory):
    """A private copy of the tiny dataset: inspect stores a missing event index next to it."""
    dst = tmp_path_factory.mktemp("inspect") / "dataset"
    # Without any stored event index (training pipelines store one in the shared fixture).
    return shutil.copytree(tiny_dataset, dst, ignore=shutil.ignore_patterns(
        "event_index_*")).as_posix()


@pytest.fixture(scope="module")
def cli_run(dataset_copy, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("pictures").as_posix()
    assert not os.path.exists(ei.index_paths(dataset_copy, "train")[0])
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        result = inspect_lib.inspect_and_print(dataset_copy, out_dir, episode=1)
    return result, stdout.getvalue(), out_dir


def test_summary_equals_direct_counts(cli_run, dataset_copy):
    result, out, _ = cli_run
    source = open_dataset(dataset_copy, "train")
    eps = [source[e] for e in range(len(source))]
    per_episode = [len(ep["events/start"]) for ep in eps]
    durations = [int(t - s) for ep in eps
                 for s, t in zip(ep["events/start"], ep["events/end"], strict=True)]
    steps = sum(len(ep["steps/action"]) for ep in eps)
    s = result["summary"]
    assert (s["episodes"], s["steps"], s["events"]) == (len(eps), steps, sum(per_episode))
    assert s["events_per_episode"] == {"mean": pytest.approx(np.mean(per_episode)),
                                       "min": min(per_episode), "max": max(per_episode)}
    assert s["event_duration"]["min"] == min(durations)
    assert s["event_duration"]["max"] == max(durations)
    assert s["event_duration"]["mean"] == pytest.approx(np.mean(durations))
    assert s["event_duration"]["median"] == pytest.approx(np.median(durations))
    tasks, phases = {}, {}
    for ep in eps:
        tasks[ep["episode_metadata/task"]] = tasks.get(ep["episode_metadata/task"], 0) + 1
        for p in ep["events/phase"]:
            phases[p] = phases.get(p, 0) + 1
    assert s["tasks"] == tasks and s["phases"] == phases
    assert s["success_rate"] == pytest.approx(np.mean([ep["episode_metadata/success"]
                                                       for ep in eps]))
    assert f"{len(eps)} episodes, {steps} steps, {sum(per_episode)} events" in out
    assert f"min {min(durations)}, max {max(durations)}" in out


@pytest.mark.parametrize("name", ["film_strip", "histograms", "cluster_sizes", "embedding_pca"])
def test_pictures_are_nontrivial_pngs(cli_run, name):
    result, out, out_dir = cli_run
    path = result["pictures"][name]
    assert os.path.dirname(path) == out_dir and f"wrote {name}: {path}" in out
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"), np.float32)
    assert pixels.shape[0] >= 150 and pixels.shape[1] >= 300
    assert pixels.std() > 10.0  # not a blank canvas
    # More than a few colours: real plot content, not only axes.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_film_strip_shows_frames_of_every_event(cli_run, dataset_copy):
    ep = open_dataset(dataset_copy, "train")[1]
    steps = inspect_lib.film_strip_steps(ep["events/start"], ep["events/end"], 12)
    event_of = np.searchsorted(ep["events/end"], steps, side="right")
    assert set(event_of.tolist()) == set(range(len(ep["events/start"])))
    assert steps == sorted(steps) and steps[0] == 0


def test_missing_index_was_built_and_stored(cli_run, dataset_copy):
    result, out, _ = cli_run
    assert "built (missing) and saved" in out
    table = ei.load_event_index(dataset_copy, "train")
    assert result["event_index"]["clusters"] == len(np.unique(table.cluster)) == 4
    again = inspect_lib.inspect_dataset(dataset_copy, os.path.dirname(
        result["pictures"]["film_strip"]), episode=0)
    assert again["event_index_note"] == "loaded"


def test_episode_out_of_range_is_rejected(cli_run, dataset_copy, tmp_path):
    with pytest.raises(ValueError, match="--episode 99 is out of range"):
        inspect_lib.inspect_dataset(dataset_copy, tmp_path.as_posix(), episode=99)
