"""One trial's lifecycle: train (a subprocess that resumes), evaluate each suite, status files.

`DIR/trials/<name>/` holds `trial.json` (what to run), `status.json` (pending / running /
interrupted / trained / done / failed, written atomically), `log.txt`, `run/` (checkpoints,
metrics.jsonl) and `eval/<suite>/results.json`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from wallwm_jax.cli import EXIT_PREEMPTED
from wallwm_jax.sweep.hyper import SweepSpec, apply_overrides

UNFINISHED = ("pending", "running", "interrupted", "failed")
_LOG_TAIL_LINES = 30

_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()


@dataclasses.dataclass
class TrialJob:
    """Everything a launcher needs to run one trial anywhere (picklable)."""

    name: str
    trial_dir: str
    sweep: str  # sweep file path[:arg]
    overrides: dict[str, Any]  # this trial's swept values
    global_overrides: dict[str, Any]  # --config.X=... for every trial
    suites: list[str]
    eval_settings: dict[str, Any]
    config_hash: str
    mode: str | None = None
    stop_after: int | None = None

    @property
    def run_dir(self) -> str:
        return os.path.join(self.trial_dir, "run")

    def train_command(self) -> list[str]:
        """The training process of this trial (resumes from `run/checkpoints` by itself)."""
        cmd = [sys.executable, "-m", "wallwm_jax.sweep.trial", "--sweep", self.sweep,
               "--trial", os.path.join(self.trial_dir, "trial.json"), "--workdir", self.run_dir]
        if self.stop_after:
            cmd += ["--stop_after", str(self.stop_after)]
        return cmd

    @property
    def split(self) -> str:
        """The scene split the trial is evaluated on (`eval_settings["split"]`, default test)."""
        return self.eval_settings.get("split") or "test"

    def eval_command(self, suite: str) -> list[str]:
        """The closed-loop evaluation of the trained checkpoint on one suite's scene split."""
        s = self.eval_settings
        cmd = [sys.executable, "-m", "wallwm_jax.evaluation", "--policy",
               os.path.join(self.run_dir, "checkpoints"), "--suite", suite,
               "--workdir", os.path.join(self.trial_dir, "eval", suite), "--split", self.split]
        if self.mode:
            cmd += ["--mode", self.mode]
        for key in ("tasks", "episodes_per_task", "workers", "episode_limit"):
            if s.get(key) not in (None, "", [], ()):
                value = s[key]
                value = ",".join(value) if isinstance(value, (list, tuple)) else value
                cmd += [f"--{key}", str(value)]
        extra = s.get("extra_args") or ()
        cmd += shlex.split(extra) if isinstance(extra, str) else list(extra)
        return cmd


def config_hash(config: ml_collections.ConfigDict) -> str:
    """A fingerprint of the fully resolved config (a changed config reruns the trial)."""
    text = config.to_json_best_effort(sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def trial_config(sweep: SweepSpec, trial: dict[str, Any]) -> ml_collections.ConfigDict:
    """The base config (CLI overrides applied) with one trial's overrides."""
    return apply_overrides(copy.deepcopy(sweep.config), dict(trial))  # deep: keeps references


def prepare(sweep: SweepSpec, workdir: str, global_overrides: dict[str, Any],
            suites: Sequence[str], eval_settings: dict[str, Any],
            stop_after: int | None = None, write: bool = True) -> list[TrialJob]:
    """Write each trial's `trial.json` and return the jobs; a trial whose resolved config
    changed since its last run (e.g. more steps) is marked pending again. `write=False`
    (dry run) only builds the jobs."""
    jobs = []
    for name, trial in zip(sweep.names, sweep.trials, strict=True):
        config = trial_config(sweep, trial)
        job = TrialJob(name=name, trial_dir=os.path.join(workdir, "trials", name),
                       sweep=sweep.spec, overrides=_jsonable(trial),
                       global_overrides=_jsonable(global_overrides), suites=list(suites),
                       eval_settings=dict(eval_settings), config_hash=config_hash(config),
                       mode=config.get("mode"), stop_after=stop_after)
        jobs.append(job)
        if not write:
            continue
        os.makedirs(job.trial_dir, exist_ok=True)
        old = read_json(os.path.join(job.trial_dir, "trial.json"))
        previous = read_status(job.trial_dir).get("status")
        if old and old.get("config_hash") != job.config_hash and previous not in (None,
                                                                                   "pending"):
            print(f"trial {name}: config changed since its last run; it runs again "
                  f"(training resumes from its latest checkpoint)", flush=True)
            write_status(job.trial_dir, status="pending")
        write_json(os.path.join(job.trial_dir, "trial.json"), dataclasses.asdict(job))
        if not read_status(job.trial_dir):
            write_status(job.trial_dir, status="pending")
    return jobs


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(values, default=lambda v: list(v) if isinstance(v, tuple)
                                 else repr(v)))


