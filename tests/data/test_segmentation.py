"""Automatic segmentation: boundary F1 by hand, cuts on synthetic motions, captions and input
errors (grading on real MetaWorld rollouts: tests/evaluation/test_segmentation.py)."""

import numpy as np
import pytest

from wallwm_jax.data.segmentation import boundary_f1, describe_events, segment_events

MW = {"gripper_index": 3, "position_slice": slice(0, 3)}  # MetaWorld's action/state layout


def _trajectory(*pieces: tuple[int, tuple[float, float, float], float]):
    """actions [T,4], states [T,4] from (steps, xyz velocity, gripper command) pieces; the
    hand moves 0.01 x the command per step (state t is the position before action t)."""
    actions = np.concatenate([np.tile([*v, g], (n, 1)) for n, v, g in pieces]).astype(np.float32)
    pos = np.cumsum(np.r_[np.zeros((1, 3)), 0.01 * actions[:-1, :3]], axis=0)
    opening = np.where(actions[:, 3] > 0, 0.3, 1.0)
    return actions, np.c_[pos, opening].astype(np.float32)


# --- boundary_f1 -------------------------------------------------------------------------------

def test_boundary_f1_by_hand():
    # Truths 10, 20, 30 (0 excluded). 8 matches 10 at exactly the tolerance, 12 and 13 are
    # too far from 20, 21 matches 20, 40 misses 30: tp 2, fp 3, fn 1.
    s = boundary_f1([0, 8, 12, 13, 21, 40], [0, 10, 20, 30], tolerance=2)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 3, 1)
    assert s["precision"] == pytest.approx(2 / 5) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))
    # One step tighter, 8 no longer matches 10.
    s = boundary_f1([0, 8, 12, 13, 21, 40], [0, 10, 20, 30], tolerance=1)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 4, 2)


def test_boundary_f1_one_to_one_and_edge_cases():
    s = boundary_f1([0, 9, 11], [0, 10], tolerance=1)  # two predictions near one truth
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 0)
    s = boundary_f1([12, 16], [10, 14], tolerance=2)  # 12 could take 10 or 14; max is 2
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0) and s["f1"] == 1.0
    s = boundary_f1([0], [0, 10], tolerance=3)  # the boundary at 0 counts on neither side
    assert (s["tp"], s["fp"], s["fn"], s["precision"], s["recall"], s["f1"]) == (
        0, 0, 1, 1.0, 0.0, 0.0)
    assert boundary_f1([0], [0], tolerance=0)["f1"] == 1.0
    assert boundary_f1([5], [5], tolerance=0)["tp"] == 1


# --- segment_events on synthetic motions -----------------------------------------------------

MOVE_STOP_CLOSE_LIFT = ((20, (1, 0, 0), -1.0), (10, (0, 0, 0), -1.0), (6, (0, 0, 0), 1.0),
                        (24, (0, 0, 1), 1.0))
TRUE_CUTS = [0, 20, 30, 36]  # stop, close the gripper, lift


def _close(pred, true, tol):
    return len(pred) == len(true) and np.all(np.abs(np.asarray(pred) - true) <= tol)


def test_cuts_move_stop_close_lift():
    actions, states = _trajectory(*MOVE_STOP_CLOSE_LIFT)
    starts = segment_events(actions, states, **MW)
    assert starts.dtype == np.int64 and starts[0] == 0 and np.all(np.diff(starts) > 0)
    assert starts.tolist() == TRUE_CUTS
    # Speed and gripper cues alone (no action jumps), with smoothing: within a step.
    starts = segment_events(actions, states, jump_fraction=None, smooth_steps=3, **MW)
    assert _close(starts, TRUE_CUTS, 1), starts


def test_gripper_noise_inside_hysteresis_does_not_cut():
    rng = np.random.default_rng(0)
    actions, states = _trajectory((40, (1, 0.5, 0), 0.25))
    actions[:, 3] = 0.3 + rng.uniform(-0.15, 0.15, len(actions))  # crosses 0.3 many times
    assert segment_events(actions, states, **MW).tolist() == [0]
    actions[:5, 3] = -1.0  # open, then noise that never leaves the hysteresis band
    assert segment_events(actions, states, **MW).tolist() == [0]
    actions[20:, 3] = 0.8  # a real close is cut
    assert segment_events(actions, states, **MW).tolist() == [0, 20]


def test_short_event_merged():
    # A 2-step sideways jog between two moves: two jump cuts 2 steps apart.
    actions, states = _trajectory((20, (1, 0, 0), -1.0), (2, (0, 1, 0), -1.0),
                                  (20, (1, 0, 0), -1.0))
    starts = segment_events(actions, states, min_separation=1, min_event_steps=1, **MW)
    assert starts.tolist() == [0, 20, 22]
    starts = segment_events(actions, states, min_separation=1, min_event_steps=3, **MW)
    assert len(starts) == 2 and starts[1] in (20, 22)
    assert np.all(np.diff([*starts, len(actions)]) >= 3)


