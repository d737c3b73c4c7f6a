"""Report arithmetic from hand-written trial directories: rows, seed aggregation (mean ± std,
n), Wilson intervals, closed-loop columns per suite group, failed trials, plots."""

import csv
import json
import math
import os

import pytest

from wallwm_jax.sweep import report
from wallwm_jax.sweep.runner import write_json

KEYS = ["config.optimizer.name", "config.seed"]


def _trial(root, name, opt, seed, status, losses, eval_mse, closed_loop):
    d = root / "trials" / name
    (d / "run").mkdir(parents=True)
    write_json(str(d / "trial.json"), {"name": name, "suites": ["demo"],
                                       "overrides": {KEYS[0]: opt, KEYS[1]: seed}})
    write_json(str(d / "status.json"), {"status": status, "train_wall_s": 10.0,
                                        "eval_wall_s": 2.5,
                                        "error": "Traceback\nValueError: boom" if
                                        status == "failed" else None})
    with open(d / "run" / "metrics.jsonl", "w") as f:
        for step, loss in enumerate(losses, 1):
            f.write(json.dumps({"step": step, "loss": loss, "loss/action": loss / 2}) + "\n")
        if eval_mse is not None:
            f.write(json.dumps({"step": len(losses), "eval/action_mse": eval_mse}) + "\n")
    if closed_loop is not None:
        (reach, n_reach), (push, n_push) = closed_loop
        s, n = reach + push, n_reach + n_push
        grp = lambda a, b: {"success": a / b, "successes": a, "n": b, "ci95": [0, 1]}
        (d / "eval" / "demo").mkdir(parents=True)
        write_json(str(d / "eval" / "demo" / "results.json"), {
            "suite": "demo", "mode": "event", "planner": None, "privileged": False,
            "policy": "x", "episodes": [],
            "summary": {"overall": grp(s, n), "groups": {"reach": grp(reach, n_reach),
                                                          "push": grp(push, n_push)},
                        "tasks": {"reach-v3": grp(reach, n_reach),
                                  "push-v3": grp(push, n_push)}}})


@pytest.fixture
def sweep_dir(tmp_path):
    _trial(tmp_path, "name=adamw,seed=0", "adamw", 0, "done", [3.0, 2.0], 0.5,
           ((2, 2), (0, 2)))
    _trial(tmp_path, "name=adamw,seed=1", "adamw", 1, "done", [3.0, 1.0], 0.7,
           ((1, 2), (1, 2)))
    _trial(tmp_path, "name=muon,seed=0", "muon", 0, "done", [2.0, 0.5], 0.25,
           ((2, 2), (2, 2)))
    _trial(tmp_path, "name=muon,seed=1", "muon", 1, "failed", [2.0], None, None)
    write_json(str(tmp_path / "sweep.json"), {
        "sweep": "x.py", "keys": KEYS, "suites": ["demo"],
        "names": ["name=adamw,seed=0", "name=adamw,seed=1", "name=muon,seed=0",
                  "name=muon,seed=1"]})
    return tmp_path


def test_rows_aggregate_and_files(sweep_dir):
    out = report.write_report(str(sweep_dir))
    rows = {r["trial"]: r for r in out["rows"]}
    a0 = rows["name=adamw,seed=0"]
    assert a0["steps"] == 2 and a0["loss"] == 2.0 and a0["loss/action"] == 1.0
    assert a0["wall_s"] == 12.5 and a0["eval/action_mse"] == 0.5
    assert a0["cl/demo"] == 0.5 and a0["cl/demo/reach"] == 1.0 and a0["cl/demo/push"] == 0.0
    assert "cl/overall" not in a0  # one suite: its overall is the overall
    assert rows["name=muon,seed=1"]["status"] == "failed"
    assert rows["name=muon,seed=1"]["error"] == "ValueError: boom"

    agg = {a["config.optimizer.name"]: a for a in out["aggregate"]}
    mean, std, n = agg["adamw"]["loss"]
    assert (mean, n) == (1.5, 2) and std == pytest.approx(math.sqrt(0.5))
    assert agg["adamw"]["cl/demo"] == (0.5, 0.0, 2)
    mean, std, n = agg["adamw"]["eval/action_mse"]
    assert mean == pytest.approx(0.6) and std == pytest.approx(math.sqrt(0.02))
    # the failed seed still has a train loss, but no eval or closed-loop numbers
    assert agg["muon"]["n"] == 2 and agg["muon"]["done"] == 1
    assert agg["muon"]["loss"] == (1.25, pytest.approx(math.sqrt(1.125)), 2)
    assert agg["muon"]["cl/demo"] == (1.0, 0.0, 1)

    with open(sweep_dir / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["trial"] for r in table][0] == "name=adamw,seed=0"
    assert table[0]["cl/demo/successes"] == "2" and table[3]["status"] == "failed"
    md = (sweep_dir / "results.md").read_text()
    assert "50% (2/4, [0.15, 0.85])" in md  # success with its Wilson interval
    assert "## Mean ± std over seed" in md and "| adamw | 2 | 12.5 ± 0 | 1.5 ± 0.71 |" in md
    assert "| muon | 2 | 12.5 ± 0 | 1.25 ± 1.1 |" in md and "| 1 ± 0 (n=1) |" in md
    assert "## Failed trials" in md and "ValueError: boom" in md
    assert out["figure"].endswith("success.png")
    for png in ("curves.png", "success.png"):
        assert os.path.getsize(sweep_dir / "plots" / png) > 10_000


