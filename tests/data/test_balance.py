"""Cluster-balanced sampling: the n_c**alpha rule, its report, realised frequencies, mixtures."""

import numpy as np
import pytest

from wallwm_jax.data.balance import (
    cluster_report,
    event_sampling_probabilities,
    mixture_probabilities,
)

# Cluster 7 has 3 events (rows 0, 1, 3), cluster 2 has 1 (row 2): labels need not be 0..K-1.
IDS = [7, 7, 2, 7]


@pytest.mark.parametrize("alpha, expected", [
    (1.0, [0.25, 0.25, 0.25, 0.25]),  # every event equally likely
    (0.0, [1 / 6, 1 / 6, 1 / 2, 1 / 6]),  # every cluster 1/2, split over its events
    # mass sqrt(3) : 1 -> cluster 7: 1.7320508 / 2.7320508 = 0.6339746, / 3 = 0.2113249 each;
    # cluster 2: 1 / 2.7320508 = 0.3660254
    (0.5, [0.2113249, 0.2113249, 0.3660254, 0.2113249]),
])
def test_probabilities_follow_cluster_size_power(alpha, expected):
    probs = event_sampling_probabilities(IDS, alpha)
    np.testing.assert_allclose(probs, expected, atol=1e-7)
    assert probs.sum() == pytest.approx(1.0)


def test_large_alpha_does_not_overflow_and_favours_big_clusters():
    probs = event_sampling_probabilities(np.repeat([0, 1], [1000, 10]), 200.0)
    assert np.isfinite(probs).all() and probs[-10:].sum() < 1e-100


@pytest.mark.parametrize("ids, alpha, message", [
    ([], 1.0, "empty"),
    ([0, 1], -0.5, "alpha must be finite and >= 0"),
    ([0, 1], float("nan"), "alpha must be finite"),
    ([0, 1], float("inf"), "alpha must be finite"),
    ([0, 1], "1", "alpha must be a real number"),
    ([0.0, 1.5], 1.0, "cluster_ids must be integers"),
    (["a", "b"], 1.0, "cluster_ids must be integers"),
    ([[0, 1]], 1.0, "1-D"),
])
def test_invalid_inputs_name_the_problem(ids, alpha, message):
    with pytest.raises(ValueError, match=message):
        event_sampling_probabilities(ids, alpha)


def test_report_of_target_distribution():
    report = cluster_report(IDS, event_sampling_probabilities(IDS, 1.0))
    assert report["clusters"] == [2, 7] and report["sizes"] == [1, 3]
    np.testing.assert_allclose(report["target_frequencies"], [0.25, 0.75])
    # H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.2157616 + 0.3465736 = 0.5623351; exp(H) = 1.754765
    assert report["effective_clusters"] == pytest.approx(1.754765, abs=1e-6)
    balanced = cluster_report(IDS, event_sampling_probabilities(IDS, 0.0))
    assert balanced["effective_clusters"] == pytest.approx(2.0)
    assert "kl_realised_target" not in report


def _skewed_ids() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.permutation(np.repeat([0, 1, 2], [80, 15, 5]))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_seeded_draws_realise_the_target(alpha):
    ids = _skewed_ids()
    probs = event_sampling_probabilities(ids, alpha)
    rows = np.random.default_rng(0).choice(len(ids), size=4000, p=probs)
    report = cluster_report(ids, probs, rows)
    np.testing.assert_allclose(report["realised_frequencies"], report["target_frequencies"],
                               atol=0.03)
    # Sampling noise alone gives KL ~ (K - 1) / (2 * draws) = 2.5e-4.
    assert report["kl_realised_target"] < 0.005
    assert report["num_draws"] == 4000


def test_kl_detects_draws_from_the_wrong_distribution():
    ids = _skewed_ids()
    rows = np.random.default_rng(0).choice(len(ids), size=4000,
                                           p=event_sampling_probabilities(ids, 1.0))
    # Drawn as in the data (0.8/0.15/0.05) but judged against the balanced target (1/3 each):
    # KL = 0.8 ln 2.4 + 0.15 ln 0.45 + 0.05 ln 0.15 = 0.486
    report = cluster_report(ids, event_sampling_probabilities(ids, 0.0), rows)
    assert report["kl_realised_target"] > 0.3


def test_report_rejects_bad_probs_and_rows():
    with pytest.raises(ValueError, match="one per event"):
        cluster_report(IDS, [0.5, 0.5])
    with pytest.raises(ValueError, match="sum to 1"):
        cluster_report(IDS, [0.5, 0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"drawn_rows must index events 0..3"):
        cluster_report(IDS, event_sampling_probabilities(IDS, 1.0), [0, 4])


def test_mixture_normalises_weights_and_scales_event_probs():
    w, probs = mixture_probabilities([np.array([0.5, 0.5]), np.array([0.2, 0.3, 0.5])], [3, 1])
    np.testing.assert_allclose(w, [0.75, 0.25])
    np.testing.assert_allclose(probs, [0.375, 0.375, 0.05, 0.075, 0.125])


@pytest.mark.parametrize("weights, message", [
    ([1.0, -0.5], r"weights\[1\] = -0.5"),
    ([float("nan"), 1.0], r"weights\[0\] = nan"),
    ([0.0, 0.0], "all zero"),
    ([1.0], "2 event probability vectors but 1 weights"),
])
def test_mixture_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        mixture_probabilities([np.array([1.0]), np.array([1.0])], weights)


def test_mixture_rejects_a_non_distribution():
    with pytest.raises(ValueError, match=r"event_probs\[1\]"):
        mixture_probabilities([np.array([1.0]), np.array([0.2, 0.2])], [1, 1])
