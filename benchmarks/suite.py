"""One command for the performance table, on whatever devices exist.

    python benchmarks/suite.py --out results.json        # small,base on GPU/TPU; tiny,small on CPU
    python benchmarks/suite.py --sizes tiny --steps 2 --batch_size 8 --out /tmp/results.json
    python benchmarks/suite.py --optimizer muon                # the table for a Muon recipe
    python benchmarks/suite.py --data_dir DIR --image_size 32  # rows at the dataset's size

Per model size: the train step (compile time, step time, the analytic FLOP count MFU uses,
MFU where the device peak is known), the same step with Muon vs AdamW and Muon's update share
(its update alone, spread over the mesh as in training), all timed in alternating rounds
(`--rounds`, every ratio taken within a round, one step time per configuration), Muon's
Newton–Schulz FLOPs as a share of the step's at batch 8/64/256 and the batch where it falls
under 2% on 1/8/64 devices (analytic), the training loop's data wait on the real input
pipeline (Grain over a built dataset, `--data_dir`; by default a small demo dataset is built;
the device's wait, as metrics.jsonl's `data_time`, and the loop's whole wait for batches)
and its host share (`benchmarks/train_step.py --loop`), checkpoint blocking (async save),
and inference latency p50/p99 at batch 1 in event mode (`sample_actions`) and unified mode
(Staircase Decoding). A size that does not fit is reported as such and the next is tried.
Each size's train step is traced and compiled once; the loop, data-wait (at the same image
size) and checkpoint rows reuse it.
Prints the table as Markdown, one JSON object (also to `--out`) and a one-line summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import train_step as step_bench  # noqa: E402  (benchmarks/train_step.py)
from absl import flags  # noqa: E402

from experiments.pretrain import get_config  # noqa: E402
from wallwm_jax import checkpoint as ckpt  # noqa: E402
from wallwm_jax import cli, sharding, throughput  # noqa: E402
from wallwm_jax.data.batches import Observation  # noqa: E402
from wallwm_jax.models import wallwm  # noqa: E402
from wallwm_jax.models.decoding import staircase_decode  # noqa: E402
from wallwm_jax.optim.factory import make_optimizer  # noqa: E402
from wallwm_jax.prefetch import IteratorState  # noqa: E402
from wallwm_jax.train_log import StepTimer  # noqa: E402
from wallwm_jax.train_step import StepCache, make_train_step  # noqa: E402


def _config(size: str, args: Any, mode: str = "event") -> Any:
    config = get_config(f"size={size},mode={mode}")
    if args.batch_size:
        config.batch_size = args.batch_size
    if getattr(args, "optimizer", None):
        config.optimizer.name = args.optimizer
    if getattr(args, "image_size", None):
        config.data.image_size = config.model.image_size = args.image_size
    return config


def _with_optimizer(config: Any, name: str) -> Any:
    config = config.copy_and_resolve_references()
    config.optimizer.name = name
    return config


def train_steps(config: Any, steps: int, rounds: int,
                cache: StepCache | None = None) -> dict[str, Any]:
    """The config's train step, the same step with AdamW and with Muon, and Muon's update
    alone (sharded as in training), timed in alternating rounds: one step-time figure per
    configuration, and every ratio (Muon/AdamW, Muon's update share) taken within a round.
    Both steps go into `cache` (the row's later measurements reuse the config's)."""
    adamw = step_bench.Variant(_with_optimizer(config, "adamw"), cache=cache)
    muon = step_bench.Variant(_with_optimizer(config, "muon"), cache=cache)
    tx = make_optimizer(muon.config.optimizer, muon.config.total_steps,
                        wallwm.param_logical_axes(config.model), muon.fns.param_sharding)
    grads = jax.tree.map(lambda p: p * 1e-3, muon.params)
    update = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]),
                     out_shardings=muon.fns.param_sharding)
    jax.block_until_ready(update(grads, muon.state.opt_state, muon.params))

    def update_s() -> float:
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            jax.block_until_ready(update(grads, muon.state.opt_state, muon.params))
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    runs = step_bench.alternate({
        "adamw": lambda: statistics.median(adamw.step_times(steps)),
        "muon": lambda: statistics.median(muon.step_times(steps)),
        "muon_update": update_s}, rounds)
    main = muon if config.optimizer.name == "muon" else adamw
    out = step_bench.variant_report(main, statistics.median(runs[config.optimizer.name]),
                                    runs[config.optimizer.name])
    out.update(adamw_step_s=statistics.median(runs["adamw"]),
               muon_step_s=statistics.median(runs["muon"]),
               muon_update_s=statistics.median(runs["muon_update"]),
               muon_vs_adamw=step_bench.round_ratio(runs, "muon", "adamw"),
               muon_share=step_bench.round_ratio(runs, "muon_update", "muon"),
               round_times_s=runs)
    return out


def newton_schulz_row(config: Any) -> dict[str, Any]:
    """Analytic Newton–Schulz FLOPs (spread path) as a share of the step's model FLOPs at
    batch 8, 64 and 256 on one device, and the global batch where it falls under 2% on 1, 8
    and 64 devices (fsdp)."""
    muon = _with_optimizer(config, "muon")
    ns = {n: throughput.newton_schulz_flops(muon, n) for n in (1, 8, 64)}
    out: dict[str, Any] = {"ns_flops_per_device": {str(n): f for n, f in ns.items()}}
    for b in (8, 64, 256):
        out[f"ns_share_b{b}"] = throughput.newton_schulz_share(muon, b, ns_flops=ns[1])
    out["ns_under_2pct_batch"] = {
        str(n): throughput.newton_schulz_crossing_batch(muon, n, ns_flops=ns[n]) for n in ns}
    return out


def checkpoint_blocking(config: Any, cache: StepCache | None = None) -> dict[str, float]:
    """Seconds the loop is blocked by an async save of params + optimizer state, and until
    the save is complete (the state's initialisation reused from `cache` when there)."""
    mesh = sharding.make_mesh(config.mesh)
    fns = make_train_step(config, mesh, cache=cache)
    params, state = fns.init_fn(jax.random.PRNGKey(0))
    jax.block_until_ready(params)
    with tempfile.TemporaryDirectory() as d:
        manager = ckpt.make_manager(d, config.checkpoint)
        t0 = time.perf_counter()
        ckpt.save(manager, 1, params, {"step": state.step, "opt_state": state.opt_state},
                  IteratorState({"n": 0}), {"config.json": b"{}"}, force=True)
        blocking = time.perf_counter() - t0
        manager.wait_until_finished()
        total = time.perf_counter() - t0
        manager.close()
    return {"checkpoint_blocking_s": blocking, "checkpoint_total_s": total}


def inference_latency(size: str, mode: str, args: Any) -> dict[str, float]:
    """p50/p99 latency (ms) of one jitted batch-1 inference in `mode` on one device."""
    config = _config(size, args, mode)
    m, d = config.model, config.data
    rng = np.random.default_rng(0)
    params = wallwm.init_params(m, jax.random.PRNGKey(0))
    obs = Observation(
        image=rng.integers(0, 256, (1, d.image_size, d.image_size, 3), dtype=np.uint8),
        state=rng.standard_normal((1, m.state_dim)).astype(np.float32),
        instruction=rng.integers(1, m.vocab_size, (1, d.instruction_len)).astype(np.int32),
        caption=rng.integers(1, m.vocab_size, (1, min(int(m.max_captions), 1),
                                               d.caption_len)).astype(np.int32))
    if mode == "unified":
        fn = jax.jit(lambda p, o, r: staircase_decode(m, p, o, r, max_len=d.caption_len))
    else:
        fn = jax.jit(lambda p, o, r: wallwm.sample_actions(m, p, o, r))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, obs, jax.random.PRNGKey(0)))
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(args.latency_repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(params, obs, jax.random.PRNGKey(i)))
        times.append((time.perf_counter() - t) * 1e3)
    return {f"{mode}_p50_ms": float(np.percentile(times, 50)),
            f"{mode}_p99_ms": float(np.percentile(times, 99)),
            f"{mode}_compile_s": compile_s}


