"""The step store: the same episodes, samples and batches as the TFDS episode records."""

import json
import os
import shutil

import cloudpickle
import jax
import numpy as np
import pytest

from tests.configs import tiny_config
from wallwm_jax import cli
from wallwm_jax.data import step_store
from wallwm_jax.data.episodes import open_dataset
from wallwm_jax.data.pipeline import make_pipeline
from wallwm_jax.data.sampler import make_sampler


@pytest.fixture(scope="module")
def stored(tiny_dataset, tmp_path_factory):
    """A copy of the tiny dataset given a step store by the MetaWorld builder's `step_store`
    (the build is found finished: no rollout runs, only the store is written)."""
    config_dir = os.path.dirname(tiny_dataset)  # <root>/metaworld_events/<config>/<version>
    root = tmp_path_factory.mktemp("stored")
    shutil.copytree(config_dir, root / "metaworld_events" / os.path.basename(config_dir),
                    ignore=shutil.ignore_patterns(step_store.STORE_DIR))
    from data_builders.metaworld_events import build

    out = build(str(root), config="demo", tasks=("reach-v3", "push-v3"), episodes_per_task=4,
                image_size=32, seed=0, num_workers=1, step_store=True)
    assert out == str(root / "metaworld_events" / os.path.basename(config_dir)
                      / os.path.basename(tiny_dataset))
    return out


def _same(a, b, what: str) -> None:
    assert set(a) == set(b), what
    for name in a:
        x, y = a[name], b[name]
        if isinstance(x, (str, bool, list)):
            assert x == y, f"{what} {name}"
        else:
            x, y = np.asarray(x), np.asarray(y)
            assert x.dtype == y.dtype and x.shape == y.shape, f"{what} {name}"
            np.testing.assert_array_equal(x, y, err_msg=f"{what} {name}")


def test_store_holds_every_episode_as_the_records_do(stored):
    info = step_store.read_info(stored)
    assert info["format"] == step_store.FORMAT and set(info["splits"]) == {"train", "val"}
    for split in ("train", "val"):
        old, new = (open_dataset(stored, split, step_store=s) for s in (False, None))
        assert old.store is None and new.store is not None and len(old) == len(new)
        assert info["splits"][split]["steps"] == sum(len(old[e]["steps/action"])
                                                     for e in range(len(old)))
        for e in range(len(old)):
            a, b = old[e], new[e]
            assert type(b["steps/observation/image"]).__name__ == "StoredFrames"
            _same(a, b, f"{split} episode {e}")
            frames = b["steps/observation/image"]
            np.testing.assert_array_equal(frames[-1], np.asarray(a["steps/observation/image"])[-1])


@pytest.mark.parametrize("layout", ["event", "unified"])
def test_cold_samples_equal_the_episode_layouts(tiny_dataset, stored, layout):
    cfg = tiny_config(tiny_dataset).data
    cfg.layout = layout
    old = make_sampler(cfg, tiny_dataset, "train", seed=5, augment=True)
    new = make_sampler(cfg, stored, "train", seed=5, augment=True)
    assert old.source.store is None and new.source.store is not None
    new = cloudpickle.loads(cloudpickle.dumps(new))  # as a Grain worker gets it
    for sampler in (old, new):
        sampler.cache_size = 0  # cold: every sample reads its episode
    for i in range(12):
        _same(old(i), new(i), f"sample {i}")


def test_batches_equal_the_episode_layouts(tiny_dataset, stored):
    batches = []
    for data_dir in (tiny_dataset, stored):
        cfg = tiny_config(data_dir).data
        pipe = make_pipeline(cfg, global_batch=8, seed=3)
        batches.append([next(pipe) for _ in range(2)])
    for x, y in zip(*batches, strict=True):
        for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_store_of_another_build_is_refused(stored, tmp_path):
    info = step_store.read_info(stored)
    info["splits"]["train"]["episodes"] += 1
    (tmp_path / step_store.STORE_DIR).mkdir()
    (tmp_path / step_store.STORE_DIR / step_store.STORE_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="split 'train' has 7 episodes in the step store but "
                                         "6 in the dataset"):
        step_store.open_store(str(tmp_path), "train", 6)
    assert step_store.open_store(str(tmp_path), "test", 6) is None


def test_command_names_a_directory_without_a_dataset(tmp_path):
    with pytest.raises(cli.UserError, match="no built dataset"):
        step_store.main(["step_store", str(tmp_path)])


