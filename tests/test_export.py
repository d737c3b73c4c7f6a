"""Export bundle (safetensors + config + norm stats + tokenizer + model card): written
atomically, loaded without Orbax, errors naming the tensor, a separate process acts."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from wallwm_jax.bundle import is_export_bundle
from wallwm_jax.export import WEIGHTS_FILE, export_from_checkpoint, flat_names, load_bundle
from wallwm_jax.models import wallwm

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
    assert sorted(os.listdir(path)) == ["README.md", "config.json", WEIGHTS_FILE,
                                        "norm_stats.json", "tokenizer.model"]
    card = open(os.path.join(path, "README.md")).read()
    assert "runs event" in card and "Cameras: image (32x32" in card and "State size 4" in card


def test_safetensors_holds_flat_documented_names(exported):
    from safetensors import safe_open

    path, params, _, _ = exported
    with safe_open(os.path.join(path, WEIGHTS_FILE), framework="numpy") as f:
        names = set(f.keys())
        assert f.metadata()["format"] == "wallwm_jax"
        kernel = f.get_tensor("action_out/kernel")
    assert names == set(flat_names(params))
    assert all("/" in n and "[" not in n for n in names)
    np.testing.assert_array_equal(kernel, np.asarray(params["action_out"]["kernel"]))


def test_mis_shaped_or_missing_tensor_names_key_and_shapes(exported, tmp_path):
    from safetensors.numpy import load_file, save_file

    path, _, config, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    tensors = load_file(str(broken / WEIGHTS_FILE))
    shape = tensors["action_out/kernel"].shape
    tensors["action_out/kernel"] = np.zeros((shape[0] + 1, shape[1]), np.float32)
    save_file(tensors, str(broken / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=(r"tensor 'action_out/kernel' has shape "
                                          rf"\({shape[0] + 1}, {shape[1]}\), the model expects "
                                          rf"\({shape[0]}, {shape[1]}\)")):
        load_bundle(str(broken))
    del tensors["action_out/kernel"]
    save_file(tensors, str(broken / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"tensor 'action_out/kernel' is missing .*expects "
                                         rf"shape \({shape[0]}, {shape[1]}\)"):
        load_bundle(str(broken))


def test_training_starts_from_an_export(exported):
    """`config.init_from` accepts the bundle: the loop reads its safetensors file."""
    from wallwm_jax.train import _init_params

    path, params, config, _ = exported
    assert is_export_bundle(path)
    abstract = jax.eval_shape(lambda: wallwm.init_params(config.model, jax.random.PRNGKey(0)))
    restored = _init_params(path, abstract)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_policy_holds_params_on_device(exported):
    """Loaded once onto the device: act() never copies the weights host -> device."""
    from wallwm_jax.policy import load_policy

    policy = load_policy(exported[0])
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(policy.params))


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
    with pytest.raises(FileNotFoundError, match="is missing model.safetensors, tokenizer.model"):
        load_bundle(str(broken))


def test_export_cli_from_checkpoint_bfloat16_with_evaluations(exported):
    path, params, config, root = exported
    out = root / "from_ckpt_bf16"
    run = subprocess.run([sys.executable, "-m", "wallwm_jax.export", "--checkpoint_dir",
                          str(root / "run" / "checkpoints"), "--out", str(out),
                          "--dtype", "bfloat16"], capture_output=True, text=True, cwd=REPO,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == str(out)
    assert os.path.getsize(out / WEIGHTS_FILE) < 0.6 * os.path.getsize(
        os.path.join(path, WEIGHTS_FILE))
    loaded, loaded_config, stats, _ = load_bundle(str(out))
    assert loaded_config.data.image_size == config.data.image_size
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        assert b.dtype == np.float32  # stored bfloat16, loaded as the model's float32
        want = np.asarray(jax.numpy.asarray(a, jax.numpy.bfloat16).astype(np.float32))
        np.testing.assert_array_equal(np.asarray(b), want)
    card = (out / "README.md").read_text()
    assert "step 3 of 3 steps" in card and "stored as bfloat16" in card
    assert "closed_loop/step_3/results.json: suite demo, mode event" in card


def test_export_from_checkpoint_matches_trained_params(exported):
    path, params, _, root = exported
    again = export_from_checkpoint(str(root / "run" / "checkpoints"), str(root / "from_ckpt"))
    loaded, _, stats, _ = load_bundle(again)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, _, want_stats, _ = load_bundle(path)
    np.testing.assert_allclose(stats["action"]["std"], want_stats["action"]["std"])


def test_export_cli_bad_input_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "wallwm_jax.export", "--checkpoint_dir",
                          str(tmp_path / "nope"), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: --checkpoint_dir {tmp_path / 'nope'}: no such directory"