def wait_dataset(image_size: int) -> str:
    """A 4-episode reach-v3 demo dataset at `image_size`, built once under the temp dir (what
    the data-wait row reads when `--data_dir` is not given)."""
    from data_builders.metaworld_events import metaworld_events as mwe

    return mwe.build(os.path.join(tempfile.gettempdir(), "wallwm_bench_data"),
                     tasks=("reach-v3",), episodes_per_task=4, image_size=image_size)


def data_wait(config: Any, data_dir: str, steps: int, log_every: int = 10,
              cache: StepCache | None = None) -> dict[str, Any]:
    """Share of the training loop's time the device waits for the real input pipeline (Grain
    over `data_dir`, the prefetch thread of train.py, metrics fetched a step late at log
    steps), after one untimed step (compile); at the dataset's image size when it differs from
    the config's (the step is compiled at that size). At the config's size the step is the one
    in `cache` (`data_dir` is not part of its program key), not compiled again.

    Timed as train.py times it (`train_log.StepTimer`): `data_wait_share` is metrics.jsonl's
    `data_time` over `step_time` (the part of each batch wait after the previous step was
    computed), `data_queue_share` the loop's whole wait for batches (`queue_time`), most of
    which overlaps a step still running on the device."""
    from wallwm_jax.data.batches import abstract_batch
    from wallwm_jax.data.checks import dataset_spec
    from wallwm_jax.data.pipeline import make_pipeline
    from wallwm_jax.prefetch import Prefetcher

    config = config.copy_and_resolve_references()
    config.data.data_dir = data_dir
    size = dataset_spec(data_dir).cameras["image"][0]
    config.data.image_size = config.model.image_size = size
    mesh = sharding.make_mesh(config.mesh)
    fns = make_train_step(config, mesh, cache=cache)
    per_host = config.batch_size // jax.process_count()
    carry = list(fns.init_fn(jax.random.PRNGKey(0)))
    pipeline = make_pipeline(config.data, global_batch=config.batch_size, seed=0)
    pending = []
    try:
        with Prefetcher(pipeline, mesh, abstract_batch(config, per_host),
                        rules=fns.rules) as feed, contextlib.closing(StepTimer()) as timer:
            item = feed.next()
            carry[0], carry[1], m = fns.update_fn(carry[0], carry[1], item.batch,
                                                  fns.run_inputs)
            jax.block_until_ready(m)  # compiled
            timer.take()  # the clock starts now
            for i in range(1, steps + 1):
                t = time.perf_counter()
                item = feed.next()
                got = time.perf_counter()
                carry[0], carry[1], m = fns.update_fn(carry[0], carry[1], item.batch,
                                                      fns.run_inputs)
                timer.add(data_s=got - t, waited=(t, got), outputs=m)
                pending.append(m)
                if (i - 1) % log_every == 0 or i == steps:  # a step late, as train.py
                    jax.device_get(pending[:-1] if i < steps else pending)
                    pending = pending[-1:] if i < steps else []
            window = timer.take(block_on=m)
    finally:
        if config.data.num_workers:
            pipeline.iterator.close()
    return {"data_wait_share": window["data_time"] / window["step_time"],
            "data_queue_share": window["queue_time"] / window["step_time"],
            "data_wait_steps": steps, "data_wait_step_s": window["step_time"],
            "data_wait_image_size": size,
            "data_wait_source": f"real pipeline ({config.data.layout}, "
                                f"{config.data.num_workers} Grain workers) over {data_dir}"}


