"""Grading the segmenter on real MetaWorld expert rollouts: it beats uniform cuts against the
ground truth, names the grasp, and its command runs on a built dataset and on rollouts."""

import os
import subprocess
import sys

import numpy as np
import pytest

from wallwm_jax.data.segmentation import describe_events, segment_events
from wallwm_jax.evaluation.segmentation import (
    dataset_episodes,
    evaluate,
    print_quality,
    rollout_episodes,
    uniform_starts,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MW = {"gripper_index": 3, "position_slice": slice(0, 3)}  # MetaWorld's action/state layout
# Seed 2000, outside the tuning set (0-9) of the defaults.
REAL = ("push-v3", "pick-place-v3", "drawer-open-v3", "window-open-v3", "peg-insert-side-v3")


@pytest.fixture(scope="module")
def real_episodes():
    return list(rollout_episodes(REAL, episodes=1, seed=2000))


@pytest.mark.xdist_group("segmentation_rollouts")  # one worker rolls out
def test_metaworld_f1_beats_uniform_cuts(real_episodes):
    assert [ep["task"] for ep in real_episodes] == list(REAL)
    overall = evaluate(real_episodes, tolerances=(3,))["overall"]
    seg, uniform = overall[(3, "all")], overall[(3, "uniform")]
    assert seg["f1"] >= 0.6 and seg["f1"] >= uniform["f1"] + 0.25, (seg, uniform)
    assert overall[(3, "visible")]["f1"] >= 0.75, overall[(3, "visible")]
    for ep in real_episodes:  # the per-episode contract on real data
        starts = segment_events(ep["actions"], ep["states"], **MW)
        assert starts[0] == 0 and np.all(np.diff(starts) > 0)
        assert starts[-1] < len(ep["actions"])
        assert len(uniform_starts(len(ep["actions"]), len(starts))) == len(starts)


@pytest.mark.xdist_group("segmentation_rollouts")  # one worker rolls out
def test_metaworld_captions_name_the_grasp(real_episodes):
    push = real_episodes[0]
    starts = segment_events(push["actions"], push["states"], **MW)
    captions = describe_events(push["actions"], push["states"], starts, **MW)
    assert len(captions) == len(starts) and "close the gripper" in captions
    assert captions[captions.index("close the gripper") - 1] == "lower the gripper"


def test_command_on_dataset_and_rollouts(tiny_dataset, capsys):
    episodes = list(dataset_episodes(tiny_dataset, "train"))
    assert {ep["task"] for ep in episodes} == {"reach-v3", "push-v3"}
    print_quality(tiny_dataset, tolerances=(1, 3))
    out = capsys.readouterr().out
    assert "±1:" in out and "±3:" in out and "push-v3" in out and "overall" in out
    print_quality(tasks="reach-v3", episodes=1, seed=2000)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("overall") and lines[-2].startswith("reach-v3")


def test_the_command_line_runs_and_rejects_a_bad_tolerance(tiny_dataset):
    """The command grades a dataset; a bad --tolerance is one error line."""
    command = [sys.executable, "-m", "wallwm_jax.evaluation.segmentation", "--dataset",
               tiny_dataset, "--split", "val"]
    out = subprocess.run(command + ["--tolerance", "1,3"], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{tiny_dataset} split val" in out.stdout and "±3:" in out.stdout
    assert out.stdout.strip().splitlines()[-1].startswith("overall")
    out = subprocess.run(command + ["--tolerance", "x"], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: --tolerance=x: expected integers, e.g. --tolerance 1,3,5"], out.stderr
