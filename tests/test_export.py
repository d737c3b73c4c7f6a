"""Export bundle: written atomically, loaded by a separate process that acts."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from wallwm_jax.export import export_bundle, export_from_checkpoint, load_bundle
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
    return path, result["params"], config, root


def test_bundle_round_trips_params(exported):
    path, params, config, _ = exported
    loaded, loaded_config, stats, tokenizer = load_bundle(path)
    assert loaded_config.model.to_dict() == config.model.to_dict()
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert os.path.exists(tokenizer) and "action" in stats


def test_fresh_process_acts_with_documented_shape(exported):
    path, _, config, _ = exported
    out = subprocess.run([sys.executable, "-m", "wallwm_jax.policy", "--export", path,
                          "--task", "reach-v3"], capture_output=True, text=True, cwd=REPO,
                         timeout=600, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    n, a = result["actions_shape"]
    assert 1 <= n <= config.data.max_event_len and a == 4
    assert result["chunk_shape"] == [config.data.max_event_len, 4]
    assert np.all(np.isfinite(result["first_action"]))


def test_incomplete_export_is_named(exported, tmp_path):
    path, _, _, _ = exported
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "norm_stats.json"):
        (broken / name).write_bytes(open(os.path.join(path, name), "rb").read())
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        load_bundle(str(broken))


def test_export_from_checkpoint_matches_trained_params(exported):
    path, params, config, root = exported
    again = export_from_checkpoint(str(root / "run" / "checkpoints"), str(root / "from_ckpt"))
    loaded, loaded_config, stats, _ = load_bundle(again)
    assert loaded_config.data.image_size == config.data.image_size
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, _, want_stats, _ = load_bundle(path)
    np.testing.assert_allclose(stats["action"]["std"], want_stats["action"]["std"])


def test_evaluation_cli_writes_tables(exported, tmp_path):
    path, _, _, _ = exported
    subprocess.run([sys.executable, "-m", "wallwm_jax.evaluation", "--export", path,
                    "--tasks", "reach-v3", "--episodes_per_task", "1", "--max_steps", "16",
                    "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                   timeout=600, check=True)
    results = json.loads((tmp_path / "closed_loop.json").read_text())
    assert set(results) == {"reach-v3"}
    assert results["reach-v3"]["policy_steps"] == 16  # an untrained policy uses every step
    assert "| reach-v3 |" in (tmp_path / "closed_loop.md").read_text()
