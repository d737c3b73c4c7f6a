"""experiments/mt50.py, the GPU recipe for MT50 under the LeRobot protocol: both sizes load and
pass the config check, the policy reads exactly what the mt50_lerobot suite provides, and the
compute figures in docs/mt50.md are the repository's FLOP counter's."""

import math
import os
import re
import types

import pytest

from experiments.mt50 import get_config
from wallwm_jax import config_check, throughput
from wallwm_jax.evaluation import suites
from wallwm_jax.evaluation.runner import check_actor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("size", ["small", "base"])
@pytest.mark.parametrize("mode", ["unified", "chunk"])
def test_both_sizes_load_and_pass_the_config_check(size, mode):
    config = get_config(f"size={size},mode={mode}")
    config_check.validate(config, check_data=False)
    assert (config.size, config.mode, config.data.layout) == (size, mode, mode)
    assert config.model.dtype == "bfloat16"
    assert config.batch_size % 8 == 0  # splits over the 8 GPUs of the mesh
    assert config.eval.closed_loop.suite == "mt50_lerobot" and config.eval.closed_loop.every_steps


def test_sizes_are_pretrain_sizes():
    from experiments.pretrain import get_config as pretrain_config

    for size in ("small", "base"):
        ours, theirs = get_config(f"size={size}").model, pretrain_config(f"size={size}").model
        for field in ("patch_size", "vit_width", "vit_depth", "width", "depth", "num_heads",
                      "head_dim", "mlp_dim", "expert_width", "expert_mlp_dim"):
            assert ours[field] == theirs[field], (size, field)


@pytest.mark.parametrize("size", ["small", "base"])
def test_observation_is_the_mt50_lerobot_suites(size):
    config = get_config(f"size={size}")
    suite = suites.get("mt50_lerobot")
    assert suite.camera_setup == "lerobot" and suite.camera == "corner2"
    assert config.model.state_dim == suite.state_dims == 4
    assert tuple(config.data.cameras) == ("image",) and config.model.cameras == 1
    assert config.model.image_size == config.data.image_size == 224
    assert suite.image_size in (None, config.data.image_size)
    # What the evaluation runner checks before any episode, with a stand-in for the policy.
    actor = types.SimpleNamespace(state_dim=config.model.state_dim, config=config,
                                  cameras=tuple(config.data.cameras))
    check_actor(actor, suite)


@pytest.mark.parametrize("arg,message", [
    ("size=small,mode=event", "no privileged simulator state"),
    ("size=huge", "has recipes for"),
    ("steps=3", "expected key=value"),
])
def test_bad_switches_are_refused(arg, message):
    with pytest.raises(ValueError, match=message):
        get_config(arg)


def test_docs_quote_the_flop_counter():
    doc = open(os.path.join(REPO, "docs", "mt50.md")).read()
    for size in ("small", "base"):
        for mode in ("unified", "chunk"):
            config = get_config(f"size={size},mode={mode}")
            per_step = throughput.step_flops(config)
            total_pflop = per_step * config.total_steps / 1e15
            row = re.search(rf"^\| `{size}` \| `{mode}` \|(.*)$", doc, re.M)
            assert row, f"docs/mt50.md has no row for {size} {mode}"
            assert f"{per_step:.3e}" in row.group(1), (size, mode, per_step)
            assert f"{total_pflop:,.0f}" in row.group(1), (size, mode, total_pflop)


@pytest.mark.slow  # ~55 s of compile on a 2-core CPU (+ the dataset fixture): kept out of CI
def test_the_recipe_trains_two_steps_at_tiny_size(tiny_dataset, tmp_path):
    from wallwm_jax.train import train_and_evaluate

    config = get_config("size=tiny")  # the MT50 recipe with pretrain.py's tiny model
    config.data.update(data_dir=tiny_dataset, image_size=32, num_workers=0)
    config.model.dtype = "float32"  # bf16 is emulated on CPU
    config.update(batch_size=8, total_steps=2, eval_every_steps=0, log_every_steps=1)
    config.optimizer.warmup_steps = 1
    config.checkpoint.every_steps = 2
    config.eval.closed_loop.every_steps = 0
    result = train_and_evaluate(config, str(tmp_path / "run"))
    assert result["last_step"] == 2 and all(math.isfinite(x) for x in result["losses"])
