"""Automatic event segmentation of episodes without phase labels, its captions and its score.

Cuts an episode at gripper open/close transitions, end-effector speed minima and jumps of the
commanded motion (docs/segmentation.md), names each event from its motion primitive, and scores
boundaries against ground truth (precision/recall/F1 at a tolerance). Grading it against
MetaWorld's ground truth, with its command line, is `wallwm_jax.evaluation.segmentation`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# Word for (negative, positive) displacement along each position axis; MetaWorld's world frame
# seen from the robot: +x right, +y forward (away from the base), +z up.
AXIS_WORDS: tuple[tuple[str, str], ...] = (("left", "right"), ("backward", "forward"),
                                           ("down", "up"))
# Cut priorities (a short event loses its lower-priority cut): gripper > motion jump > speed.
_GRIPPER, _JUMP, _SPEED = 3.0, 2.0, 1.0


def _check_episode(actions, states, gripper_index, position_slice):
    """Validated float64 copies (actions [T, A], states [T, S]) and the position columns."""
    arrays = []
    for name, x in (("actions", actions), ("states", states)):
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D array [T, D], got shape {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"{name}: expected a real-valued array, got dtype {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError(f"{name}: episode has no steps (T=0); expected T >= 1")
        if x.shape[1] == 0:
            raise ValueError(f"{name}: expected at least one column, got shape {x.shape}")
        bad = ~np.isfinite(x)
        if bad.any():
            step, col = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name}: non-finite value (NaN/Inf) at step {step}, column {col}")
        arrays.append(x.astype(np.float64))
    actions, states = arrays
    if actions.shape[0] != states.shape[0]:
        raise ValueError(f"states: {states.shape[0]} steps but actions has {actions.shape[0]}; "
                         "expected the same T")
    n_act = actions.shape[1]
    if isinstance(gripper_index, bool) or not isinstance(gripper_index, (int, np.integer)):
        raise ValueError(f"gripper_index: expected an int in [0, {n_act}), "
                         f"got {gripper_index!r}")
    if not 0 <= gripper_index < n_act:
        raise ValueError(f"gripper_index: {gripper_index} is out of range; expected an int in "
                         f"[0, {n_act}) for actions of shape {actions.shape}")
    n_state = states.shape[1]
    if not isinstance(position_slice, slice):
        raise ValueError(f"position_slice: expected a slice of the state columns, "
                         f"got {position_slice!r}")
    cols = range(*position_slice.indices(n_state))
    stop = position_slice.stop
    if (position_slice.step not in (None, 1) or len(cols) == 0
            or (stop is not None and stop > n_state)
            or (position_slice.start is not None and position_slice.start < 0)):
        raise ValueError(f"position_slice: {position_slice} must select 1 or more contiguous "
                         f"columns (step 1, non-negative start) inside states' {n_state} "
                         "columns")
    return actions, states, states[:, position_slice]


def _positive(name: str, value: float, *, integer: bool = False) -> None:
    if integer and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


def gripper_closed(command: np.ndarray, *, threshold: float = 0.3,
                   hysteresis: float = 0.2) -> np.ndarray:
    """bool [T]: a Schmitt trigger on the gripper command [T], so noise near `threshold`
    cannot flip it; closed above threshold + hysteresis, open below threshold - hysteresis."""
    closed = np.empty(len(command), bool)
    decided = np.flatnonzero(np.abs(np.asarray(command) - threshold) > hysteresis)
    # Before the first decisive command the state is that command's, so noise there can't cut.
    state = bool(command[decided[0] if len(decided) else 0] > threshold)
    for t, c in enumerate(command):
        if c > threshold + hysteresis:
            state = True
        elif c < threshold - hysteresis:
            state = False
        closed[t] = state
    return closed


def smoothed_speed(positions: np.ndarray, smooth_steps: int) -> np.ndarray:
    """float [T]: |p[t+1] - p[t]| (last step repeated), centred moving average of width
    `smooth_steps`; step t's speed is the motion its action produced."""
    t = len(positions)
    if t < 2:
        return np.zeros(t)
    speed = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    speed = np.append(speed, speed[-1])
    if smooth_steps <= 1:
        return speed
    half = smooth_steps // 2
    padded = np.pad(speed, (half, smooth_steps - 1 - half), mode="edge")
    return np.convolve(padded, np.ones(smooth_steps) / smooth_steps, mode="valid")


