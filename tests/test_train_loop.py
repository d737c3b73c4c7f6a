"""The loop never waits on the device between log steps: metrics are fetched (one step late)
only at log, checkpoint and eval steps; NaN/Inf is still caught, named and skipped."""

import threading

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


def test_nonfinite_stop_names_the_step_and_keeps_the_last_checkpoint(tiny_config, tmp_path,
                                                                     fetches):
    """Three clean steps saved at step 3; the resumed run's loss turns NaN at step 4. It stops
    naming step 4 and the term, without a per-step sync (steps 4-5 are fetched together before
    the step-6 save, which never happens), and leaves the step-3 checkpoint as it was: listed
    as the latest, verified intact, its params the step-3 params bit for bit."""
    tiny_config.log_every_steps = 3
    before = train_and_evaluate(tiny_config, str(tmp_path), stop_after=3)
    fetches.clear()
    tiny_config.model.loss_weights.world = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"step 4: .*loss/world"):
        train_and_evaluate(tiny_config, str(tmp_path))
    assert fetches == [2]
    # the step timer's watching thread stopped with the loop (train_log.StepTimer)
    assert not [t for t in threading.enumerate() if t.name == "step-watch"]
    ckpt_dir = str(tmp_path / "checkpoints")
    manager = ckpt.make_manager(ckpt_dir, tiny_config.checkpoint)
    assert manager.all_steps() == [3]
    manager.close()
    assert ckpt.verify_step(ckpt_dir, 3) == []
    local = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local),
                            before["params"])
    kept = ckpt.restore_params(ckpt_dir, abstract)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(kept),
                            jax.tree.leaves(before["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                      err_msg=jax.tree_util.keystr(path))


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
