"""Unified and chunk modes through the whole stack: train -> export -> a policy that acts.

(Event mode is covered by test_train / test_export / test_demo.)
"""

import numpy as np
import pytest

from wallwm_jax.data.episodes import open_dataset
from wallwm_jax.policy import load_policy
from wallwm_jax.train_log import read_metrics


@pytest.mark.parametrize("mode", ["unified", "chunk"])
def test_mode_trains_exports_and_acts(mode, tiny_dataset, trained_policies):
    trained = trained_policies[mode]
    config = trained.config
    rows = read_metrics(trained.run)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    caption_terms = [r["loss/caption"] for r in rows if "loss/caption" in r]
    if mode == "chunk":
        assert caption_terms == [0.0] * 3
    else:
        assert min(caption_terms) > 0

    policy = load_policy(trained.export)
    ep = open_dataset(tiny_dataset, "val")[0]
    out = policy.act(ep["steps/observation/image"][0], ep["steps/observation/state"][0],
                     ep["episode_metadata/instruction"])
    tmax, action_dim = config.data.max_event_len, config.model.action_dim
    assert out["chunk"].shape == (tmax, action_dim)
    assert 1 <= out["actions"].shape[0] <= tmax and out["actions"].shape[1] == action_dim
    assert np.all(np.isfinite(out["actions"]))
    if mode == "unified":
        assert 1 <= len(out["captions"]) <= config.model.max_captions
        assert out["duration_bin"].shape == (config.model.max_captions,)
    else:
        assert out["actions"].shape[0] == tmax and "captions" not in out
