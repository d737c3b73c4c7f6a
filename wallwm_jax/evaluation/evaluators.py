"""The evaluations the training loop runs, as one list with one interface (big_vision's
`evaluators`): each knows when it is due and turns the current params into flat metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
from jax.sharding import Mesh

from wallwm_jax.evaluation.closed_loop import ClosedLoopEval
from wallwm_jax.evaluation.offline import OfflineEvaluator

PREFIX = "eval"  # offline metrics in the loop: eval/<metric> (the split is always val)


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """`name`, run every `every` steps and at the last step; `run(params, step)` -> metrics."""

    name: str
    every: int
    run: Callable[[Any, int], dict[str, float]]

    def due(self, step: int, done: bool) -> bool:
        return step % self.every == 0 or done

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        return self.run(params, step)


def make_evaluators(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh, *,
                    norm_stats: dict[str, Any], tokenizer_path: str,
                    embodiments: list[tuple[Any, dict[str, Any]]] | None = None
                    ) -> list[Evaluator]:
    """What `config` asks the loop to evaluate: the offline metrics on the val split
    (`eval_every_steps`), by event cluster (`eval.by_cluster`), and closed-loop success in a
    suite (`eval.closed_loop`), with the run's norm stats and tokenizer; `embodiments` (the
    pipeline's (embodiment, stats) per dataset) lets the closed loop run the simulator's robot
    of a mixture."""
    evaluators = []
    every = int(config.get("eval_every_steps", 0))
    if every > 0:
        evaluators.append(Evaluator("offline", every, OfflineEvaluator(
            config, split="val", mesh=mesh, num_batches=config.eval.get("num_batches", 4),
            prefix=PREFIX)))
        if config.eval.get("by_cluster", False):
            from wallwm_jax.evaluation.clusters import ClusterEvaluator

            evaluators.append(Evaluator("by_cluster", every, ClusterEvaluator(
                config, split="val", prefix=PREFIX, norm_stats=norm_stats)))
    closed_loop = ClosedLoopEval.from_config(config, workdir, norm_stats, tokenizer_path,
                                             embodiments)
    if closed_loop is not None:
        evaluators.append(Evaluator("closed_loop", closed_loop.every, closed_loop))
    return evaluators