def size_row(size: str, args: Any) -> dict[str, Any]:
    """Every figure of the table for one model size."""
    config = _config(size, args)
    # Every measurement below that runs the config's own step (loop, data wait at the same
    # image size, checkpoint) reuses the one traced and compiled here once.
    cache = StepCache()
    fns = make_train_step(config, sharding.make_mesh(config.mesh), cache=cache)
    row: dict[str, Any] = {"size": size, "batch_size": config.batch_size,
                           "optimizer": config.optimizer.name,
                           "params": wallwm.count_params(fns.abstract_params), **fns.precision}
    train = train_steps(config, args.steps, args.rounds, cache=cache)
    row.update({k: train[k] for k in ("compile_s", "step_time_s",
                                      "flops_per_step", "memory_bytes_per_device",
                                      "tokens_per_s", "model_flops_per_s", "adamw_step_s",
                                      "muon_step_s", "muon_update_s", "muon_vs_adamw",
                                      "muon_share", "round_times_s") if k in train})
    row["flops_source"] = "analytic (wallwm_jax/models/flops.py), not XLA cost_analysis"
    row["mfu"] = train.get("mfu")
    row.update(newton_schulz_row(config))
    # The loop's shares come from its own alternating rounds (device only / loop).
    loop = step_bench.loop_bench(config, max(args.steps, 2), log_every=10, rounds=args.rounds,
                                 cache=cache)
    row.update({k: loop[k] for k in ("host_share_after", "host_share_before")})
    row["data_wait_share_synthetic"] = loop["data_wait_share"]  # host-made random batches
    row.update(data_wait(config, args.data_dir or wait_dataset(config.data.image_size),
                         max(args.steps * args.rounds, 6), cache=cache))
    if row["host_share_after"] < 0:
        row["host_share_note"] = ("negative: the loop ran faster than the device-only timing "
                                  "of the same rounds (noise), not clamped")
    row.update(checkpoint_blocking(config, cache=cache))
    for mode in ("event", "unified"):
        row.update(inference_latency(size, mode, args))
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as one Markdown table."""
    cols = [("size", "{}"), ("batch_size", "{}"), ("dtype", "{}"), ("attention", "{}"),
            ("compile_s", "{:.1f}"), ("step_time_s", "{:.3f}"), ("flops_per_step", "{:.3g}"),
            ("mfu", "{:.1%}"), ("muon_vs_adamw", "{:.2f}x"), ("muon_share", "{:.0%}"),
            ("ns_share_b8", "{:.0%}"), ("ns_share_b64", "{:.0%}"), ("ns_share_b256", "{:.1%}"),
            ("ns_2pct_batch", "{}"), ("data_wait_share", "{:.1%}"), ("data_queue_share", "{:.1%}"),
            ("host_share_after", "{:.0%}"), ("checkpoint_blocking_s", "{:.3f}"),
            ("event_p50_ms", "{:.1f}"), ("event_p99_ms", "{:.1f}"),
            ("unified_p50_ms", "{:.1f}"), ("unified_p99_ms", "{:.1f}")]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | " + r["error"][:120] + " |" * (len(cols) - 1))
            continue
        r = {**r, "ns_2pct_batch": "/".join(str(v) for v in r["ns_under_2pct_batch"].values())}
        cells = ["n/a" if r.get(c) is None else f.format(r[c]) for c, f in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def define_flags() -> None:
    """The benchmark's flags (defined only when run as a program)."""
    flags.DEFINE_list("sizes", None, "Model sizes; default small,base on GPU/TPU, tiny,small "
                      "on CPU.")
    flags.DEFINE_integer("batch_size", None, "Global batch (default: the config's).")
    flags.DEFINE_integer("image_size", None, "Image side for every row (default: the "
                         "config's); at `--data_dir`'s size the data wait reuses the row's "
                         "compiled step.")
    flags.DEFINE_integer("steps", 3, "Timed steps per round.")
    flags.DEFINE_integer("rounds", 3, "Alternating rounds for every ratio (A/B/A/B...).")
    flags.DEFINE_integer("latency_repeats", 20, "Inference calls per latency figure.")
    flags.DEFINE_string("out", None, "Also write the JSON here.")
    flags.DEFINE_string("data_dir", None, "Built dataset the data-wait row reads (default: a "
                        "4-episode reach-v3 demo dataset built at the config's image size).")
    flags.DEFINE_enum("optimizer", None, ["adamw", "muon"], "Train-step optimizer (default: "
                      "the config's); with muon, Muon's share is of this same step.")


