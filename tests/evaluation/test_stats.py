"""Wilson intervals and the per-task / group / overall arithmetic."""

import math

import pytest

from wallwm_jax.evaluation.stats import format_rate, summarise, wilson_interval


@pytest.mark.parametrize("k,n,lo,hi", [
    (7, 10, 0.3968, 0.8922),   # textbook values for 7/10 at 95%
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (50, 100, 0.4038, 0.5962),
])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-4) and got[1] == pytest.approx(hi, abs=5e-4)


def test_wilson_interval_contains_the_estimate_and_shrinks_with_n():
    for n in (1, 5, 40):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert (wilson_interval(30, 60)[1] - wilson_interval(30, 60)[0]
            < wilson_interval(5, 10)[1] - wilson_interval(5, 10)[0])
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_summarise_groups_and_overall():
    eps = ([{"task": "a", "success": s} for s in (1, 1, 0, 0)]
           + [{"task": "b", "success": s} for s in (1, 1, 1, 1)]
           + [{"task": "c", "success": False, "error": "boom"}])
    s = summarise(eps, {"g1": ("a", "b"), "g2": ("c",)})
    assert s["tasks"]["a"]["success"] == 0.5 and s["tasks"]["b"]["successes"] == 4
    assert s["groups"]["g1"] == {"success": 0.75, "successes": 6, "n": 8,
                                 "ci95": list(wilson_interval(6, 8))}
    assert s["groups"]["g2"]["success"] == 0.0
    assert s["overall"]["n"] == 9 and math.isclose(s["overall"]["success"], 6 / 9)
    assert s["errors"] == 1
    assert format_rate(s["tasks"]["b"]) == "100% [51%–100%] (4/4)"
