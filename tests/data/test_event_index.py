"""Event index: one row per event, the documented embedding, determinism, storage checks."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from wallwm_jax.data import event_index as ei
from wallwm_jax.data import statistics
from wallwm_jax.data.episodes import LazyFrames, open_dataset
from wallwm_jax.data.event_embedding import resample_trajectory

TEXT_DIMS, TRAJ_POINTS, K = 8, 8, 4


@pytest.fixture(scope="module")
def table(tiny_dataset):
    return ei.build_event_index(tiny_dataset, "train", num_clusters=K, text_dims=TEXT_DIMS,
                                traj_points=TRAJ_POINTS, seed=0)


@pytest.fixture(scope="module")
def episodes(tiny_dataset):
    source = open_dataset(tiny_dataset, "train")
    return [source[e] for e in range(len(source))]


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
    """A private copy of the tiny dataset, for tests that write an index next to it."""
    return shutil.copytree(tiny_dataset, tmp_path / "dataset", dirs_exist_ok=False,
                           ignore=shutil.ignore_patterns("event_index_*")).as_posix()


def test_one_row_per_event_in_episode_order(table, episodes, tiny_dataset):
    expected = [(e, k, int(ep["events/start"][k]), int(ep["events/end"][k]),
                 ep["events/phase"][k], ep["events/caption"][k], ep["episode_metadata/task"])
                for e, ep in enumerate(episodes) for k in range(len(ep["events/start"]))]
    got = list(zip(table.episode.tolist(), table.event.tolist(), table.start.tolist(),
                   table.end.tolist(), table.phase.tolist(), table.caption.tolist(),
                   table.task.tolist(), strict=True))
    assert got == expected
    assert table.num_episodes == len(episodes) and table.split == "train"
    # Same rows, same order as the pipeline's index, so event_probs from this table line up.
    from wallwm_jax.data.pipeline import scan_events as pipeline_index

    pipe, mine = pipeline_index(open_dataset(tiny_dataset, "train")), table.as_event_index()
    for name in ("episode", "event", "start", "end"):
        np.testing.assert_array_equal(getattr(mine, name), getattr(pipe, name))


def test_episodes_read_without_decoding_images(tiny_dataset, episodes):
    for ep, fast in zip(episodes, ei.read_episodes_without_images(tiny_dataset, "train"),
                        strict=True):
        np.testing.assert_array_equal(fast["steps/action"], ep["steps/action"])
        np.testing.assert_array_equal(fast["steps/observation/state"],
                                      ep["steps/observation/state"])
        frames = fast["steps/observation/image"]
        assert len(frames) == len(ep["steps/action"])
        assert isinstance(frames, LazyFrames)  # frames stay PNG bytes until indexed
        assert all(isinstance(b, bytes) and b.startswith(b"\x89PNG") for b in frames._encoded)


def test_embeddings_are_weighted_unit_blocks(table):
    n = len(table)
    assert table.embeddings.shape == (n, TEXT_DIMS + TRAJ_POINTS * 8)
    assert table.embeddings.dtype == np.float32 and np.isfinite(table.embeddings).all()
    text, behaviour = table.embeddings[:, :TEXT_DIMS], table.embeddings[:, TEXT_DIMS:]
    # text_weight=0.5: each block is L2-normalised, then scaled by sqrt(0.5).
    np.testing.assert_allclose(np.linalg.norm(behaviour, axis=1), np.sqrt(0.5), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), np.sqrt(0.5), rtol=1e-5)


def test_equal_captions_get_equal_text_features(table):
    captions = table.caption.tolist()
    repeated = [c for c in set(captions) if captions.count(c) > 1]
    assert repeated, "tiny dataset should repeat some caption paraphrases"
    for c in repeated:
        rows = table.embeddings[table.caption == c, :TEXT_DIMS]
        np.testing.assert_allclose(rows, np.broadcast_to(rows[0], rows.shape), atol=1e-6)
    distinct = table.embeddings[:, :TEXT_DIMS][np.unique(captions, return_index=True)[1]]
    assert len(np.unique(distinct.round(4), axis=0)) > 1


def _by_hand_resample(x: np.ndarray, points: int) -> np.ndarray:
    pos = np.arange(points) * (len(x) - 1) / (points - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(x) - 1)
    frac = (pos - lo)[:, None]
    return (1 - frac) * x[lo] + frac * x[hi]


def test_resample_trajectory_is_linear_interpolation():
    np.testing.assert_allclose(resample_trajectory(np.array([[0.0], [1.0], [2.0]]), 5),
                               [[0.0], [0.5], [1.0], [1.5], [2.0]])
    np.testing.assert_allclose(resample_trajectory(np.array([[3.0, -1.0]]), 4),
                               np.tile([3.0, -1.0], (4, 1)))
    with pytest.raises(ValueError, match="non-empty"):
        resample_trajectory(np.zeros((0, 4)), 4)


def test_behaviour_block_is_the_normalised_resampled_trajectory(table, episodes, tiny_dataset):
    stats = statistics.load_norm_stats(tiny_dataset)
    for row in (0, len(table) - 1):
        ep = episodes[table.episode[row]]
        s, t = table.start[row], table.end[row]
        a = (ep["steps/action"][s:t] - stats["action"]["mean"]) / (stats["action"]["std"] + 1e-6)
        x = ep["steps/observation/state"][s:t]
        x = (x - stats["state"]["mean"]) / (stats["state"]["std"] + 1e-6)
        expected = _by_hand_resample(np.concatenate([a, x], 1).astype(np.float64),
                                     TRAJ_POINTS).reshape(-1)
        expected *= np.sqrt(0.5) / np.linalg.norm(expected)
        np.testing.assert_allclose(table.embeddings[row, TEXT_DIMS:], expected, atol=1e-5)


def test_build_is_deterministic_for_a_seed(table, tiny_dataset):
    again = ei.build_event_index(tiny_dataset, "train", num_clusters=K, text_dims=TEXT_DIMS,
                                 traj_points=TRAJ_POINTS, seed=0)
    np.testing.assert_array_equal(again.embeddings, table.embeddings)
    np.testing.assert_array_equal(again.cluster, table.cluster)


def test_cluster_ids_in_range_and_every_cluster_used(table, tiny_dataset):
    assert table.cluster.min() >= 0 and table.cluster.max() < K
    assert len(np.unique(table.cluster)) == K
    with pytest.raises(ValueError, match=rf"num_clusters=100 must be in \[1, {len(table)}\]"):
        ei.build_event_index(tiny_dataset, num_clusters=100)


def test_save_load_round_trip_next_to_dataset(table, dataset_copy):
    path = ei.save(table, dataset_copy)
    assert path == f"{dataset_copy}/event_index_train.npz"
    loaded = ei.load_event_index(dataset_copy, "train")
    for field in dataclasses.fields(ei.EventIndexTable):
        a, b = getattr(loaded, field.name), getattr(table, field.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype, field.name
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b, field.name


def test_missing_index_error_names_the_file(dataset_copy):
    with pytest.raises(FileNotFoundError, match=f"{dataset_copy}/event_index_train.npz"):
        ei.load_event_index(dataset_copy, "train")


def test_index_of_other_data_is_stale(tiny_dataset, dataset_copy):
    val = ei.build_event_index(tiny_dataset, "val", num_clusters=2, text_dims=4)
    ei.save(dataclasses.replace(val, split="train"), dataset_copy)
    with pytest.raises(ValueError, match=rf"stale event index {dataset_copy}/event_index_train"
                                         rf"\.npz: it has {val.num_episodes} episodes"):
        ei.load_event_index(dataset_copy, "train")


def test_index_with_same_counts_but_other_rows_is_stale(table, dataset_copy):
    ei.save(dataclasses.replace(table, end=table.end + 1), dataset_copy)
    with pytest.raises(ValueError, match=r"event_index_train\.npz.*row 0 is"):
        ei.load_event_index(dataset_copy, "train")


def test_cli_builds_stores_and_summarises(dataset_copy, capsys):
    summary = ei.build_and_save(dataset_copy, clusters=3, text_dims=4)
    out = capsys.readouterr().out
    table = ei.load_event_index(dataset_copy, "train")
    assert len(np.unique(table.cluster)) == 3 and table.build_args["num_clusters"] == 3
    assert f"events {len(table)} in {table.num_episodes} episodes" in out
    assert sum(summary["sizes"].values()) == len(table)
    majority = sum(np.unique(table.phase[table.cluster == c], return_counts=True)[1].max()
                   for c in range(3))
    assert summary["phase_purity"] == pytest.approx(majority / len(table))
    assert f"phase purity (events in their cluster's majority phase): " \
           f"{majority / len(table):.3f}" in out


# ----------------------------------------------------------------- built with the data


def test_builder_writes_the_index_training_reads(tiny_dataset):
    for split in ("train", "val"):
        table = ei.load_event_index(tiny_dataset, split)  # rows match the dataset
        assert table.fingerprint == ei.dataset_fingerprint(tiny_dataset, split)
    table = ei.load_for_training(tiny_dataset, "train", ei.DEFAULT_CLUSTERS)
    assert table.build_args["num_clusters"] == min(ei.DEFAULT_CLUSTERS, len(table))


def test_training_never_builds_a_missing_index(tiny_config, dataset_copy):
    from wallwm_jax.data.pipeline import make_pipeline

    tiny_config.data.data_dir = dataset_copy
    command = f"python -m wallwm_jax.data.event_index {dataset_copy} --split train --clusters 16"
    with pytest.raises(FileNotFoundError, match=re.escape(command)):
        make_pipeline(tiny_config.data, global_batch=8, seed=0)
    assert not [f for f in os.listdir(dataset_copy) if f.startswith("event_index")]


def test_stale_index_and_other_k_are_errors_with_the_command(tiny_dataset, dataset_copy):
    ei.build_all(dataset_copy, num_clusters=4, splits=("train",))
    table = ei.load_for_training(dataset_copy, "train", 4)
    with pytest.raises(ValueError, match=r"data.num_clusters=5 .* has 4 clusters.*"
                                         r"--split train --clusters 5"):
        ei.load_for_training(dataset_copy, "train", 5)
    info_path = os.path.join(dataset_copy, "dataset_info.json")
    info = json.loads(open(info_path).read())
    info["splits"][0]["numBytes"] = str(int(info["splits"][0]["numBytes"]) + 1)  # rebuilt data
    with open(info_path, "w") as f:
        json.dump(info, f)
    with pytest.raises(ValueError, match=r"stale event index .*"
                                         + re.escape(f"event_index {dataset_copy} --split train")):
        ei.load_for_training(dataset_copy, "train", 4)
    assert ei.ensure_built(dataset_copy, num_clusters=4) == {
        "train": os.path.join(dataset_copy, "event_index_train.npz"),
        "val": os.path.join(dataset_copy, "event_index_val.npz")}
    assert ei.load_for_training(dataset_copy, "train", 4).fingerprint != table.fingerprint


def test_event_index_imports_without_the_pipeline():
    code = ("import sys, wallwm_jax.data.event_index as e; "
            "assert 'wallwm_jax.data.pipeline' not in sys.modules; "
            "from wallwm_jax.data.sampler import EventIndex; assert EventIndex is e.EventIndex")
    subprocess.run([sys.executable, "-c", code], check=True)
