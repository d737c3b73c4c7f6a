"""Training loop: loss falls, resume is exact, NaN stops cleanly, wrong model size is named."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from wallwm_jax import checkpoint as ckpt
from wallwm_jax.train import train_and_evaluate
from wallwm_jax.train_log import read_metrics


def _losses(workdir):
    rows = {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}
    return [rows[s] for s in sorted(rows)]


def test_resume_equals_straight_run(tiny_config, tmp_path):
    """A 4-step Muon run stopped at step 2 and resumed equals the straight run bit for bit
    (Muon's state and the data iterator restored; AdamW's resume is
    tests/test_checkpoint_reliability.py's CLI runs); with a save every step, keep=2 and
    keep_period=2 the latest two plus every even step stay (step 1 goes); the checkpoint assets
    carry the config, norm stats and tokenizer; a restore into another model size names the
    parameter whose shape differs."""
    tiny_config.total_steps = 4
    tiny_config.optimizer.name = "muon"
    tiny_config.optimizer.learning_rate = 0.02
    tiny_config.checkpoint.every_steps = 1
    tiny_config.checkpoint.keep = 2
    tiny_config.checkpoint.keep_period = 2
    straight = train_and_evaluate(tiny_config, str(tmp_path / "straight"))
    assert straight["last_step"] == 4 and len(straight["losses"]) == 4
    assert all(np.isfinite(straight["losses"]))

    half = train_and_evaluate(tiny_config, str(tmp_path / "split"), stop_after=2)
    assert half["last_step"] == 2
    rest = train_and_evaluate(tiny_config, str(tmp_path / "split"))
    assert rest["first_step"] == 2 and rest["last_step"] == 4

    assert _losses(tmp_path / "straight") == _losses(tmp_path / "split")
    for a, b in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(rest["params"]),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for run in ("straight", "split"):
        steps = sorted(int(d) for d in os.listdir(tmp_path / run / "checkpoints")
                       if d.isdigit())
        assert steps == [2, 3, 4], run

    assets = ckpt.read_assets(str(tmp_path / "split" / "checkpoints"))
    assert assets.config.model.width == tiny_config.model.width
    with open(os.path.join(tiny_config.data.data_dir, "norm_stats.json")) as f:
        stats = json.load(f)
    np.testing.assert_allclose(assets.norm_stats["action"]["mean"], stats["action"]["mean"])
    with open(os.path.join(tiny_config.data.data_dir, "tokenizer.model"), "rb") as f:
        assert Path(assets.tokenizer_path).read_bytes() == f.read()

    tiny_config.model.mlp_dim = 2 * tiny_config.model.mlp_dim
    with pytest.raises(ValueError, match=r"parameter .*(mlp|Mlp|MLP).* has shape"):
        train_and_evaluate(tiny_config, str(tmp_path / "split"))


def test_metrics_tensorboard_and_periodic_eval(tiny_config, tmp_path):
    """Per-step observability rows, per-group norms that add up to the global norm, the LR of
    the update that produced each step, and `eval/` rows every `eval_every_steps`."""
    from wallwm_jax.optim.factory import learning_rate_schedule

    tiny_config.eval_every_steps = 4
    tiny_config.eval.num_batches = 1
    tiny_config.eval.by_cluster = True
    summary = train_and_evaluate(tiny_config, str(tmp_path))
    rows = read_metrics(str(tmp_path))
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval/action_mse" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in eval_rows] == [4, 6]  # every 4 steps and at the end
    for key in ("eval/loss", "eval/loss/action", "eval/duration_acc", "eval/world_mse",
                "eval/caption_exact", "eval/caption_token_acc", "eval/boundary_acc"):
        assert np.isfinite(eval_rows[0][key]), key
    # eval.by_cluster: the val action error split by train cluster, rare vs common
    for row in eval_rows:
        assert any(k.startswith("eval/action_mse_cluster") for k in row), row
        assert np.isfinite(row["eval/action_mse_common"])
    assert summary["eval"] == {k: v for k, v in eval_rows[-1].items() if k != "step"}

    groups = ("vit", "backbone", "action_expert", "heads")
    schedule = learning_rate_schedule(tiny_config.optimizer, tiny_config.total_steps)
    for row in train_rows:
        for key in ("loss", "loss/action", "loss/caption", "loss/duration", "loss/world",
                    "grad_norm", "update_norm", "step_time", "data_time", "lr",
                    "examples_per_s", "tokens_per_s", "model_flops_per_s"):
            assert key in row, key
        assert {k.split("/", 1)[1] for k in row if k.startswith("grad_norm/")} == set(groups)
        for kind in ("grad_norm", "update_norm"):
            parts = sum(row[f"{kind}/{g}"] ** 2 for g in groups)
            np.testing.assert_allclose(parts, row[kind] ** 2, rtol=1e-4)
        np.testing.assert_allclose(row["lr"], float(schedule(row["step"] - 1)), rtol=1e-6)
        assert "mfu" not in row  # CPU: peak FLOP/s unknown, MFU not reported
        np.testing.assert_allclose(row["model_flops_per_s"] * row["step_time"],
                                   summary["flops_per_step"], rtol=1e-6)
    assert train_rows[0]["lr"] == 0.0  # warmup starts at 0: the first update used lr 0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))


def test_init_pretrained_loads_foreign_weights_before_training(tiny_config, tmp_path):
    from wallwm_jax.models import pretrained, wallwm

    source = wallwm.init_params(tiny_config.model, jax.random.PRNGKey(123))
    path = str(tmp_path / "weights.safetensors")
    pretrained.save_wallwm(source, path)
    tiny_config.init_pretrained = ((path, "wallwm"),)
    # One step: its update uses the warmup's learning rate 0 (weight decay is scaled by it
    # too), so the loaded weights come out unchanged; the optimizer as every tiny run has it,
    # so the step's program is the one earlier runs compiled (the compilation cache has it).
    tiny_config.total_steps = 1
    result = train_and_evaluate(tiny_config, str(tmp_path / "run"))
    init = wallwm.init_params(tiny_config.model, jax.random.PRNGKey(tiny_config.seed + 1))
    for a, b, c in zip(jax.tree.leaves(result["params"]), jax.tree.leaves(source),
                       jax.tree.leaves(init), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
        if np.asarray(c).std() > 0:  # not an all-zeros/ones init leaf: it really was replaced
            assert not np.allclose(np.asarray(a), np.asarray(c), atol=1e-6)
