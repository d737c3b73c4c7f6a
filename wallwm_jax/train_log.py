"""One logging path for training: `metrics.jsonl` plus TensorBoard event files (tensorboardX)."""

from __future__ import annotations

import json
import os
from typing import Any

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