def _scale(x: np.ndarray) -> float:
    """Robust size of a non-negative signal: its 90th percentile (0 if it is all zero)."""
    return float(np.percentile(x, 90)) if len(x) else 0.0


def _speed_minima(speed: np.ndarray, fraction: float, stop_fraction: float,
                  min_stop_steps: int) -> dict[int, float]:
    """Speed cuts -> priority in [_SPEED, _SPEED + 1]: both ends of every stop (a run of
    >= `min_stop_steps` steps below `stop_fraction` x the speed scale, its first step and the
    step motion resumes), and local minima below `fraction` x the scale outside stops."""
    scale = _scale(speed)
    limit, still = fraction * scale, speed <= stop_fraction * scale
    cuts, in_stop = {}, np.zeros(len(speed), bool)
    edges = np.flatnonzero(np.diff(np.r_[0, still.astype(int), 0]))
    for a, b in zip(edges[::2], edges[1::2], strict=True):  # still[a:b] is one run
        if b - a >= min_stop_steps:
            in_stop[a:b] = True
            cuts.update({t: _SPEED + 1.0 for t in (a, b) if 0 < t < len(speed)})
    for t in range(1, len(speed) - 1):
        # `<=` on the left: a flat minimum is cut where the motion resumes.
        if (not in_stop[t] and speed[t] <= speed[t - 1] and speed[t] < speed[t + 1]
                and speed[t] < limit):
            cuts[t] = _SPEED + 1.0 - speed[t] / limit
    return cuts


def _motion_jumps(motion: np.ndarray, fraction: float) -> dict[int, float]:
    """Steps t where |a[t] - a[t-1]| (non-gripper action dims) is a local peak above
    `fraction` x the command scale: a scripted waypoint switch or a new teleop intent."""
    if len(motion) < 2:
        return {}
    jump = np.r_[0.0, np.linalg.norm(np.diff(motion, axis=0), axis=1), 0.0]
    scale = _scale(np.linalg.norm(motion, axis=1))
    limit = fraction * scale
    if limit <= 0:
        return {}
    return {t: _JUMP + min(jump[t] / scale, 0.99) for t in range(1, len(motion))
            if jump[t] > limit and jump[t] >= jump[t - 1] and jump[t] > jump[t + 1]}


def _suppress(candidates: dict[int, float], separation: int) -> dict[int, float]:
    """Keep cuts by priority, dropping any within `separation` steps of a kept one."""
    kept: dict[int, float] = {}
    for t, p in sorted(candidates.items(), key=lambda kv: (-kv[1], kv[0])):
        if all(abs(t - k) >= separation for k in kept):
            kept[t] = p
    return kept


def _merge_short(cuts: dict[int, float], t_total: int, min_steps: int) -> list[int]:
    """Remove cuts until every event has >= `min_steps` steps; the shortest event goes
    first and loses its lower-priority bounding cut (never the start at 0)."""
    cuts = dict(cuts)
    while cuts:
        bounds = [0, *sorted(cuts), t_total]
        lengths = np.diff(bounds)
        k = int(np.argmin(lengths))
        if lengths[k] >= min_steps:
            break
        left, right = bounds[k], bounds[k + 1]
        options = [c for c in (left, right) if c in cuts]
        del cuts[min(options, key=lambda c: (cuts[c], c))]
    return sorted(cuts)


