"""Export bundle: written atomically, loaded by a separate process that acts."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from wallwm_jax.export import export_bundle, load_bundle
from wallwm_jax.train import train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(tiny_dataset, tmp_path_factory):
    from experiments.pretrain import get_config

    config = get_config("size=tiny,mode=event")
    config.data.data_dir = tiny_dataset
    config.data.image_size = 32
    config.batch_size = 8
    config.total_steps = 2
    root = tmp_path_factory.mktemp("export")
    result = train_and_evaluate(config, str(root / "run"))
    path = export_bundle(str(root / "export"), result["params"], config, result["norm_stats"],
                         os.path.join(tiny_dataset, "tokenizer.model"))
    return path, result["params"], config


def test_bundle_round_trips_params(exported):
    path, params, config = exported
    loaded, loaded_config, stats, tokenizer = load_bundle(path)
    assert loaded_config.model.to_dict() == config.model.to_dict()
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert os.path.exists(tokenizer) and "action" in stats


def test_fresh_process_acts_with_documented_shape(exported):
    path, _, config = exported
    out = subprocess.run([sys.executable, "-m", "wallwm_jax.policy", "--export", path,
                          "--task", "reach-v3"], capture_output=True, text=True, cwd=REPO,
                         timeout=600, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    n, a = result["actions_shape"]
    assert 1 <= n <= config.data.max_event_len and a == 4
    assert result["chunk_shape"] == [config.data.max_event_len, 4]
    assert np.all(np.isfinite(result["first_action"]))


def test_incomplete_export_is_named(exported, tmp_path):
    path, _, _ = exported
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "norm_stats.json"):
        (broken / name).write_bytes(open(os.path.join(path, name), "rb").read())
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        load_bundle(str(broken))
