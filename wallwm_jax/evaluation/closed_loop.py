"""Closed-loop evaluation inside the training loop (`config.eval.closed_loop`): every N
steps the current params act in a suite, and success per task/group is logged. It runs on the
suite's `dev` scenes unless `config.eval.closed_loop.split` says otherwise: a number watched
during training is one a choice is made from (tuning), never a `test` figure."""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np


class ClosedLoopEval:
    """Runs `config.eval.closed_loop.suite` on the current params; returns flat metrics."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str,
                 norm_stats: dict[str, Any], tokenizer_path: str,
                 embodiments: list[tuple[Any, dict[str, Any]]] | None = None):
        from wallwm_jax.evaluation import suites
        from wallwm_jax.policy import METAWORLD_EMBODIMENT

        cl = config.eval.closed_loop
        self.config, self.workdir = config, workdir
        self.norm_stats, self.tokenizer_path = norm_stats, tokenizer_path
        # The suites are MetaWorld's: in a mixture that has its robot, the policy reads and
        # acts as that robot (its statistics, widths and cameras), as `evaluation` does.
        self.embodiment = None
        for emb, stats in embodiments or ():
            if emb is not None and emb.name == METAWORLD_EMBODIMENT:
                self.embodiment, self.norm_stats = emb, stats
        self.every = int(cl.every_steps)
        self.suite = suites.get(cl.suite).subset(tuple(cl.tasks) or None,
                                                 int(cl.episodes_per_task))
        self.split = suites.check_split(cl.get("split", "dev"))

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, workdir: str,
                    norm_stats: dict[str, Any], tokenizer_path: str,
                    embodiments: list[tuple[Any, dict[str, Any]]] | None = None
                    ) -> ClosedLoopEval | None:
        """None when `config.eval.closed_loop.every_steps` is 0 (or the field is absent)."""
        cl = config.eval.get("closed_loop")
        if cl is None or int(cl.get("every_steps", 0)) <= 0:
            return None
        return cls(config, workdir, norm_stats, tokenizer_path, embodiments)

    def due(self, step: int, done: bool) -> bool:
        return step % self.every == 0 or done

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        """Evaluate `params` (every process calls this; process 0 runs the episodes)."""
        from jax.experimental import multihost_utils

        from wallwm_jax.evaluation.runner import PolicySpec, evaluate_suite, summary_metrics
        from wallwm_jax.policy import Policy

        if jax.process_count() > 1:
            params = multihost_utils.process_allgather(params, tiled=True)
        if jax.process_index() != 0:
            return {}
        host = jax.tree.map(np.asarray, jax.device_get(params))
        policy = Policy(host, self.config, self.norm_stats, self.tokenizer_path,
                        seed=int(self.config.seed), embodiment=self.embodiment)
        out = os.path.join(self.workdir, "closed_loop", f"step_{step}")
        results = evaluate_suite(PolicySpec(path=""), self.suite, out, actor=policy,
                                 split=self.split, progress=False)
        s = results["summary"]["overall"]
        print(f"closed-loop {self.suite.name} ({self.split}) at step {step}: {s['success']:.0%} "
              f"({s['successes']}/{s['n']})")
        return summary_metrics(results)
