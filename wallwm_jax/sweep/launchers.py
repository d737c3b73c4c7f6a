"""Launchers: `local` (up to N trials at once on this machine, devices split between them) and
`slurm` (one job array through submitit; multi-host trials join with `jax.distributed`).
"""

from __future__ import annotations

import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from wallwm_jax.sweep.runner import TrialJob, is_finished, run_trial, terminate_children

# ---------------------------------------------------------------------------------- local


def visible_gpus() -> list[str]:
    """GPU ids this process may use: $CUDA_VISIBLE_DEVICES, else `nvidia-smi`, else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def device_slots(parallel: int, gpus: Sequence[str]) -> list[dict[str, str]]:
    """Environment additions per concurrent slot: disjoint GPU sets when there are GPUs
    (each slot gets len(gpus) // parallel of them); on CPU each trial is its own process."""
    if not gpus:
        return [{} for _ in range(parallel)]
    if parallel > len(gpus):
        raise ValueError(f"--parallel={parallel} is more than the {len(gpus)} visible GPUs")
    per = len(gpus) // parallel
    return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * per:(i + 1) * per])}
            for i in range(parallel)]


def run_local(jobs: Sequence[TrialJob], parallel: int = 1) -> dict[str, str]:
    """Run the jobs, up to `parallel` at once; return {name: final status}.

    SIGTERM/SIGINT to the sweep reaches every running trial: training saves a checkpoint and
    stops (status "interrupted"), and the same command resumes it later.
    """
    slots: queue.Queue[dict[str, str]] = queue.Queue()
    for slot in device_slots(max(1, parallel), visible_gpus()):
        slots.put(slot)
    results: dict[str, str] = {}
    stopping = threading.Event()

    def one(job: TrialJob) -> None:
        if stopping.is_set():
            results[job.name] = "pending"
            return
        slot = slots.get()
        try:
            results[job.name] = run_trial(job, env={**os.environ, **slot},
                                          log=lambda m: print(m, flush=True))
        except Exception as e:  # a launcher error must not stop the other trials
            results[job.name] = "failed"
            print(f"trial {job.name}: launcher error {e!r}", flush=True)
        finally:
            slots.put(slot)

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()
        print(f"signal {signum}: stopping running trials at their next step", flush=True)
        terminate_children(signal.SIGTERM)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            list(pool.map(one, jobs))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {job.name: results.get(job.name, "pending") for job in jobs}


# ---------------------------------------------------------------------------------- slurm

# What each trial asks for (docs/sweeps.md), unless get_resources() or --slurm_* say otherwise.
# CPUs and memory left None scale with the GPUs: 8 CPUs and 32 GB per GPU (a node without
# GPUs: 8 CPUs, 32 GB). The partition left None is the cluster's default.
SLURM_DEFAULTS = {"nodes": 1, "gpus_per_node": 1, "timeout_min": 240, "partition": None,
                  "account": None, "cpus_per_task": None, "mem_gb": None,
                  "array_parallelism": 64, "qos": None, "constraint": None}
CPUS_PER_GPU, MEM_GB_PER_GPU = 8, 32
_AT_LEAST = {"nodes": 1, "gpus_per_node": 0, "timeout_min": 1, "cpus_per_task": 1,
             "mem_gb": 1, "array_parallelism": 1}


class SlurmTrialTask:
    """What each array task runs: the trial, with `jax.distributed` set up from SLURM.

    Every task of a multi-node trial trains (one process per node, all its GPUs); task 0 also
    evaluates and writes the status.
    """

    def __init__(self, job: TrialJob):
        self.job = job

    def distributed_env(self) -> dict[str, str]:
        """JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID for this task."""
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks <= 1:
            return {}
        port = 20000 + zlib.crc32(str(env.job_id).encode()) % 20000
        return {"JAX_COORDINATOR_ADDRESS": f"{env.hostnames[0]}:{port}",
                "JAX_NUM_PROCESSES": str(env.num_tasks),
                "JAX_PROCESS_ID": str(env.global_rank)}

    def __call__(self) -> str:
        extra = self.distributed_env()
        chief = extra.get("JAX_PROCESS_ID", "0") == "0"
        return run_trial(self.job, env={**os.environ, **extra}, chief=chief)

    def command(self) -> list[str]:
        """The training command the task runs (then the evaluations, on task 0)."""
        return self.job.train_command()