def test_success_by_setting_pools_seeds_with_intervals(sweep_dir):
    """Per setting: each seed's rate, their mean with a t interval, the pooled k/n (Wilson)
    and per task k/n; a failed trial without results counts nowhere."""
    out = report.write_report(str(sweep_dir))
    adamw, muon = (out["success"]["demo"][f"optimizer.name={o}"] for o in ("adamw", "muon"))
    assert adamw["rates"] == [0.5, 0.5] and (adamw["successes"], adamw["n"]) == (4, 8)
    assert adamw["tasks"] == {"reach-v3": (3, 4), "push-v3": (1, 4)}
    assert adamw["t95"] == (0.5, 0.5)  # two equal seeds: no spread
    assert muon["rates"] == [1.0] and math.isnan(muon["t95"][0])
    # t interval with 1 degree of freedom: mean ± 12.706 * s / sqrt(2)
    lo, hi = report.t_interval([0.25, 0.75])
    assert (lo + hi) / 2 == pytest.approx(0.5)
    assert hi - lo == pytest.approx(2 * 12.7062 * math.sqrt(0.125) / math.sqrt(2), rel=1e-4)
    md = (sweep_dir / "results.md").read_text()
    assert "## Closed-loop success on demo" in md
    assert "| optimizer.name=adamw | 2 | 50% ± 0% | [50%, 50%] | 4/8 [0.22, 0.78] |" in md
    assert "| optimizer.name=muon | 1 | 100% ± 0% |  | 4/4 " in md
    assert "| reach-v3 | 3/4 | 2/2 |" in md and "| push-v3 | 1/4 | 2/2 |" in md


def test_without_seed_axis_no_aggregate(sweep_dir):
    info = json.loads((sweep_dir / "sweep.json").read_text())
    info["keys"] = KEYS[:1]
    write_json(str(sweep_dir / "sweep.json"), info)
    out = report.write_report(str(sweep_dir))
    assert out["aggregate"] == []
    assert "Mean ± std" not in (sweep_dir / "results.md").read_text()


def test_a_cut_metrics_line_and_an_unstarted_trial_are_read(sweep_dir):
    """train_log.read_metrics, the report's reader: a row cut by a crash (with the resumed
    run's rows appended after it) is skipped; a trial that never logged has no steps."""
    path = sweep_dir / "trials" / "name=adamw,seed=0" / "run" / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # the crash
        f.write(json.dumps({"step": 3, "loss": 1.5}) + "\n")  # same line: the resume's row
        f.write(json.dumps({"step": 4, "loss": 1.25}) + "\n")
    os.remove(sweep_dir / "trials" / "name=muon,seed=1" / "run" / "metrics.jsonl")
    rows = {r["trial"]: r for r in report.write_report(str(sweep_dir))["rows"]}
    assert rows["name=adamw,seed=0"]["steps"] == 4 and rows["name=adamw,seed=0"]["loss"] == 1.25
    assert "steps" not in rows["name=muon,seed=1"] and "loss" not in rows["name=muon,seed=1"]


def test_scene_split_and_privileged_inputs_are_shown(sweep_dir):
    """Each closed-loop figure says which scenes it was measured on and what privileged
    inputs each arm read; results from before the split say so (pre-split)."""
    md = report.write_report(str(sweep_dir))["markdown"]
    assert "## Closed-loop success on demo (pre-split scenes)" in md
    for name, split, extra in (
            ("name=adamw,seed=0", "test", {"mode": "chunk", "privileged_state": True}),
            ("name=adamw,seed=1", "test", {"mode": "chunk", "privileged_state": True}),
            ("name=muon,seed=0", "test", {"privileged_inputs": ["phase", "object_goal_state"]})):
        path = sweep_dir / "trials" / name / "eval" / "demo" / "results.json"
        write_json(str(path), {**json.loads(path.read_text()), "split": split, **extra})
    out = report.write_report(str(sweep_dir))
    md = out["markdown"]
    assert "## Closed-loop success on demo (test scenes)" in md
    assert "| optimizer.name=adamw | 2 | 50% ± 0% | [50%, 50%] | 4/8 [0.22, 0.78] | " \
           "object_goal_state |" in md  # worked out from an older record's mode and state
    assert "| optimizer.name=muon | 1 | 100% ± 0% |  | 4/4 [0.51, 1.00] | " \
           "phase+object_goal_state |" in md
    assert ("- `cl/demo`: scenes: test, privileged inputs: object_goal_state "
            "(name=adamw,seed=0, name=adamw,seed=1); phase+object_goal_state "
            "(name=muon,seed=0)") in md
    with open(sweep_dir / "results.csv") as f:
        table = {r["trial"]: r for r in csv.DictReader(f)}
    assert table["name=muon,seed=0"]["split/demo"] == "test"
    assert table["name=adamw,seed=0"]["privileged/demo"] == "object_goal_state"
    assert table["name=muon,seed=1"]["split/demo"] == ""  # failed: no results
