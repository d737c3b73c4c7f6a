"""One logging path for training: `metrics.jsonl` plus TensorBoard event files (tensorboardX).

JAX and tensorboardX are imported where they are used, so the readers of `metrics.jsonl`
(`read_metrics`: the sweep's table, plots and report) start without them.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from typing import Any

import ml_collections
import numpy as np


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
        from tensorboardX import SummaryWriter

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

    `data_time` is the device's wait for data: of the loop's wait for a step's batch, the part
    after the previous step was computed (the loop runs ahead of the device, so a wait that
    overlaps the previous step idles nothing). Steps whose `add` is given their outputs are
    watched by a thread that notes when each is computed; a step without them (the first,
    or a caller that does not pass them) counts its whole wait. `queue_time` is the whole
    wait, what `data_time` was before.
    """

    def __init__(self) -> None:
        self.t0, self.steps, self.data, self.queue = time.perf_counter(), 0, 0.0, 0.0
        self._pending: list[tuple[int, float, float]] = []  # (previous step, wait from, to)
        self._watcher: _Watcher | None = None
        self._dispatched = 0  # steps given with their outputs so far

    def add(self, *, data_s: float, waited: tuple[float, float] | None = None,
            outputs: Any = None) -> None:
        """One step dispatched, after waiting `data_s` seconds for its batch; `waited` (the
        wait's start and end, perf_counter) and `outputs` (the step's results) let the wait
        be split at the moment the previous step was computed."""
        self.steps += 1
        self.queue += data_s
        if outputs is None or waited is None:
            self.data += data_s
            return
        if self._watcher is None:
            self._watcher = _Watcher()
        if self._dispatched:
            self._pending.append((self._dispatched - 1, *waited))
        else:  # nothing ran before it here: the whole wait
            self.data += data_s
        self._watcher.watch(self._dispatched, outputs)
        self._dispatched += 1

    def take(self, block_on: Any = None) -> dict[str, float]:
        """{"step_time", "data_time", "queue_time"} per step since the last take; with
        `block_on` (the window's last step outputs) the clock is read once they are computed.
        Waits for the window's next-to-last step to be computed (the device still has the
        last one), to split the waits."""
        if block_on is not None:
            import jax

            jax.block_until_ready(block_on)
        now = time.perf_counter()
        for previous, start, end in self._pending:
            done = self._watcher.done_at(previous)
            self.data += max(0.0, end - max(start, done))
        self._pending = []
        steps = max(self.steps, 1)
        out = {"step_time": (now - self.t0) / steps, "data_time": self.data / steps,
               "queue_time": self.queue / steps}
        self.t0, self.steps, self.data, self.queue = now, 0, 0.0, 0.0
        return out

    def close(self) -> None:
        """Stop the watching thread (if one was started)."""
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None


class _Watcher:
    """A thread that waits on dispatched steps' outputs in order and notes when each was
    computed (perf_counter)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._done: dict[int, float] = {}
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="step-watch", daemon=True)
        self._thread.start()

    def watch(self, n: int, outputs: Any) -> None:
        self._queue.put((n, outputs))

    def _run(self) -> None:
        import jax

        while True:
            n, outputs = self._queue.get()
            if n is None:
                return
            try:
                jax.block_until_ready(outputs)
            except Exception:  # noqa: BLE001  (the loop reports a failed step itself)
                pass
            with self._cv:
                self._done[n] = time.perf_counter()
                self._cv.notify_all()

    def done_at(self, n: int) -> float:
        """When step n was computed (waits for it)."""
        with self._cv:
            self._cv.wait_for(lambda: n in self._done)
            return self._done.pop(n)

    def close(self) -> None:
        self._queue.put((None, None))
        self._thread.join()


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
