"""One command for the performance table, on whatever devices exist.

    python benchmarks/suite.py --out results.json        # small,base on GPU/TPU; tiny,small on CPU
    python benchmarks/suite.py --sizes tiny --steps 2 --batch_size 8 --out /tmp/results.json
    python benchmarks/suite.py --optimizer muon                # the table for a Muon recipe

Per model size: the train step (compile time, step time, the analytic FLOP count MFU uses,
MFU where the device peak is known), Muon's share of a Muon step (its update alone, spread
over the mesh as in training), the data-wait and host share of the training loop
(`benchmarks/train_step.py --loop`), checkpoint blocking (async save), and inference latency
p50/p99 at batch 1 in event mode (`sample_actions`) and unified mode (Staircase Decoding).
A size that does not fit is reported as such and the next is tried. Prints the table as
Markdown, one JSON object (also to `--out`) and a one-line summary.
"""

from __future__ import annotations

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
from wallwm_jax import cli, sharding  # noqa: E402
from wallwm_jax.data.batches import Observation  # noqa: E402
from wallwm_jax.models import wallwm  # noqa: E402
from wallwm_jax.models.decoding import staircase_decode  # noqa: E402
from wallwm_jax.optim.factory import make_optimizer  # noqa: E402
from wallwm_jax.prefetch import IteratorState  # noqa: E402
from wallwm_jax.train_step import make_train_step  # noqa: E402


def _config(size: str, args: Any, mode: str = "event") -> Any:
    config = get_config(f"size={size},mode={mode}")
    if args.batch_size:
        config.batch_size = args.batch_size
    if getattr(args, "optimizer", None):
        config.optimizer.name = args.optimizer
    return config


def _median_s(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def muon_share(config: Any, steps: int, muon_step: dict[str, Any] | None = None
               ) -> dict[str, float]:
    """Seconds of Muon's update alone (sharded as in training) and of the whole Muon step
    (`muon_step`: that step's figures when already measured, i.e. the config trains with Muon)."""
    config = config.copy_and_resolve_references()
    config.optimizer.name = "muon"
    step = muon_step or step_bench.bench_variant(config, steps, warmup=1)
    mesh = sharding.make_mesh(config.mesh)
    fns = make_train_step(config, mesh)
    tx = make_optimizer(config.optimizer, config.total_steps,
                        wallwm.param_logical_axes(config.model), fns.param_sharding)
    params, state = fns.init_fn(jax.random.PRNGKey(0))
    grads = jax.tree.map(lambda p: p * 1e-3, params)
    update = jax.jit(lambda g, s, p: optax.apply_updates(p, tx.update(g, s, p)[0]),
                     out_shardings=fns.param_sharding)
    jax.block_until_ready(update(grads, state.opt_state, params))
    opt_s = _median_s(lambda: update(grads, state.opt_state, params), max(steps, 2))
    return {"muon_update_s": opt_s, "muon_step_s": step["step_time_s"],
            "muon_share": opt_s / step["step_time_s"]}


def checkpoint_blocking(config: Any) -> dict[str, float]:
    """Seconds the loop is blocked by an async save of params + optimizer state, and until
    the save is complete."""
    mesh = sharding.make_mesh(config.mesh)
    fns = make_train_step(config, mesh)
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


def size_row(size: str, args: Any) -> dict[str, Any]:
    """Every figure of the table for one model size."""
    config = _config(size, args)
    fns = make_train_step(config, sharding.make_mesh(config.mesh))
    row: dict[str, Any] = {"size": size, "batch_size": config.batch_size,
                           "optimizer": config.optimizer.name,
                           "params": wallwm.count_params(fns.abstract_params), **fns.precision}
    train = step_bench.bench_variant(config, args.steps, warmup=1)
    row.update({k: train[k] for k in ("compile_s", "step_time_s", "flops_per_step",
                                      "memory_bytes_per_device", "tokens_per_s",
                                      "model_flops_per_s") if k in train})
    row["flops_source"] = "analytic (wallwm_jax/models/flops.py), not XLA cost_analysis"
    row["mfu"] = train.get("mfu")
    row.update(muon_share(config, args.steps,
                          muon_step=train if config.optimizer.name == "muon" else None))
    loop = step_bench.loop_bench(config, max(args.steps, 2), log_every=10, rounds=1)
    row.update({k: loop[k] for k in ("data_wait_share", "host_share_after",
                                     "host_share_before", "after_steps_per_s")})
    row.update(checkpoint_blocking(config))
    for mode in ("event", "unified"):
        row.update(inference_latency(size, mode, args))
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as one Markdown table."""
    cols = [("size", "{}"), ("batch_size", "{}"), ("dtype", "{}"), ("attention", "{}"),
            ("compile_s", "{:.1f}"), ("step_time_s", "{:.3f}"), ("flops_per_step", "{:.3g}"),
            ("mfu", "{:.1%}"), ("muon_share", "{:.0%}"), ("data_wait_share", "{:.1%}"),
            ("host_share_after", "{:.0%}"), ("checkpoint_blocking_s", "{:.3f}"),
            ("event_p50_ms", "{:.1f}"), ("event_p99_ms", "{:.1f}"),
            ("unified_p50_ms", "{:.1f}"), ("unified_p99_ms", "{:.1f}")]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | " + r["error"][:120] + " |" * (len(cols) - 1))
            continue
        cells = ["n/a" if r.get(c) is None else f.format(r[c]) for c, f in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def define_flags() -> None:
    """The benchmark's flags (defined only when run as a program)."""
    flags.DEFINE_list("sizes", None, "Model sizes; default small,base on GPU/TPU, tiny,small "
                      "on CPU.")
    flags.DEFINE_integer("batch_size", None, "Global batch (default: the config's).")
    flags.DEFINE_integer("steps", 3, "Timed steps per size.")
    flags.DEFINE_integer("latency_repeats", 20, "Inference calls per latency figure.")
    flags.DEFINE_string("out", None, "Also write the JSON here.")
    flags.DEFINE_enum("optimizer", None, ["adamw", "muon"], "Train-step optimizer (default: "
                      "the config's); with muon, Muon's share is of this same step.")


def run_suite(sizes: Sequence[str] | str | None = None, batch_size: int | None = None,
              steps: int = 3, latency_repeats: int = 20, out: str | None = None,
              optimizer: str | None = None) -> dict[str, Any]:
    """Measure every size, print the table and the JSON report, return the report.

    `sizes`: model sizes, as `--sizes` gives them or as one comma list ("tiny,small")."""
    args = SimpleNamespace(sizes=sizes, batch_size=batch_size, steps=steps,
                           latency_repeats=latency_repeats, out=out, optimizer=optimizer)
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
                    f"{r['compile_s']:.1f}s, Muon {r['muon_share']:.0%}, data wait "
                    f"{r['data_wait_share']:.1%}, event p50 {r['event_p50_ms']:.1f} ms, unified "
                    f"p50 {r['unified_p50_ms']:.1f} ms" for r in ok))
    return report


def main(argv: list[str]) -> None:
    """CLI: `python benchmarks/suite.py [--sizes tiny] [--out results.json]`."""
    cli.positional(argv)
    fl = flags.FLAGS
    run_suite(fl.sizes, fl.batch_size, fl.steps, fl.latency_repeats, fl.out, fl.optimizer)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
