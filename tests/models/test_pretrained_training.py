"""Training from a Hugging Face checkpoint by config (`config.model.pretrained`): the layout's
model fields are set before anything compiles, the report is written once, and a model
trained one step from the imported PaliGemma saves, exports and serves."""

import os

import jax
import numpy as np
import pytest

from tests.configs import tiny_config
from wallwm_jax import cli
from wallwm_jax.models import pretrained

PALIGEMMA = os.path.join(os.path.dirname(__file__), "testdata", "hf", "paligemma")


def _config(data_dir: str):
    """The tiny test config at the checkpoint's sizes, PaliGemma named as the backbone."""
    config = tiny_config(data_dir)
    config.model.update(pretrained.hf_model_fields(PALIGEMMA))
    config.model.backbone_family = "wallwm"  # resolving the layout must set "gemma"
    config.model.pretrained.update(backbone=PALIGEMMA, backbone_layout="paligemma")
    return config


def test_one_step_from_paligemma_saves_exports_serves(tiny_dataset, tmp_path):
    from wallwm_jax.export import export_from_checkpoint, load_bundle
    from wallwm_jax.policy import load_policy
    from wallwm_jax.serve import infer
    from wallwm_jax.train import PRETRAINED_REPORT, train_and_evaluate

    config = _config(tiny_dataset)
    config.total_steps = 1
    config.checkpoint.every_steps = 1
    config.checkpoint.async_save = False
    config.optimizer.learning_rate = 1e-9  # one step barely moves the imported weights
    config.optimizer.weight_decay = 0.0
    run = str(tmp_path / "run")
    result = train_and_evaluate(config, run)

    assert config.model.backbone_family == "gemma"
    with open(os.path.join(run, PRETRAINED_REPORT)) as f:
        report = f.read()
    assert "layout='paligemma'" in report and "needs config: model.backbone_family='gemma'" \
        in report and "mis-shaped (not loaded): 0" in report

    export = export_from_checkpoint(os.path.join(run, "checkpoints"), str(tmp_path / "export"))
    params, bundle_config, _, _ = load_bundle(export)
    assert bundle_config.model.backbone_family == "gemma"
    with np.load(os.path.join(PALIGEMMA, "reference.npz")) as ref:  # still PaliGemma's function
        hidden = pretrained.text_hidden_states(bundle_config.model, params, ref["tokens"])
        np.testing.assert_allclose(hidden, ref["hidden"], atol=1e-3 * np.abs(ref["hidden"]).max())
        emb = pretrained.image_embeddings(bundle_config.model, params, ref["images"])
        np.testing.assert_allclose(emb, ref["image_embeddings"],
                                   atol=1e-3 * np.abs(ref["image_embeddings"]).max())
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(result["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    policy = load_policy(export)
    assert policy.config.model.backbone_family == "gemma"
    rng = np.random.default_rng(0)
    reply = infer(policy, {"observation/image": rng.integers(0, 256, (32, 32, 3), np.uint8),
                           "observation/state": np.zeros(4, np.float32),
                           "prompt": "reach the goal", "caption": "move to the goal"}, "event")
    actions = reply["actions"]
    assert actions.ndim == 2 and actions.shape[1] == 4 and np.all(np.isfinite(actions))


def test_bad_pretrained_config_is_one_line(tiny_dataset, tmp_path):
    from wallwm_jax import config_check
    from wallwm_jax.train import resolve_pretrained

    config = _config(tiny_dataset)
    config.model.pretrained.backbone_layout = "llama"
    with pytest.raises(cli.UserError, match="model.pretrained.backbone_layout"):
        config_check.validate(config, check_data=False)
    config.model.pretrained.update(backbone=str(tmp_path / "nope"), backbone_layout="paligemma")
    with pytest.raises(cli.UserError, match="model.pretrained.backbone=.*nope.*does not exist"):
        config_check.validate(config, check_data=False)

    # A model of other sizes than the checkpoint: strict names the first mis-shaped key
    # before anything compiles; not strict, the run would go on and the report says so.
    config = _config(tiny_dataset)
    config.model.mlp_dim = 128
    shapes = r"has shape \(64, 96\), expected \(64, 128\)"
    with pytest.raises(cli.UserError, match=r"model.pretrained: .*mlp.*" + shapes):
        resolve_pretrained(config, str(tmp_path))
    config.model.pretrained.strict = False
    [report] = resolve_pretrained(config, str(tmp_path))
    assert len(report.mismatched) == 3 * config.model.depth  # gate, up, down per layer
    assert "mis-shaped (not loaded): 6" in (tmp_path / "pretrained_load.txt").read_text()
