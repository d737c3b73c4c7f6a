"""Launchers. Local: how devices are split between concurrent trials. Slurm, up to the
submission (no cluster here): the sbatch script of the job array and the trial each array task
runs, through the real submitit with a stand-in `sbatch`; and the `jax.distributed` environment
a multi-node array task derives from SLURM's."""

import glob
import json
import os
import pickle
import stat
import subprocess
import sys

import pytest

from wallwm_jax.sweep.launchers import device_slots, visible_gpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SWEEP = '''
from experiments.pretrain import get_config as base


def get_config(arg=None):
    return base(arg)


def get_sweep(h):
    return h.product([h.sweep("config.model.caption_mask", ["staircase", "causal"]),
                      h.sweep("config.seed", [0, 1])])


def get_eval():
    return {"suites": ["mt10_seen"], "episodes_per_task": 5}


def get_resources():
    return {"nodes": 2, "gpus_per_node": 8, "timeout_min": 600, "partition": "gpu"}
'''


def _fake_slurm(bin_dir, record):
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        f"#!/bin/sh\ncp \"$1\" {record}/sbatch.sh\necho \"Submitted batch job 4242\"\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in ("sbatch", "srun"):
        (bin_dir / f).chmod((bin_dir / f).stat().st_mode | stat.S_IEXEC)


def test_slurm_submission_per_trial(tmp_path):
    (tmp_path / "sweep.py").write_text(SWEEP)
    _fake_slurm(tmp_path / "bin", tmp_path)
    workdir = tmp_path / "w"
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    args = [sys.executable, "-m", "wallwm_jax.sweep", "--sweep",
            f"{tmp_path / 'sweep.py'}:mode=unified", "--workdir", str(workdir),
            "--launcher", "slurm", "--slurm_account", "robots",
            "--config.total_steps=1000", "--config.data.data_dir=/data/mt10/1.0.0"]
    dry = subprocess.run(args + ["--dry_run"], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "sbatch.sh").exists() and not (workdir / "trials").exists()
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr

    script = (tmp_path / "sbatch.sh").read_text()
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                 "#SBATCH --account=robots", "#SBATCH --time=600", "srun "):
        assert line in script, line
    # the dry run renders the same script (same parameters, same array)
    assert "#SBATCH --array=0-3%4" in dry.stdout and "#SBATCH --nodes=2" in dry.stdout
    # --only keeps the matching trials (here one seed of each arm); no match is a user error
    only = subprocess.run(args + ["--dry_run", "--only", "seed=1$"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert only.returncode == 0, only.stderr
    assert "#SBATCH --array=0-1%2" in only.stdout
    assert "caption_mask=causal,seed=1:" in only.stdout
    assert "seed=0:" not in only.stdout
    none = subprocess.run(args + ["--dry_run", "--only", "seed=7"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert none.returncode == 2 and "matches no trial" in none.stderr
    assert "Traceback" not in none.stderr

    plan = json.loads((workdir / "slurm" / "submission.json").read_text())
    assert json.loads((workdir / "sweep.json").read_text())["keys"] == [
        "config.model.caption_mask", "config.seed"]
    assert plan["job_ids"] == [f"4242_{i}" for i in range(4)]
    names = ["caption_mask=staircase,seed=0", "caption_mask=staircase,seed=1",
             "caption_mask=causal,seed=0", "caption_mask=causal,seed=1"]
    assert [t["trial"] for t in plan["tasks"]] == names
    for task, name in zip(plan["tasks"], names, strict=True):
        cmd = task["command"]
        assert cmd[1:3] == ["-m", "wallwm_jax.sweep.trial"]
        assert cmd[cmd.index("--workdir") + 1] == str(workdir / "trials" / name / "run")
        assert task["suites"] == ["mt10_seen"]
        (evaluation,) = task["eval_commands"]
        assert evaluation[1:3] == ["-m", "wallwm_jax.evaluation"]
        assert evaluation[evaluation.index("--policy") + 1] == str(
            workdir / "trials" / name / "run" / "checkpoints")
        assert evaluation[evaluation.index("--mode") + 1] == "unified"
        assert evaluation[evaluation.index("--split") + 1] == "test"  # reported figures
        trial = json.loads((workdir / "trials" / name / "trial.json").read_text())
        assert trial["global_overrides"] == {"total_steps": 1000,
                                             "data.data_dir": "/data/mt10/1.0.0"}
        assert trial["overrides"]["config.model.caption_mask"] in ("staircase", "causal")
    # what each array task unpickles and runs: the trial's SlurmTrialTask
    pickles = sorted(glob.glob(str(workdir / "slurm" / "4242_*" / "*_submitted.pkl")))
    assert len(pickles) == 4
    tasks = {}
    for path in pickles:
        with open(path, "rb") as f:
            delayed = pickle.load(f)
        tasks[delayed.function.job.name] = delayed.function
    assert sorted(tasks) == sorted(names)
    task = tasks[names[2]]
    assert task.job.mode == "unified" and task.job.suites == ["mt10_seen"]
    assert task.job.eval_command("mt10_seen")[-2:] == ["--episodes_per_task", "5"]


def test_multi_node_task_joins_jax_distributed(monkeypatch):
    from wallwm_jax.sweep.launchers import SlurmTrialTask
    from wallwm_jax.sweep.runner import TrialJob

    job = TrialJob(name="t", trial_dir="/tmp/t", sweep="s.py", overrides={},
                   global_overrides={}, suites=[], eval_settings={}, config_hash="x")
    for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77",
                       "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
                       "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
                       "SLURM_JOB_NODELIST": "gpu[012-013]"}.items():
        monkeypatch.setenv(key, value)
    env = SlurmTrialTask(job).distributed_env()
    assert env["JAX_COORDINATOR_ADDRESS"].startswith("gpu012:")
    assert env["JAX_NUM_PROCESSES"] == "2" and env["JAX_PROCESS_ID"] == "1"
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert SlurmTrialTask(job).distributed_env() == {}


def test_local_slots_split_the_gpus(monkeypatch):
    assert device_slots(3, []) == [{}, {}, {}]  # CPU: one process per trial, nothing to set
    assert device_slots(2, ["0", "1", "2", "3"]) == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                                     {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert device_slots(2, ["4", "5", "6"]) == [{"CUDA_VISIBLE_DEVICES": "4"},
                                                {"CUDA_VISIBLE_DEVICES": "5"}]
    with pytest.raises(ValueError, match="more than the 2 visible GPUs"):
        device_slots(3, ["0", "1"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]


def test_a_trial_is_evaluated_again_on_another_scene_split(tmp_path):
    """Results on the other split, or from before scene splits, do not finish a trial."""
    from wallwm_jax.sweep.runner import TrialJob, is_finished, write_json, write_status

    job = TrialJob(name="t", trial_dir=str(tmp_path), sweep="s.py", overrides={},
                   global_overrides={}, suites=["demo"], eval_settings={"split": "dev"},
                   config_hash="x")
    cmd = job.eval_command("demo")
    assert cmd[cmd.index("--split") + 1] == "dev"
    write_status(str(tmp_path), status="done")
    (tmp_path / "eval" / "demo").mkdir(parents=True)
    results = tmp_path / "eval" / "demo" / "results.json"
    for recorded, finished in ((None, False), ("test", False), ("dev", True)):
        write_json(str(results), {"suite": "demo"} if recorded is None else
                   {"suite": "demo", "split": recorded})
        assert is_finished(job) is finished, recorded
