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
