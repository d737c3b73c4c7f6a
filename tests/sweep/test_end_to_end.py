"""A real 2x2 sweep of tiny trials through the CLI: interrupted at step 2, resumed to the end
and evaluated (offline, and closed loop on one demo task, one short episode), rerun without
retraining or re-evaluating anything; and a crashing trial recorded as failed.

The swept fields are data-side (balance_alpha, augmentation), so all trials share one compiled
train step through the persistent compilation cache (tests/conftest.py).
"""

import csv
import json
import os
import subprocess
import sys

import pytest

from wallwm_jax.train_log import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SWEEP = '''
from experiments.pretrain import get_config as base


def get_config(arg=None):
    c = base("size=tiny,mode=event")
    c.data.image_size = 32
    c.batch_size = 8
    c.total_steps = 4
    c.log_every_steps = 1
    c.checkpoint.every_steps = 2
    c.eval_every_steps = 4
    c.eval.num_batches = 1
    return c


def get_sweep(h):
    return h.zip([h.sweep("config.data.balance_alpha", [0.0, 1.0]),
                  h.sweep("config.data.augment.enabled", [True, False])])
'''
# The crash sweep's trial that finishes needs to train, not to train long: one step, no
# offline evaluation (what the 2x2 sweep above checks). total_steps is an input of the
# compiled step, so it still loads the step the sweep above compiled.
CRASH = SWEEP.replace('''h.zip([h.sweep("config.data.balance_alpha", [0.0, 1.0]),
                  h.sweep("config.data.augment.enabled", [True, False])])''',
                      '''h.sweep("config.mesh.tensor", [1, 3])''').replace(
    "c.total_steps = 4", "c.total_steps = 1").replace("c.eval_every_steps = 4",
                                                      "c.eval_every_steps = 0")
assert "c.total_steps = 1" in CRASH and "c.eval_every_steps = 0" in CRASH
# Two trials, each naming two swept fields (how product and zip expand: tests/sweep/test_hyper.py).
NAMES = ["balance_alpha=0,enabled=True", "balance_alpha=1,enabled=False"]


def _cli(*args, data_dir):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1 "
                                      + os.environ["WALLWM_TEST_XLA_FLAGS"]}  # as conftest.py
    return subprocess.run([sys.executable, "-m", "wallwm_jax.sweep", *args,
                           f"--config.data.data_dir={data_dir}"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=900)


def _state(workdir):
    """Per trial: status, checkpoint steps and the checkpoint dirs' mtimes, log size."""
    out = {}
    for name in os.listdir(os.path.join(workdir, "trials")):
        trial = os.path.join(workdir, "trials", name)
        with open(os.path.join(trial, "status.json")) as f:
            status = json.load(f)
        ckpt = os.path.join(trial, "run", "checkpoints")
        steps = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())
        results = os.path.join(trial, "eval", "demo", "results.json")
        out[name] = {"status": status["status"], "steps": steps,
                     "mtimes": {s: os.stat(os.path.join(ckpt, str(s))).st_mtime_ns
                                for s in steps},
                     "log": os.path.getsize(os.path.join(trial, "log.txt")),
                     "eval": os.stat(results).st_mtime_ns if os.path.exists(results) else None}
    return out


pytestmark = pytest.mark.xdist_group("sweep_e2e")  # one worker runs the module's sweep


@pytest.fixture(scope="module")
def sweep(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "tiny_sweep.py").write_text(SWEEP)
    workdir = str(root / "w")
    args = ["--sweep", str(root / "tiny_sweep.py"), "--workdir", workdir, "--suite", "demo",
            "--eval_tasks", "reach-v3", "--eval_episodes_per_task", "1",
            "--eval_episode_limit", "5"]
    # one at a time first, so only the first trial compiles (the others hit the cache)
    interrupted = _cli(*args, "--parallel", "1", "--stop_after", "2", data_dir=tiny_dataset)
    after_interrupt = _state(workdir)
    resumed = _cli(*args, "--parallel", "2", data_dir=tiny_dataset)
    after_resume = _state(workdir)
    rerun = _cli(*args, data_dir=tiny_dataset)
    return {"workdir": workdir, "interrupted": interrupted, "after_interrupt": after_interrupt,
            "resumed": resumed, "after_resume": after_resume, "rerun": rerun,
            "after_rerun": _state(workdir)}


