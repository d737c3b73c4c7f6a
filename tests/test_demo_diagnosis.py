"""The demo diagnosis's state-response probe: the expert column is MetaWorld's proportional
controller measured through the same perturbation, the policy column a real export's."""

import math

import pytest

from experiments.demo_diagnosis import state_response
from wallwm_jax.policy import load_policy


def test_state_response_measures_the_expert_gain_and_the_policy(trained_policies):
    policy = load_policy(trained_policies["event"].export)
    out = state_response(policy, scenes=1, tasks=("push-v3",), samples=1)
    push = out["push-v3"]
    # 4-D agent state: only the hand can be moved. The dev split's scene 0 has the puck 6.5 cm
    # from the hand in x and 1 cm in y, so +-3 cm stays in the unclipped range (< 10 cm) of
    # the expert's gain-10 controller.
    assert set(push) == {"hand_x", "hand_y"}
    for name in ("hand_x", "hand_y"):
        assert push[name]["expert"] == pytest.approx(-10.0, abs=0.05)
        assert math.isfinite(push[name]["policy"])
