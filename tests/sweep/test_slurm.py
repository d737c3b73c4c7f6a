"""What a slurm job array asks for: GPUs, CPUs and memory always explicitly (documented
defaults, `--slurm_*` flags over `get_resources()`), the partition when given, and a request
for no GPU said in so many words; checked on the sbatch script submitit renders (dry run)."""

import os
import subprocess
import sys

import pytest

from wallwm_jax.sweep.launchers import slurm_resources, submit_slurm
from wallwm_jax.sweep.runner import TrialJob

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _plan(tmp_path, resources):
    job = TrialJob(name="t", trial_dir=str(tmp_path / "trials" / "t"), sweep="s.py",
                   overrides={}, global_overrides={}, suites=[], eval_settings={},
                   config_hash="x")
    return submit_slurm([job], str(tmp_path), resources, dry_run=True)


def _sbatch_lines(plan):
    return {line for line in plan["sbatch"].splitlines() if line.startswith("#SBATCH")}


def test_defaults_ask_for_a_gpu_cpus_and_memory(tmp_path):
    plan = _plan(tmp_path, {})
    lines = _sbatch_lines(plan)
    assert {"#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB",
            "#SBATCH --nodes=1", "#SBATCH --time=240"} <= lines
    assert not any(line.startswith("#SBATCH --partition") for line in lines)
    assert plan["request"] == ("slurm request per trial: 1 node(s) x 1 GPU(s), 8 CPUs and "
                               "32GB per node, 240 min, partition the cluster's default")


def test_cpus_and_memory_follow_the_gpus_unless_given(tmp_path):
    lines = _sbatch_lines(_plan(tmp_path, {"gpus_per_node": 4, "partition": "a100"}))
    assert {"#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=32", "#SBATCH --mem=128GB",
            "#SBATCH --partition=a100"} <= lines
    lines = _sbatch_lines(_plan(tmp_path, {"gpus_per_node": 4, "cpus_per_task": 12,
                                           "mem_gb": 200}))
    assert {"#SBATCH --cpus-per-task=12", "#SBATCH --mem=200GB"} <= lines


def test_no_gpu_is_said_and_not_asked_for(tmp_path):
    plan = _plan(tmp_path, {"gpus_per_node": 0})
    assert not any(line.startswith(("#SBATCH --gpu", "#SBATCH --gres")) for line in
                   _sbatch_lines(plan))
    assert "no GPU requested (--slurm_gpus_per_node=0)" in plan["request"]
    assert "#SBATCH --cpus-per-task=8" in plan["sbatch"]


@pytest.mark.parametrize("key,value", [("mem_gb", 0), ("gpus_per_node", -1),
                                       ("cpus_per_task", 2.5), ("gpu", 1)])
def test_bad_resources_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        slurm_resources({key: value})


SWEEP = '''
from experiments.pretrain import get_config as base


def get_config(arg=None):
    return base(arg)


def get_sweep(h):
    return h.sweep("config.seed", [0, 1])


def get_resources():
    return {"gpus_per_node": 8, "mem_gb": 400}
'''


def test_cli_flags_override_the_sweep_file(tmp_path):
    (tmp_path / "sweep.py").write_text(SWEEP)
    args = [sys.executable, "-m", "wallwm_jax.sweep", "--sweep", str(tmp_path / "sweep.py"),
            "--workdir", str(tmp_path / "w"), "--launcher", "slurm", "--dry_run",
            "--suite", "none", "--config.data.data_dir=/data/x/1.0.0"]
    out = subprocess.run(args + ["--slurm_gpus_per_node=0", "--slurm_cpus_per_task=4",
                                 "--slurm_partition=cpu"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("slurm request per trial: 1 node(s) x no GPU, 4 CPUs and 400GB per node, 240 min, "
            "partition cpu; no GPU requested") in out.stdout
    for line in ("#SBATCH --cpus-per-task=4", "#SBATCH --mem=400GB", "#SBATCH --partition=cpu",
                 "#SBATCH --array=0-1%2"):
        assert line in out.stdout, line
    assert "--gpus-per-node" not in out.stdout
    bad = subprocess.run(args + ["--slurm_mem_gb=0"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert bad.returncode == 2
    assert bad.stderr == ("error: slurm resource mem_gb=0 (--slurm_mem_gb or get_resources()): "
                          "expected an integer >= 1\n")