def read_json(path: str) -> dict[str, Any]:
    """A JSON file's object, or {} when it does not exist."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def write_json(path: str, obj: Any) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=repr)
    os.replace(tmp, path)


def read_status(trial_dir: str) -> dict[str, Any]:
    """The trial's `status.json` ({} before its first run)."""
    return read_json(os.path.join(trial_dir, "status.json"))


def write_status(trial_dir: str, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into `status.json` (atomically) and return the new status."""
    status = read_status(trial_dir)
    status.update(fields, updated=time.time())
    write_json(os.path.join(trial_dir, "status.json"), status)
    return status


def suite_results(trial_dir: str, suite: str) -> str:
    """Where the evaluation of `suite` writes its results."""
    return os.path.join(trial_dir, "eval", suite, "results.json")


def evaluated(trial_dir: str, suite: str, split: str) -> bool:
    """`suite` has results on `split`'s scenes (results on the other split, or from before
    scene splits, are measured again)."""
    return read_json(suite_results(trial_dir, suite)).get("split") == split


def is_finished(job: TrialJob) -> bool:
    """Done, with the same config, and every requested suite evaluated on the job's split."""
    return (read_status(job.trial_dir).get("status") == "done"
            and all(evaluated(job.trial_dir, s, job.split) for s in job.suites))


def log_tail(trial_dir: str, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of the trial's log (what a failed trial records)."""
    try:
        with open(os.path.join(trial_dir, "log.txt"), errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return ""


def _run_logged(cmd: list[str], trial_dir: str, env: dict[str, str] | None) -> int:
    """Run `cmd`, appending its stdout+stderr to log.txt; SIGTERM to the sweep reaches it."""
    with open(os.path.join(trial_dir, "log.txt"), "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
        with _children_lock:
            _children.add(proc)
        try:
            return proc.wait()
        finally:
            with _children_lock:
                _children.discard(proc)


def terminate_children(signum: int = signal.SIGTERM) -> None:
    """Forward a signal to every running trial process (training saves and stops)."""
    with _children_lock:
        for proc in _children:
            if proc.poll() is None:
                proc.send_signal(signum)


def run_trial(job: TrialJob, env: dict[str, str] | None = None, chief: bool = True,
              log: Callable[[str], None] = print) -> str:
    """Train (or resume) and evaluate one trial; return its final status.

    Non-chief processes of a multi-host trial only train. A finished trial is skipped, a
    trained one only runs its missing evaluations.
    """
    if is_finished(job):
        log(f"trial {job.name}: done, skipped")
        return "skipped"
    status = read_status(job.trial_dir)
    trained = status.get("status") in ("trained", "done") or (
        status.get("status") == "failed" and str(status.get("stage")).startswith("eval"))
    if not trained:
        attempts = int(status.get("attempts", 0)) + 1
        if chief:
            write_status(job.trial_dir, status="running", stage="train", attempts=attempts,
                         started=time.time(), error=None)
        log(f"trial {job.name}: training" + (f" (attempt {attempts})" if attempts > 1 else ""))
        t0 = time.time()
        rc = _run_logged(job.train_command(), job.trial_dir, env)
        wall = float(status.get("train_wall_s", 0.0)) + time.time() - t0
        if not chief:
            return {0: "trained", EXIT_PREEMPTED: "interrupted"}.get(rc, "failed")
        if rc == EXIT_PREEMPTED:  # stopped with a checkpoint (preemption): resume later
            write_status(job.trial_dir, status="interrupted", train_wall_s=wall, returncode=rc)
            log(f"trial {job.name}: interrupted with a checkpoint; rerun to resume")
            return "interrupted"
        if rc != 0:
            write_status(job.trial_dir, status="failed", stage="train", train_wall_s=wall,
                         returncode=rc, error=log_tail(job.trial_dir))
            log(f"trial {job.name}: FAILED in training (exit {rc}); see "
                f"{os.path.join(job.trial_dir, 'log.txt')}")
            return "failed"
        write_status(job.trial_dir, status="trained", train_wall_s=wall, returncode=0)
    if not chief:
        return "trained"
    eval_wall = float(read_status(job.trial_dir).get("eval_wall_s", 0.0))
    for suite in job.suites:
        if evaluated(job.trial_dir, suite, job.split):
            continue
        write_status(job.trial_dir, stage=f"eval:{suite}")
        log(f"trial {job.name}: evaluating on {suite}")
        t0 = time.time()
        rc = _run_logged(job.eval_command(suite), job.trial_dir, env)
        eval_wall += time.time() - t0
        if rc != 0 or not evaluated(job.trial_dir, suite, job.split):
            write_status(job.trial_dir, status="failed", stage=f"eval:{suite}", returncode=rc,
                         eval_wall_s=eval_wall, error=log_tail(job.trial_dir))
            log(f"trial {job.name}: FAILED in evaluation on {suite} (exit {rc})")
            return "failed"
    write_status(job.trial_dir, status="done", stage=None, eval_wall_s=eval_wall,
                 finished=time.time(), suites=job.suites)
    log(f"trial {job.name}: done")
    return "done"