def _split_long(starts: list[int], t_total: int, speed: np.ndarray, max_steps: int,
                min_steps: int) -> list[int]:
    """Split every event longer than `max_steps` in two at its slowest step in the middle
    third (ties: nearest the middle; both parts >= `min_steps`), recursively."""
    out = []
    for s, e in zip(starts, [*starts[1:], t_total], strict=True):
        pending = [(s, e)]
        while pending:
            a, b = pending.pop()
            if b - a <= max_steps:
                out.append(a)
                continue
            lo = max(a + min_steps, a + (b - a) // 3)
            hi = min(b - min_steps, b - (b - a) // 3)
            window = np.arange(lo, hi + 1)
            c = int(window[np.lexsort((np.abs(2 * window - a - b), speed[window]))[0]])
            pending += [(c, b), (a, c)]
    return sorted(out)


@dataclasses.dataclass(frozen=True)
class SegmenterDefaults:
    """The defaults of `segment_events`, tuned on MetaWorld MT10 expert rollouts (seeds
    0-9; see docs/segmentation.md)."""

    gripper_threshold: float = 0.3
    gripper_hysteresis: float = 0.2
    smooth_steps: int = 1  # MetaWorld states are noise-free; raise it for teleop data
    speed_fraction: float = 0.2
    stop_fraction: float = 0.05
    jump_fraction: float | None = 0.2
    min_separation: int = 5
    min_event_steps: int = 3
    max_event_steps: int = 60


DEFAULTS = SegmenterDefaults()


def segment_events(actions: np.ndarray, states: np.ndarray, *, gripper_index: int,
                   position_slice: slice,
                   gripper_threshold: float = DEFAULTS.gripper_threshold,
                   gripper_hysteresis: float = DEFAULTS.gripper_hysteresis,
                   smooth_steps: int = DEFAULTS.smooth_steps,
                   speed_fraction: float = DEFAULTS.speed_fraction,
                   stop_fraction: float = DEFAULTS.stop_fraction,
                   jump_fraction: float | None = DEFAULTS.jump_fraction,
                   min_separation: int = DEFAULTS.min_separation,
                   min_event_steps: int = DEFAULTS.min_event_steps,
                   max_event_steps: int = DEFAULTS.max_event_steps) -> np.ndarray:
    """Event start indices int64 [E] of an episode (actions [T, A], states [T, S]): 0 first,
    strictly increasing, all < T.

    Cuts, by priority: gripper transitions of `actions[:, gripper_index]` (Schmitt trigger at
    `gripper_threshold` +- `gripper_hysteresis`); jumps of the other action dims larger than
    `jump_fraction` x their 90th-percentile norm (None: off); local minima of the end-effector
    speed (`states[:, position_slice]`, averaged over `smooth_steps`) below `speed_fraction` x
    its 90th percentile, and both ends of stops (>= `min_event_steps` steps below
    `stop_fraction` x that percentile). Cuts closer than `min_separation` to a stronger one are
    dropped, events shorter than `min_event_steps` merged, longer than `max_event_steps` split
    at their slowest step. Scales are per episode, so units do not matter.
    """
    actions, states, positions = _check_episode(actions, states, gripper_index, position_slice)
    for name, value in (("smooth_steps", smooth_steps), ("min_separation", min_separation),
                        ("min_event_steps", min_event_steps),
                        ("max_event_steps", max_event_steps)):
        _positive(name, value, integer=True)
    for name, value in (("speed_fraction", speed_fraction), ("stop_fraction", stop_fraction),
                        ("gripper_hysteresis", gripper_hysteresis)):
        _positive(name, value)
    if jump_fraction is not None:
        _positive("jump_fraction", jump_fraction)
    if not np.isfinite(gripper_threshold):
        raise ValueError(f"gripper_threshold: expected a finite number, got {gripper_threshold}")
    if max_event_steps < 2 * min_event_steps:
        raise ValueError(f"max_event_steps: {max_event_steps} < 2 x min_event_steps "
                         f"({min_event_steps}); expected room to split a long event in two")
    t_total = len(actions)
    closed = gripper_closed(actions[:, gripper_index], threshold=gripper_threshold,
                            hysteresis=gripper_hysteresis)
    speed = smoothed_speed(positions, smooth_steps)
    candidates = _speed_minima(speed, speed_fraction, stop_fraction, min_event_steps)
    if jump_fraction is not None and actions.shape[1] > 1:
        motion = np.delete(actions, gripper_index, axis=1)
        candidates.update(_motion_jumps(motion, jump_fraction))
    candidates.update({int(t): _GRIPPER for t in np.flatnonzero(closed[1:] != closed[:-1]) + 1})
    cuts = _suppress(candidates, min_separation)
    starts = [0, *_merge_short(cuts, t_total, min_event_steps)]
    return np.asarray(_split_long(starts, t_total, speed, max_event_steps, min_event_steps),
                      np.int64)


def _check_starts(name: str, starts, t_total: int | None = None) -> np.ndarray:
    """int64 [E] event starts: 1-D, integer, non-negative, strictly increasing (and 0 first,
    all < T when `t_total` is given)."""
    x = np.asarray(starts)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of step indices, got shape {x.shape}")
    if x.size and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name}: expected integer step indices, got dtype {x.dtype}")
    x = x.astype(np.int64)
    if x.size and x.min() < 0:
        raise ValueError(f"{name}: negative step index {int(x.min())}; expected >= 0")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"{name}: expected strictly increasing step indices, got {x.tolist()}")
    if t_total is not None:
        if x.size == 0 or x[0] != 0:
            raise ValueError(f"{name}: expected the first event to start at 0, got {x.tolist()}")
        if x[-1] >= t_total:
            raise ValueError(f"{name}: start {int(x[-1])} is not < T={t_total}")
    return x


