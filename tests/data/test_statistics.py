"""Normalisation statistics equal numpy's, round-trip through JSON, and invert."""

import numpy as np
import pytest

from wallwm_jax.data import statistics


def _data():
    rng = np.random.default_rng(0)
    return {"action": rng.normal(2.0, 3.0, (500, 4)), "state": rng.uniform(-1, 5, (500, 4))}


def test_stats_equal_numpy_and_survive_json(tmp_path):
    data = _data()
    statistics.save_norm_stats(str(tmp_path), statistics.compute_norm_stats(data))
    stats = statistics.load_norm_stats(str(tmp_path))
    x = data["action"]
    np.testing.assert_allclose(stats["action"]["mean"], x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], x.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["q01"], np.quantile(x, 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["q99"], np.quantile(x, 0.99, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["state"]["min"], data["state"].min(0), rtol=1e-6)
    np.testing.assert_allclose(stats["state"]["max"], data["state"].max(0), rtol=1e-6)
    assert stats["state"]["mean"].dtype == np.float32 and stats["state"]["mean"].shape == (4,)


@pytest.mark.parametrize("mode", ["mean_std", "quantile"])
def test_normalize_inverts(mode):
    data = _data()
    stats = {k: np.asarray(v) for k, v in statistics.compute_norm_stats(data)["action"].items()}
    x = np.clip(data["action"], stats["q01"], stats["q99"])
    y = statistics.normalize(x, stats, mode)
    np.testing.assert_allclose(statistics.unnormalize(y, stats, mode), x, atol=1e-4)
    if mode == "mean_std":
        np.testing.assert_allclose(statistics.normalize(data["action"], stats).mean(0), 0,
                                   atol=1e-6)
    else:
        assert y.min() >= -1 and y.max() <= 1
        np.testing.assert_allclose(statistics.normalize(stats["q99"], stats, mode), 1, atol=1e-4)


def test_missing_stats_names_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "norm_stats.json")):
        statistics.load_norm_stats(str(tmp_path))


def test_bad_shape_raises():
    with pytest.raises(ValueError, match="action"):
        statistics.compute_norm_stats({"action": np.zeros(3)})