def slurm_resources(resources: dict[str, Any]) -> dict[str, Any]:
    """The sweep's resources over `SLURM_DEFAULTS`, CPUs and memory filled in from the GPUs;
    ValueError names an unknown key or a value out of range."""
    r = {**SLURM_DEFAULTS, **{k: v for k, v in resources.items() if v is not None}}
    unknown = sorted(set(r) - set(SLURM_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown slurm resources {unknown}; known: {sorted(SLURM_DEFAULTS)}")
    for key, low in _AT_LEAST.items():
        value = r[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < low):
            raise ValueError(f"slurm resource {key}={value!r} (--slurm_{key} or "
                             f"get_resources()): expected an integer >= {low}")
    per = max(1, r["gpus_per_node"])
    r["cpus_per_task"] = r["cpus_per_task"] or CPUS_PER_GPU * per
    r["mem_gb"] = r["mem_gb"] or MEM_GB_PER_GPU * per
    return r


def slurm_parameters(resources: dict[str, Any], name: str) -> dict[str, Any]:
    """sbatch parameters (submitit's native slurm names) from the sweep's resources: GPUs,
    CPUs and memory are always asked for explicitly (a node with no GPU asks for none)."""
    r = slurm_resources(resources)
    params: dict[str, Any] = {
        "job_name": f"sweep-{name}", "nodes": r["nodes"], "ntasks_per_node": 1,
        "time": r["timeout_min"], "array_parallelism": r["array_parallelism"],
        "signal_delay_s": 120, "cpus_per_task": r["cpus_per_task"],
        "mem": f"{r['mem_gb']}GB",
    }
    if r["gpus_per_node"] > 0:
        params["gpus_per_node"] = r["gpus_per_node"]
    for key in ("partition", "account", "qos", "constraint"):
        if r[key] is not None:
            params[key] = r[key]
    return params


def describe_request(params: dict[str, Any]) -> str:
    """One line of what each trial asks slurm for; says so when it asks for no GPU."""
    gpus = params.get("gpus_per_node", 0)
    line = (f"slurm request per trial: {params['nodes']} node(s) x "
            + (f"{gpus} GPU(s)" if gpus else "no GPU") + f", {params['cpus_per_task']} CPUs "
            f"and {params['mem']} per node, {params['time']} min, partition "
            + (params["partition"] if params.get("partition") else "the cluster's default"))
    if not gpus:
        line += ("; no GPU requested (--slurm_gpus_per_node=0): trials train on the CPUs, "
                 "set --slurm_gpus_per_node=N for GPUs")
    return line


def submit_slurm(jobs: Sequence[TrialJob], workdir: str, resources: dict[str, Any], *,
                 dry_run: bool = False) -> dict[str, Any]:
    """Submit the unfinished trials as one job array; return what was (or would be) submitted:
    the sbatch script, the parameters and per array task the trial and its command.

    `dry_run` renders the same script without a cluster (no `srun`/`sbatch` needed).
    """
    import submitit
    from submitit.slurm import slurm as submitit_slurm

    todo = [job for job in jobs if not is_finished(job)]
    folder = os.path.join(workdir, "slurm", "%j")
    params = slurm_parameters(resources, os.path.basename(os.path.normpath(workdir)))
    tasks = [SlurmTrialTask(job) for job in todo]
    plan: dict[str, Any] = {
        "parameters": params,
        "request": describe_request(params),
        "tasks": [{"array_index": i, "trial": t.job.name, "command": t.command(),
                   "suites": t.job.suites,
                   "eval_commands": [t.job.eval_command(s) for s in t.job.suites]}
                  for i, t in enumerate(tasks)],
        "job_ids": [],
    }
    if not todo:
        plan["sbatch"] = ""
        return plan
    if dry_run:
        python = shlex.quote(sys.executable)
        command = f"{python} -u -m submitit.core._submit {folder}"
        plan["sbatch"] = submitit_slurm._make_sbatch_string(
            command=command, folder=folder, map_count=len(tasks), **params)
        return plan
    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(**params)
    with executor.batch():
        submitted = [executor.submit(task) for task in tasks]
    plan["job_ids"] = [j.job_id for j in submitted]
    script = submitted[0].paths.submission_file if submitted else None
    plan["sbatch"] = open(script).read() if script and os.path.exists(script) else ""
    return plan