def boundary_f1(predicted_starts: Sequence[int] | np.ndarray,
                true_starts: Sequence[int] | np.ndarray, *, tolerance: int) -> dict:
    """Boundary precision/recall/F1 of predicted event starts against true ones.

    The start at step 0 is excluded from both sides (every segmentation has it). A predicted
    and a true boundary match when at most `tolerance` steps apart, one-to-one (maximum
    matching: a left-to-right greedy sweep is optimal for points on a line), so two
    predictions near one true boundary give 1 TP + 1 FP. With no predictions precision is 1,
    with no true boundaries recall is 1. Returns {precision, recall, f1, tp, fp, fn}.
    """
    pred = _check_starts("predicted_starts", predicted_starts)
    true = _check_starts("true_starts", true_starts)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) \
            or tolerance < 0:
        raise ValueError(f"tolerance: expected an int >= 0 (steps), got {tolerance!r}")
    pred, true = pred[pred > 0], true[true > 0]
    i = j = tp = 0
    while i < len(pred) and j < len(true):
        if abs(pred[i] - true[j]) <= tolerance:
            tp, i, j = tp + 1, i + 1, j + 1
        elif pred[i] < true[j]:
            i += 1
        else:
            j += 1
    return f1_scores(tp, len(pred) - tp, len(true) - tp)


def f1_scores(tp: int, fp: int, fn: int) -> dict:
    """{precision, recall, f1, tp, fp, fn} of boundary counts; with no predictions precision
    is 1, with no true boundaries recall is 1."""
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def describe_events(actions: np.ndarray, states: np.ndarray,
                    starts: Sequence[int] | np.ndarray, *, gripper_index: int,
                    position_slice: slice, gripper_threshold: float = DEFAULTS.gripper_threshold,
                    gripper_hysteresis: float = DEFAULTS.gripper_hysteresis,
                    still_fraction: float = 0.1,
                    axis_words: tuple[tuple[str, str], ...] = AXIS_WORDS) -> list[str]:
    """One caption per event [starts[k], starts[k+1]) from its motion primitive.

    Rules, in order: the gripper (Schmitt trigger as in `segment_events`) ends the event in a
    different state than just before it -> "close the gripper" / "open the gripper" (so the
    event that starts at a gripper cut is the gripper event); the hand's net
    displacement (first step of the event to first step of the next, or the last step) is
    below `still_fraction` x the episode's largest per-axis position range -> "hold still";
    otherwise the dominant axes (|d_i| >= half the largest |d_i|, largest first) name it:
    up alone -> "lift", down alone -> "lower the gripper", else "move the gripper " + the
    axis words joined by "and", e.g. "move the gripper left and down".
    """
    actions, states, positions = _check_episode(actions, states, gripper_index, position_slice)
    t_total = len(actions)
    starts = _check_starts("starts", starts, t_total)
    if len(axis_words) < positions.shape[1]:
        raise ValueError(f"axis_words: {len(axis_words)} pairs for {positions.shape[1]} "
                         "position axes; expected one (negative, positive) pair per axis")
    _positive("still_fraction", still_fraction)
    closed = gripper_closed(actions[:, gripper_index], threshold=gripper_threshold,
                            hysteresis=gripper_hysteresis)
    extent = float(np.max(positions.max(0) - positions.min(0)))
    captions = []
    for s, e in zip(starts, [*starts[1:], t_total], strict=True):
        if closed[max(s - 1, 0)] != closed[e - 1]:  # a net transition at a step inside
            captions.append("close the gripper" if closed[e - 1] else "open the gripper")
            continue
        last = min(e, t_total - 1)
        d = positions[last] - positions[s]
        size = np.abs(d)
        if extent == 0 or size.max() < still_fraction * extent:
            captions.append("hold still")
            continue
        axes = [int(i) for i in np.argsort(-size, kind="stable") if size[i] >= 0.5 * size.max()]
        words = [axis_words[i][int(d[i] > 0)] for i in axes]
        if axes == [2] and len(positions[0]) == 3:
            captions.append("lift" if d[2] > 0 else "lower the gripper")
        else:
            captions.append("move the gripper " + " and ".join(words))
    return captions