def test_interrupted_trials_resume_from_their_checkpoint(sweep):
    assert sweep["interrupted"].returncode == 3, sweep["interrupted"].stderr  # resume later
    assert "2 trial(s) unfinished" in sweep["interrupted"].stderr
    assert sorted(sweep["after_interrupt"]) == sorted(NAMES)
    for state in sweep["after_interrupt"].values():
        assert state["status"] == "interrupted" and state["steps"] == [2]
        assert state["eval"] is None  # no evaluation of an unfinished trial
    assert sweep["resumed"].returncode == 0, sweep["resumed"].stdout + sweep["resumed"].stderr
    for name, state in sweep["after_resume"].items():
        assert state["status"] == "done" and state["steps"] == [2, 4]
        assert state["eval"] is not None
        # the step-2 checkpoint is the interrupted run's, untouched: training resumed from it
        assert state["mtimes"][2] == sweep["after_interrupt"][name]["mtimes"][2]
        with open(os.path.join(sweep["workdir"], "trials", name, "log.txt")) as f:
            assert "Resumed from checkpoint step 2" in f.read()
        rows = read_metrics(os.path.join(sweep["workdir"], "trials", name, "run"))
        assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def test_rerun_retrains_nothing(sweep):
    assert sweep["rerun"].returncode == 0, sweep["rerun"].stderr
    assert sweep["rerun"].stdout.count("done, skipped") == 2
    assert "training" not in sweep["rerun"].stdout and "evaluating" not in sweep["rerun"].stdout
    # same checkpoints and mtimes, logs and closed-loop results
    assert sweep["after_rerun"] == sweep["after_resume"]


def test_results_table_and_plots(sweep):
    workdir = sweep["workdir"]
    with open(os.path.join(workdir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == NAMES
    for row in rows:
        assert row["status"] == "done" and row["steps"] == "4"
        assert float(row["loss"]) > 0 and float(row["wall_s"]) > 0
        for key in ("loss/action", "loss/caption", "eval/action_mse", "eval/loss"):
            assert row[key] != "", key
        assert "cl/demo/demo" not in row  # a one-group suite: the group is the overall
        with open(os.path.join(workdir, "trials", row["trial"], "eval", "demo",
                               "results.json")) as f:
            results = json.load(f)
        episodes = results["episodes"]
        assert results["mode"] == "event" and [e["task"] for e in episodes] == ["reach-v3"]
        assert episodes[0].get("error") is None, episodes[0]["error"]
        # A failure ran to the step limit (--eval_episode_limit 5); a success stopped there.
        assert episodes[0]["steps"] == 5 or (episodes[0]["success"] and episodes[0]["steps"] < 5)
        # The table's closed-loop columns are the trial's per-episode records.
        successes = sum(e["success"] for e in episodes)
        assert row["cl/demo/n"] == "1" and row["cl/demo/successes"] == str(successes)
        assert float(row["cl/demo"]) == successes / len(episodes)
    assert {r["config.data.balance_alpha"] for r in rows} == {"0.0", "1.0"}
    md = open(os.path.join(workdir, "results.md")).read()
    assert "| balance_alpha=0,enabled=True | 0 | True | done | 4 |" in md
    for png in ("curves.png", "success.png"):
        assert os.path.getsize(os.path.join(workdir, "plots", png)) > 10_000
    report = subprocess.run([sys.executable, "-m", "wallwm_jax.sweep", "--report", workdir],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert report.returncode == 0 and "balance_alpha=1,enabled=False" in report.stdout


def test_crashing_trial_is_recorded_and_the_others_finish(sweep, tiny_dataset, tmp_path):
    (tmp_path / "crash.py").write_text(CRASH)
    workdir = str(tmp_path / "w")
    out = _cli("--sweep", str(tmp_path / "crash.py"), "--workdir", workdir, "--suite", "none",
               "--parallel", "2", data_dir=tiny_dataset)
    assert out.returncode == 1
    # tensor=3 passes config_check (the device count is the trial's to know) but not the mesh
    # of the trial's one device: the trial fails once it starts, the other one finishes.
    assert "1 trial(s) failed: tensor=3" in out.stderr
    with open(os.path.join(workdir, "trials", "tensor=3", "status.json")) as f:
        status = json.load(f)
    assert status["status"] == "failed" and "does not divide the 1 available devices" in \
        status["error"], status
    with open(os.path.join(workdir, "trials", "tensor=1", "status.json")) as f:
        assert json.load(f)["status"] == "done"
    md = open(os.path.join(workdir, "results.md")).read()
    assert "## Failed trials" in md and "tensor=3" in md