def test_long_event_split():
    actions, states = _trajectory((200, (1, 0, 0), -1.0))
    starts = segment_events(actions, states, max_event_steps=50, **MW)
    lengths = np.diff([*starts, 200])
    assert starts[0] == 0 and np.all(np.diff(starts) > 0) and starts[-1] < 200
    assert lengths.max() <= 50 and lengths.min() >= 25, lengths  # near-even, no slivers
    # A slow-down inside a long event is where it is split.
    actions, states = _trajectory((40, (1, 0, 0), -1.0), (1, (0.5, 0, 0), -1.0),
                                  (40, (1, 0, 0), -1.0))
    starts = segment_events(actions, states, max_event_steps=60, jump_fraction=None, **MW)
    assert starts.tolist() == [0, 40]


def test_tiny_episodes():
    actions, states = _trajectory((1, (1, 0, 0), -1.0))
    assert segment_events(actions, states, **MW).tolist() == [0]
    actions, states = _trajectory((2, (1, 0, 0), -1.0), (2, (0, 0, 1), 1.0))
    starts = segment_events(actions, states, **MW)
    assert starts[0] == 0 and np.all(np.diff(starts) > 0) and starts[-1] < 4


# --- describe_events ---------------------------------------------------------------------------

def test_describe_events_words():
    actions, states = _trajectory((10, (-1, 0, -1), -1.0), (8, (0, 0, 1), -1.0),
                                  (6, (0, 0, 0), -1.0), (5, (0, 0, 0), 1.0),
                                  (10, (0, 1, 0.1), 1.0), (5, (0, 0, 0), -1.0),
                                  (10, (0, 0, -1), -1.0))
    captions = describe_events(actions, states, [0, 10, 18, 24, 29, 39, 44], **MW)
    assert captions == ["move the gripper left and down", "lift", "hold still",
                        "close the gripper", "move the gripper forward", "open the gripper",
                        "lower the gripper"]
    # The segmenter's own events of the move-stop-close-lift trajectory.
    actions, states = _trajectory(*MOVE_STOP_CLOSE_LIFT)
    starts = segment_events(actions, states, **MW)
    assert describe_events(actions, states, starts, **MW) == [
        "move the gripper right", "hold still", "close the gripper", "lift"]


# --- input validation --------------------------------------------------------------------------

def _good():
    return _trajectory((10, (1, 0, 0), -1.0))


def _with(array, index, value):
    array = array.copy()
    array[index] = value
    return array


A, S = _good()
BAD_EPISODES = [
    ("actions", dict(actions=A[:, 0])),
    ("states", dict(states=S[None])),
    ("actions", dict(actions=_with(A, (3, 1), np.nan))),
    ("states", dict(states=_with(S, (5, 0), np.inf))),
    ("actions", dict(actions=A[:0], states=S[:0])),
    ("states", dict(states=S[:7])),
    ("actions", dict(actions=A.astype(str))),
    ("gripper_index", dict(gripper_index=4)),
    ("gripper_index", dict(gripper_index=-1)),
    ("gripper_index", dict(gripper_index=3.0)),
    ("gripper_index", dict(gripper_index=True)),
    ("position_slice", dict(position_slice=[0, 1, 2])),
    ("position_slice", dict(position_slice=slice(0, 5))),
    ("position_slice", dict(position_slice=slice(4, 4))),
    ("position_slice", dict(position_slice=slice(0, 3, 2))),
]


@pytest.mark.parametrize("argument, change", BAD_EPISODES)
def test_segment_and_describe_reject_bad_episodes(argument, change):
    kwargs = {"actions": A, "states": S, **MW, **change}
    with pytest.raises(ValueError, match=f"^{argument}: "):
        segment_events(**kwargs)
    with pytest.raises(ValueError, match=f"^{argument}: "):
        describe_events(starts=[0], **kwargs)


@pytest.mark.parametrize("argument, value", [
    ("min_event_steps", 0), ("max_event_steps", 5), ("smooth_steps", 1.5),
    ("speed_fraction", -0.1), ("stop_fraction", np.nan), ("jump_fraction", 0.0),
    ("min_separation", 0), ("gripper_hysteresis", 0.0), ("gripper_threshold", np.inf),
])
def test_segment_rejects_bad_options(argument, value):
    with pytest.raises(ValueError, match=f"^{argument}: "):
        segment_events(A, S, **MW, **{argument: value})


@pytest.mark.parametrize("starts, expected", [
    ([1, 5], "start at 0"), ([0, 5, 5], "strictly increasing"), ([0, 10], "< T"),
    ([[0, 5]], "1-D"), ([0.0, 5.0], "integer"), ([], "start at 0"),
])
def test_describe_rejects_bad_starts(starts, expected):
    with pytest.raises(ValueError, match=f"^starts: .*{expected}"):
        describe_events(A, S, starts, **MW)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(predicted_starts=[0, 5, 3], true_starts=[0]), "predicted_starts"),
    (dict(predicted_starts=[0], true_starts=[-1, 4]), "true_starts"),
    (dict(predicted_starts=[0], true_starts=[0], tolerance=-1), "tolerance"),
    (dict(predicted_starts=[0], true_starts=[0], tolerance=1.5), "tolerance"),
])
def test_boundary_f1_rejects_bad_input(kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument}: "):
        boundary_f1(**{"tolerance": 3, **kwargs})
