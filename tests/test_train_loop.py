"""The loop never waits on the device between log steps: metrics are fetched (one step late)
only at log, checkpoint and eval steps; NaN/Inf is still caught, named and skipped."""

import jax
import numpy as np
import pytest

from wallwm_jax import checkpoint as ckpt
from wallwm_jax import train
from wallwm_jax.models import wallwm
from wallwm_jax.train import NonFiniteLossError, train_and_evaluate
from wallwm_jax.train_log import read_metrics


@pytest.fixture
def fetches(monkeypatch):
    """Every device-to-host fetch of the loop: the steps it covered."""
    calls: list[int] = []
    original = train._fetch

    def counting(tree):
        calls.append(len(tree) if isinstance(tree, list) else 1)
        return original(tree)

    monkeypatch.setattr(train, "_fetch", counting)
    return calls


def test_no_per_step_fetch(tiny_config, tmp_path, fetches):
    tiny_config.log_every_steps = 3
    tiny_config.checkpoint.every_steps = 6
    result = train_and_evaluate(tiny_config, str(tmp_path))
    assert result["last_step"] == 6 and len(result["losses"]) == 6
    # Steps 1-3 fetched together at step 4 (a step late), 4-5 and 6 at the final save.
    assert fetches == [3, 2, 1]


def test_nonfinite_stop_names_first_step_without_per_step_sync(tiny_config, tmp_path,
                                                               fetches):
    tiny_config.log_every_steps = 3
    tiny_config.model.loss_weights.world = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"step 1: .*loss/world"):
        train_and_evaluate(tiny_config, str(tmp_path))
    assert fetches == [2]  # steps 1-2, before the step-3 checkpoint: nothing saved
    manager = ckpt.make_manager(str(tmp_path / "checkpoints"), tiny_config.checkpoint)
    assert manager.latest_step() is None
    manager.close()


def test_nonfinite_skip_keeps_params_without_per_step_sync(tiny_config, tmp_path, fetches):
    tiny_config.log_every_steps = 3
    tiny_config.checkpoint.every_steps = 6
    tiny_config.on_nonfinite = "skip"
    tiny_config.model.loss_weights.world = float("nan")
    result = train_and_evaluate(tiny_config, str(tmp_path))
    assert result["last_step"] == 6 and fetches == [3, 2, 1]
    rows = read_metrics(str(tmp_path))
    logged = {r["step"]: r["skipped"] for r in rows if "skipped" in r}
    assert logged and set(logged.values()) == {1.0}, logged  # every logged step was skipped
    init = wallwm.init_params(tiny_config.model, jax.random.PRNGKey(tiny_config.seed + 1))
    for a, b in zip(jax.tree.leaves(result["params"]), jax.tree.leaves(init), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tiny_config.on_nonfinite = "ignore"
    with pytest.raises(ValueError, match="on_nonfinite='ignore'"):
        train_and_evaluate(tiny_config, str(tmp_path / "bad"))