@pytest.mark.parametrize("kind", ["episodes", "frames"])
def test_a_damaged_store_file_is_named(stored, tmp_path, kind):
    """Overwritten bytes in a store file (the episode records, or a frame's) fail the read
    with an error naming the file, not a wrong sample."""
    copy = str(tmp_path / "dataset")
    shutil.copytree(stored, copy)
    path = os.path.join(step_store.store_dir(copy), f"train-{kind}.array_record")
    with open(path, "r+b") as f:  # the first records' chunks: zeros over their data
        f.seek(64)
        f.write(b"\0" * 4096)
    source = open_dataset(copy, "train")
    with pytest.raises(ValueError, match=f"step store file {path} is damaged"):
        for e in range(len(source)):
            np.asarray(source[e]["steps/observation/image"][:4])


@pytest.fixture(scope="module")
def ended(stored, tmp_path_factory):
    """A copy of `stored` given the event-end frames at the tiny config's world size by the
    MetaWorld builder's `end_frame_size` (the build is found finished: only they are written)."""
    world = int(tiny_config(stored).data.world_size)
    config_dir = os.path.dirname(stored)  # <root>/metaworld_events/<config>/<version>
    root = tmp_path_factory.mktemp("ended")
    version = root / "metaworld_events" / os.path.basename(config_dir) / os.path.basename(stored)
    shutil.copytree(config_dir, version.parent)
    from data_builders.metaworld_events import build

    out = build(str(root), config="demo", tasks=("reach-v3", "push-v3"), episodes_per_task=4,
                image_size=32, seed=0, num_workers=1, step_store=True, end_frame_size=world)
    assert out == str(version)
    return out


def _copy_store(dataset: str, tmp_path) -> str:
    copy = str(tmp_path / "dataset")
    shutil.copytree(dataset, copy)
    return copy


def test_end_frames_are_the_resized_last_frames(ended):
    world = int(tiny_config(ended).data.world_size)
    info = step_store.read_info(ended)
    assert info["format"] == step_store.FORMAT and info["end_frame_sizes"] == [world]
    for split in ("train", "val"):
        source = open_dataset(ended, split)
        assert set(source.store.end_frames) == {world}
        for e in range(len(source)):
            ep = source[e]
            frames = ep["steps/observation/image"]
            for k, end in enumerate(ep["events/end"]):
                want = step_store.resize_rgb(np.asarray(frames[int(end) - 1]), world)
                got = frames.end_frame(k, world)
                assert got.dtype == np.uint8 and got.flags.writeable
                np.testing.assert_array_equal(got, want, err_msg=f"{split} {e} event {k}")
                assert frames.end_frame(k, world + 1) is None


@pytest.mark.parametrize("layout", ["event", "unified"])
def test_samples_with_end_frames_equal_those_without(stored, ended, layout):
    """Cold (through a pickle, as a Grain worker gets the sampler) and warm: every field."""
    cfg = tiny_config(stored).data
    cfg.layout = layout
    old = make_sampler(cfg, stored, "train", seed=5, augment=True)
    new = cloudpickle.loads(cloudpickle.dumps(make_sampler(cfg, ended, "train", seed=5,
                                                           augment=True)))
    assert not old.source.store.end_frames and new.source.store.end_frames
    for cache in (0, 64):
        old.cache_size = new.cache_size = cache
        for i in range(12):
            _same(old(i), new(i), f"cache {cache} sample {i}")


def test_the_sampler_reads_the_stored_end_frames(ended, tmp_path):
    """Zeroed stored end frames give zero world targets (they are read, not recomputed)."""
    copy = _copy_store(ended, tmp_path)
    cfg = tiny_config(copy).data
    path = step_store.end_frames_path(step_store.store_dir(copy), "train", cfg.world_size)
    zeroed = np.load(path, mmap_mode="r+")
    zeroed[:] = 0
    zeroed.flush()
    del zeroed
    sampler = make_sampler(cfg, copy, "train", seed=5)
    sampler.cache_size = 0
    assert all(not sampler(i)["end_image"].any() for i in range(4))


def test_end_frames_of_another_size_fall_back(stored, tmp_path):
    """End frames at a size the config does not use are ignored: the frame is resized."""
    copy = _copy_store(stored, tmp_path)
    cfg = tiny_config(copy).data
    other = int(cfg.world_size) + 3
    info = step_store.write_step_store(copy, [other])
    assert info["end_frame_sizes"] == [other] and step_store.read_info(copy) == info
    old, new = (make_sampler(cfg, d, "train", seed=2) for d in (stored, copy))
    assert set(new.source.store.end_frames) == {other}
    new.cache_size = 0
    for i in range(6):
        _same(old(i), new(i), f"sample {i}")


def test_end_frame_size_without_the_store_is_refused(tmp_path):
    from data_builders.metaworld_events import build

    with pytest.raises(ValueError, match="needs step_store=True"):
        build(str(tmp_path), end_frame_size=16)
