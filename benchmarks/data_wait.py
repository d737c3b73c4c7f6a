"""What the training loop's data wait costs: the same loop and compiled step fed by the real
input pipeline and by one batch repeated (no host work), in alternating rounds.

    python benchmarks/data_wait.py                    # tiny, 32-px test-sized dataset, 120 steps
    python benchmarks/data_wait.py --data_dir DIR --steps 200 --rounds 5

The loop is train.py's: a prefetch thread puts the next batch on the devices while a step
runs, metrics are fetched a step late at log steps, and `train_log.StepTimer` times it. Per
round and feed: seconds per step, the loop's wait on the prefetch queue (`queue_time`, what
metrics.jsonl's `data_time` was before) and the device's wait for data (`data_time` now: the
part of that wait after the previous step was computed), as shares of the step. The cost of
the real pipeline is also read from the two step times: 1 - repeated / real (median of the
per-round ratios). Prints one JSON object and a one-line summary. Aim: data wait <= 5%.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from absl import flags  # noqa: E402

from experiments.pretrain import get_config  # noqa: E402
from wallwm_jax import cli, sharding  # noqa: E402
from wallwm_jax.data.batches import abstract_batch  # noqa: E402
from wallwm_jax.data.pipeline import make_pipeline  # noqa: E402
from wallwm_jax.prefetch import Prefetcher  # noqa: E402
from wallwm_jax.train_log import StepTimer  # noqa: E402
from wallwm_jax.train_step import make_train_step  # noqa: E402


class RepeatedBatch:
    """The first batch of a real pipeline, yielded again at every draw (the same shapes and
    values, no host work), with the `get_state()` the prefetcher records."""

    def __init__(self, batch: Any) -> None:
        self.batch, self.n = batch, 0

    def __next__(self) -> Any:
        self.n += 1
        return self.batch

    def get_state(self) -> dict[str, int]:
        return {"n": self.n}


def test_sized_dataset() -> str:
    """The tests' dataset (reach-v3 + push-v3, 4 episodes each, 32 px), built once under the
    temp directory."""
    from data_builders.metaworld_events import build

    return build(os.path.join(tempfile.gettempdir(), "wallwm_bench_data"), config="demo",
                 tasks=("reach-v3", "push-v3"), episodes_per_task=4, image_size=32, seed=0,
                 num_workers=1)


def run_loop(fns: Any, carry: list, feed_source: Any, mesh: Any, expected: Any, steps: int,
             log_every: int) -> dict[str, float]:
    """`steps` steps of train.py's loop on `feed_source` (after one untimed step): seconds
    per step and the `StepTimer` waits per step over them."""
    timer = StepTimer()
    pending: list = []
    queue_s = data_s = 0.0
    with Prefetcher(feed_source, mesh, expected, rules=fns.rules) as feed:
        item = feed.next()
        carry[0], carry[1], m = fns.update_fn(carry[0], carry[1], item.batch, fns.run_inputs)
        jax.block_until_ready(m)
        timer.take()  # the untimed step's window
        t0 = time.perf_counter()
        for i in range(1, steps + 1):
            t = time.perf_counter()
            item = feed.next()
            got = time.perf_counter()
            carry[0], carry[1], m = fns.update_fn(carry[0], carry[1], item.batch,
                                                  fns.run_inputs)
            timer.add(data_s=got - t, waited=(t, got), outputs=m)
            pending.append(m)
            if i % log_every == 0 or i == steps:  # a window, as train.py logs it
                window = timer.take(block_on=m if i == steps else None)
                queue_s += window["queue_time"] * (log_every if i % log_every == 0
                                                   else i % log_every)
                data_s += window["data_time"] * (log_every if i % log_every == 0
                                                 else i % log_every)
            if (i - 1) % log_every == 0 or i == steps:  # metrics a step late, as train.py
                jax.device_get(pending[:-1] if i < steps else pending)
                pending = pending[-1:] if i < steps else []
        total = time.perf_counter() - t0
    timer.close()
    return {"step_s": total / steps, "queue_share": queue_s / total,
            "data_share": data_s / total}


def data_wait(config: Any, steps: int, rounds: int) -> dict[str, Any]:
    """The real pipeline ("real") and one batch repeated ("repeated") feeding the same
    compiled step in alternating rounds; per-round figures and their medians."""
    mesh = sharding.make_mesh(config.mesh)
    fns = make_train_step(config, mesh)
    expected = abstract_batch(config, config.batch_size // jax.process_count())
    carry = list(fns.init_fn(jax.random.PRNGKey(0)))
    first = next(make_pipeline(config.data, global_batch=config.batch_size, seed=0))
    runs: dict[str, list[dict[str, float]]] = {"real": [], "repeated": []}
    for r in range(rounds):
        pipeline = make_pipeline(config.data, global_batch=config.batch_size, seed=r)
        try:
            runs["real"].append(run_loop(fns, carry, pipeline, mesh, expected, steps,
                                         int(config.log_every_steps)))
        finally:
            if config.data.num_workers:
                pipeline.iterator.close()
        runs["repeated"].append(run_loop(fns, carry, RepeatedBatch(first), mesh, expected,
                                         steps, int(config.log_every_steps)))
    out: dict[str, Any] = {"steps": steps, "rounds": rounds, "batch_size": config.batch_size,
                           "image_size": config.data.image_size, "runs": runs}
    for feed in runs:
        for key in ("step_s", "queue_share", "data_share"):
            out[f"{feed}_{key}"] = statistics.median(r[key] for r in runs[feed])
    out["cost_share"] = statistics.median(1 - b["step_s"] / a["step_s"] for a, b in
                                          zip(runs["real"], runs["repeated"], strict=True))
    return out


def define_flags() -> None:
    """The benchmark's flags (defined only when run as a program)."""
    flags.DEFINE_string("data_dir", "", "Built dataset (default: the tests' 32-px dataset, "
                        "built once).")
    flags.DEFINE_string("size", "tiny", "Model size (experiments/pretrain.py).")
    flags.DEFINE_integer("steps", 120, "Timed steps per round and feed.")
    flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
    flags.DEFINE_integer("workers", 0, "Grain worker processes (data.num_workers).")


def main(argv: list[str]) -> None:
    """Run the benchmark and print JSON + a summary."""
    cli.positional(argv)
    args = flags.FLAGS
    data_dir = args.data_dir or test_sized_dataset()
    from wallwm_jax.data.checks import dataset_spec

    config = get_config(f"size={args.size}")
    config.data.data_dir = data_dir
    config.data.image_size = dataset_spec(data_dir).cameras["image"][0]
    config.data.num_workers = args.workers
    config = config.copy_and_resolve_references()
    result = data_wait(config, args.steps, args.rounds)
    result.update({"data_dir": data_dir, "size": args.size, "workers": args.workers,
                   "load_average": os.getloadavg(), "device": jax.devices()[0].device_kind})
    print(json.dumps(result, indent=1))
    print(f"data wait ({args.size}, batch {config.batch_size}, {config.data.image_size} px, "
          f"{args.steps} steps x {args.rounds} rounds, medians): device waits for data "
          f"{result['real_data_share']:.1%} of the loop (queue wait "
          f"{result['real_queue_share']:.1%}; repeated batch: "
          f"{result['repeated_data_share']:.1%} / "
          f"{result['repeated_queue_share']:.1%}); real pipeline vs repeated batch: "
          f"{1e3 * result['real_step_s']:.0f} vs {1e3 * result['repeated_step_s']:.0f} ms/step, "
          f"cost {result['cost_share']:.1%} [aim <= 5%]")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
