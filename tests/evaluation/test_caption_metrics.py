"""Caption and event-boundary accuracy arithmetic on hand-made captions, and the rule that
keeps a unified caption in effect."""

import jax.numpy as jnp
import numpy as np
import pytest

from wallwm_jax.evaluation.caption_metrics import (
    best_match,
    boundary_accuracy,
    caption_accuracy,
    closed_loop_scores,
    slot_hits,
    teacher_forced_captions,
)
from wallwm_jax.policy import Policy

TRUE = np.array([[1, 5, 6, 7, 2, 0],    # 4 scored tokens: 5 6 7 EOS
                 [1, 8, 2, 0, 0, 0],    # 2 scored: 8 EOS
                 [1, 9, 9, 2, 0, 0]])   # 3 scored
PRED = np.array([[1, 5, 6, 7, 2, 0],    # exact
                 [1, 8, 4, 2, 0, 0],    # runs on past EOS: 1 of 2
                 [1, 9, 2, 0, 0, 0]])   # stops early: 1 of 3


def test_slot_hits_score_the_true_tokens_after_bos():
    exact, hits, scored = (np.asarray(x) for x in slot_hits(PRED, TRUE))
    assert exact.tolist() == [True, False, False]
    assert hits.tolist() == [4, 1, 1] and scored.tolist() == [4, 2, 3]


def test_caption_accuracy_counts_only_present_slots():
    out = caption_accuracy(PRED, TRUE, np.array([True, True, True]))
    assert float(out["caption_exact"]) == pytest.approx(1 / 3)
    assert float(out["caption_token_acc"]) == pytest.approx(6 / 9)
    out = caption_accuracy(PRED, TRUE, np.array([True, False, True]))
    assert float(out["caption_exact"]) == pytest.approx(1 / 2)
    assert float(out["caption_token_acc"]) == pytest.approx(5 / 7)


def test_teacher_forced_argmax_caption():
    true = np.array([[1, 3, 2, 0]])
    logits = np.zeros((1, 4, 5), np.float32)
    logits[0, 0, 3] = logits[0, 1, 2] = logits[0, 2, 4] = 1  # 3, EOS, then 4 past the end
    pred = np.asarray(teacher_forced_captions(jnp.asarray(logits), true))
    assert pred.tolist() == [[1, 3, 2, 4]]
    assert bool(np.asarray(slot_hits(pred, true)[0])[0])  # positions past EOS are not scored
    logits[0, 1] = 0
    logits[0, 1, 4] = 1  # wrong at the true EOS
    pred = np.asarray(teacher_forced_captions(jnp.asarray(logits), true))
    assert not bool(np.asarray(slot_hits(pred, true)[0])[0])


def test_boundary_accuracy_is_the_staircase_decision():
    # horizon 8: ends inside the chunk iff steps < 8
    pred = np.array([4, 8, 12, 2])
    true = np.array([6, 4, 16, 8])
    present = np.array([True, True, True, True])
    assert float(boundary_accuracy(pred, true, 8, present)) == pytest.approx(2 / 4)
    assert float(boundary_accuracy(pred, true, 8, present & [1, 0, 1, 0])) == 1.0


def test_best_match_and_episode_scores():
    truth = [np.array([1, 5, 6, 2, 0]), np.array([1, 5, 7, 7, 2])]
    assert best_match(np.array([1, 5, 7, 7, 2]), truth) == {"exact": True, "hits": 4,
                                                             "scored": 4}
    assert best_match(np.array([1, 5, 7, 2, 0]), truth) == {"exact": False, "hits": 2,
                                                             "scored": 3}
    replans = [dict(scored=3, hits=3, exact=True, boundary_ok=True),
               dict(scored=4, hits=1, exact=False, boundary_ok=False),
               dict(scored=0, boundary_ok=None),  # a phase without captions: not scored
               dict(scored=2, hits=2, exact=True)]  # its chunk was cut short: no boundary
    scores = closed_loop_scores(replans)
    assert scores == {"caption_exact": pytest.approx(2 / 3), "caption_token_acc":
                      pytest.approx(6 / 9), "caption_n": 3, "boundary_acc": 0.5,
                      "boundary_n": 2}
    assert closed_loop_scores([]) == {}


def test_caption_in_effect_until_the_predicted_end():
    captions, steps = ["reach the puck", "push the puck"], [3, 8]
    assert Policy.caption_in_effect(captions, steps, 2) == "reach the puck"
    assert Policy.caption_in_effect(captions, steps, 3) == "push the puck"
    assert Policy.caption_in_effect(captions, steps, 10) == "push the puck"
    assert Policy.caption_in_effect(captions, steps, 11) is None
    assert Policy.caption_in_effect(["reach"], [4], 4) is None
