"""One logging path for training: `metrics.jsonl` plus TensorBoard event files (tensorboardX)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tensorboardX import SummaryWriter


class MetricLogger:
    """Writes one JSON object per logged step and the same scalars to TensorBoard.

    Only one process of a multi-process run writes (`active`); the others' calls do nothing.
    """

    def __init__(self, workdir: str, config: ml_collections.ConfigDict, *, total_steps: int,
                 active: bool = True):
        self.every = max(1, int(config.log_every_steps))
        self.total_steps = total_steps
        self.active = active
        if not active:
            return
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def log(self, step: int, metrics: dict[str, Any], *, force: bool = False,
            **extra: float) -> None:
        """Record a train step's metrics (every `log_every_steps`, the last step, and
        whenever `force` is set)."""
        if not self.active or (not force and step % self.every and step != self.total_steps):
            return
        row = {"step": int(step)}
        row.update({k: float(np.asarray(v)) for k, v in metrics.items()})
        row.update({k: float(v) for k, v in extra.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for key, value in row.items():
            if key != "step":
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close both outputs."""
        if not self.active:
            return
        self._jsonl.close()
        self._tb.close()


class StepTimer:
    """Step and data-wait times averaged over the steps since the last `take`.

    Steps are dispatched asynchronously: between log steps the loop is paced by the device
    (metrics are fetched a step late), but at the end of a run nothing waits, so a window
    read then would time dispatch. `take(block_on=...)` waits for the window's last step.
    """

    def __init__(self) -> None:
        self.t0, self.steps, self.data = time.perf_counter(), 0, 0.0

    def add(self, *, data_s: float) -> None:
        """One step dispatched, after waiting `data_s` seconds for its batch."""
        self.steps += 1
        self.data += data_s

    def take(self, block_on: Any = None) -> dict[str, float]:
        """{"step_time", "data_time"} per step since the last take; with `block_on` (the
        window's last step outputs) the clock is read once they are computed."""
        if block_on is not None:
            jax.block_until_ready(block_on)
        now = time.perf_counter()
        out = {"step_time": (now - self.t0) / self.steps, "data_time": self.data / self.steps}
        self.t0, self.steps, self.data = now, 0, 0.0
        return out


def read_metrics(workdir: str, *, missing_ok: bool = False) -> list[dict[str, float]]:
    """All rows of `workdir/metrics.jsonl`, in the order they were written.

    A line that does not parse is skipped: a crash can cut the last row short, and a resumed
    run appends after it. With `missing_ok`, a run that never logged gives [] (a sweep trial
    not yet started) instead of FileNotFoundError.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if missing_ok and not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:  # a cut line (json.JSONDecodeError); blank lines too
                continue
    return rows