def run_suite(sizes: Sequence[str] | str | None = None, batch_size: int | None = None,
              steps: int = 3, latency_repeats: int = 20, out: str | None = None,
              optimizer: str | None = None, rounds: int = 3,
              data_dir: str | None = None, image_size: int | None = None) -> dict[str, Any]:
    """Measure every size, print the table and the JSON report, return the report.

    `sizes`: model sizes, as `--sizes` gives them or as one comma list ("tiny,small");
    `data_dir`: the dataset the data-wait row reads (`wait_dataset` when None);
    `image_size`: every row's image side (default: the config's)."""
    args = SimpleNamespace(sizes=sizes, batch_size=batch_size, steps=steps,
                           latency_repeats=latency_repeats, out=out, optimizer=optimizer,
                           rounds=rounds, data_dir=data_dir, image_size=image_size)
    jax.config.update("jax_threefry_partitionable", True)
    backend = jax.default_backend()
    if isinstance(sizes, str):
        sizes = sizes.split(",")
    sizes = sizes or (("tiny", "small") if backend == "cpu" else ("small", "base"))
    rows = []
    for size in sizes:
        try:
            rows.append(size_row(size, args))
        except Exception as e:  # noqa: BLE001  (e.g. out of memory: report and go on)
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            rows.append({"size": size, "error": f"does not fit: {str(e).splitlines()[0]}"})
    dev = jax.devices()[0]
    report = {"backend": backend, "device_kind": dev.device_kind,
              "num_devices": jax.device_count(), "rows": rows}
    table = format_table(rows)
    print(f"{jax.device_count()} x {dev.device_kind} ({backend})\n\n{table}")
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    ok = [r for r in rows if "error" not in r]
    print("; ".join(f"{r['size']}: {r['step_time_s'] * 1e3:.0f} ms/step, compile "
                    f"{r['compile_s']:.1f}s, Muon/AdamW {r['muon_vs_adamw']:.2f}x (update "
                    f"{r['muon_share']:.0%}, NS {r['ns_share_b8']:.0%} of FLOPs at batch 8), "
                    f"data wait {r['data_wait_share']:.1%} "
                    f"(queue {r['data_queue_share']:.1%}), event p50 {r['event_p50_ms']:.1f} "
                    f"ms, unified p50 {r['unified_p50_ms']:.1f} ms" for r in ok))
    return report


def main(argv: list[str]) -> None:
    """CLI: `python benchmarks/suite.py [--sizes tiny] [--out results.json]`."""
    cli.positional(argv)
    fl = flags.FLAGS
    run_suite(fl.sizes, fl.batch_size, fl.steps, fl.latency_repeats, fl.out, fl.optimizer,
              fl.rounds, fl.data_dir, fl.image_size)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
