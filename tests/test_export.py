"""Export bundle: written atomically, loaded by a separate process that acts."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from wallwm_jax.export import export_from_checkpoint, load_bundle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(trained_policies):
    trained = trained_policies["event"]
    return trained.export, trained.result["params"], trained.config, trained.root


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
