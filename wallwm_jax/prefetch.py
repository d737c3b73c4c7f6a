"""Draw the next host batch and put it on the devices while the current step runs.

The iterator state after each batch travels with it, so a checkpoint saves the state of the
batches training consumed, never of the ones drawn ahead (resume stays bitwise-identical).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

from jax.sharding import Mesh

from wallwm_jax import sharding
from wallwm_jax.data.batches import check_batch
from wallwm_jax.data.pipeline import InputPipeline


class IteratorState:
    """A frozen Grain iterator state, saved by `grain.checkpoint.CheckpointSave` like the
    iterator it was taken from (the handler calls `get_state()`)."""

    def __init__(self, state: Any) -> None:
        self._state = json.dumps(state, indent=4).encode()

    def get_state(self) -> bytes:
        return self._state


class Prefetched:
    """One global batch on the devices, with what the loop needs to know about it."""

    def __init__(self, batch: Any, state: IteratorState, load_s: float) -> None:
        self.batch, self.iterator_state, self.load_s = batch, state, load_s


_DONE = object()


class Prefetcher:
    """A background thread that keeps `depth` global batches ready (use as a context manager;
    it is stopped and joined on exit, exceptions included). The batch layout is checked once,
    on the first batch, against `expected_host_batch`."""

    def __init__(self, pipeline: InputPipeline, mesh: Mesh, expected_host_batch: Any, *,
                 depth: int = 1, rules: Any = None) -> None:
        self._pipeline, self._mesh, self._expected = pipeline, mesh, expected_host_batch
        self._rules = rules  # the config's sharding rules (their `batch` entry)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)

    def __enter__(self) -> Prefetcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        checked = False
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                host = next(self._pipeline)
                state = IteratorState(self._pipeline.get_state())
                if not checked:
                    check_batch(host, self._expected)
                    checked = True
                batch = sharding.global_batch(host, self._mesh, self._rules)
                if not self._put(Prefetched(batch, state, time.perf_counter() - t0)):
                    return
        except BaseException as e:  # handed to the loop, raised there
            self._put((_DONE, e))

    def next(self) -> Prefetched:
        """The next batch (waits for it); re-raises what the thread raised."""
        item = self._queue.get()
        if isinstance(item, tuple) and item and item[0] is _DONE:
            raise item[1]
        return item

    def close(self) -> None:
        """Stop the thread and wait for it (drains what it had ready)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
