"""Train-step benchmark: compile time, step time, tokens/s, model FLOP/s and MFU of the exact
step the training loop runs (`train_step.make_train_step`), for several remat policies; and
(`--loop`) steps/s of the loop before and after it stopped waiting on the host.

    python benchmarks/train_step.py                       # small on CPU, base on a GPU
    python benchmarks/train_step.py --size=small --remat=none,full,dots_saveable --steps=5
    python benchmarks/train_step.py --size=tiny --loop --steps=30

The first `--remat` entry is the baseline; the others are reported as ratios to it, taken per
round: all variants are compiled first, then timed in turn for `--rounds` rounds. MFU is
reported only where the device's peak FLOP/s is known (not on CPU). Prints one JSON object
and a one-line summary. Batches are random but well-formed (same shapes and dtypes as the
pipeline's, via `abstract_batch`).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from experiments.pretrain import get_config  # noqa: E402
from wallwm_jax import cli, sharding, throughput  # noqa: E402
from wallwm_jax.aot import memory_report  # noqa: E402
from wallwm_jax.data.batches import abstract_batch, check_batch  # noqa: E402
from wallwm_jax.data.pipeline import to_event_batch  # noqa: E402
from wallwm_jax.models import wallwm  # noqa: E402
from wallwm_jax.prefetch import Prefetcher  # noqa: E402
from wallwm_jax.train_step import StepCache, make_train_step  # noqa: E402
from wallwm_jax.tree_names import path_name  # noqa: E402


def random_batch(step_fns: Any, config: Any, seed: int) -> Any:
    """A well-formed global batch with the shapes/dtypes/sharding of `abstract_batch`."""
    rng = np.random.default_rng(seed)
    vocab, bins = int(config.model.vocab_size), int(config.model.num_duration_bins)

    def one(path: Any, a: jax.ShapeDtypeStruct) -> jax.Array:
        name = path_name(path)
        if a.dtype == np.uint8:
            x = rng.integers(0, 256, a.shape, dtype=np.uint8)
        elif a.dtype == bool:
            x = np.ones(a.shape, bool)
        elif "duration_bin" in name:
            x = rng.integers(0, bins, a.shape).astype(a.dtype)
        elif a.dtype == np.int32:  # tokens: no padding
            x = rng.integers(1, vocab, a.shape).astype(a.dtype)
        else:
            x = rng.standard_normal(a.shape).astype(a.dtype)
        return jax.device_put(x, a.sharding)

    return jax.tree_util.tree_map_with_path(one, step_fns.abstract_batch)


class SyntheticSource:
    """Host batches like the pipeline's (numpy, per-host shapes), made on the host each
    draw, with the `iterator.get_state()` the prefetcher records."""

    def __init__(self, config: Any, per_host: int, seed: int = 0) -> None:
        self.config, self.per_host, self.n = config, per_host, 0
        self.rng = np.random.default_rng(seed)
        self.iterator = self

    def get_state(self) -> dict[str, int]:
        return {"n": self.n}

    def __next__(self) -> Any:
        self.n += 1
        leaves = abstract_batch(self.config, self.per_host)
        vocab, bins = int(self.config.model.vocab_size), int(self.config.model.num_duration_bins)
        out = {}
        for path, a in jax.tree_util.tree_leaves_with_path(leaves):
            name = path_name(path).split("/")[-1]
            if a.dtype == np.uint8:
                x = self.rng.integers(0, 256, a.shape, dtype=np.uint8)
            elif a.dtype == bool:
                x = np.ones(a.shape, bool)
            elif name == "duration_bin":
                x = self.rng.integers(0, bins, a.shape).astype(a.dtype)
            elif a.dtype == np.int32:
                x = self.rng.integers(1, vocab, a.shape).astype(a.dtype)
            else:
                x = self.rng.standard_normal(a.shape).astype(a.dtype)
            out[name] = x
        out["action_events"] = np.zeros_like(out["actions"][..., 0], np.int32)
        return to_event_batch(out)  # as the pipeline yields them


def loop_bench(config: Any, steps: int, log_every: int = 10,
               rounds: int = 3, cache: StepCache | None = None) -> dict[str, Any]:
    """Steps/s of the same compiled step driven three ways on the same kind of host batches:
    the device alone (one batch, no host work), the former loop (load, check, put, step and
    fetch the metrics every step, all on the main thread) and the current one (prefetch
    thread, metrics fetched a step late at log steps). The three alternate for `rounds`
    rounds (medians reported), so a change in machine load hits them alike.
    Host share = 1 - device time / loop time. With a `cache` holding this config's step (e.g.
    a `Variant`'s), that step and its compiled program are reused."""
    mesh = sharding.make_mesh(config.mesh)
    fns = make_train_step(config, mesh, cache=cache)
    per_host = config.batch_size // jax.process_count()
    expected = abstract_batch(config, per_host)
    carry = list(fns.init_fn(jax.random.PRNGKey(0)))
    batch = random_batch(fns, config, seed=0)
    run = fns.run_inputs
    carry[0], carry[1], metrics = fns.update_fn(carry[0], carry[1], batch, run)  # compile
    jax.block_until_ready(metrics)

    def device_only() -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            carry[0], carry[1], m = fns.update_fn(carry[0], carry[1], batch, run)
        jax.block_until_ready(m)
        return (time.perf_counter() - t0) / steps

    def before() -> float:  # the loop as it was: everything on the main thread, every step
        source = SyntheticSource(config, per_host)
        t0 = time.perf_counter()
        for _ in range(steps):
            host = to_event_batch(next(source))
            check_batch(host, expected)
            carry[0], carry[1], m = fns.update_fn(
                carry[0], carry[1], sharding.global_batch(host, mesh, fns.rules), run)
            float(jax.device_get(m)["loss"])
        return (time.perf_counter() - t0) / steps

    def after() -> tuple[float, float]:
        source, wait, pending = SyntheticSource(config, per_host), 0.0, []
        t0 = time.perf_counter()
        with Prefetcher(source, mesh, expected) as feed:
            for i in range(1, steps + 1):
                t = time.perf_counter()
                item = feed.next()
                wait += time.perf_counter() - t
                carry[0], carry[1], m = fns.update_fn(carry[0], carry[1], item.batch, run)
                pending.append(m)
                if (i - 1) % log_every == 0 or i == steps:  # a step late, as train.py
                    jax.device_get(pending[:-1] if i < steps else pending)
                    pending = pending[-1:] if i < steps else []
        total = time.perf_counter() - t0
        return total / steps, wait / total

    runs = {"device": [], "before": [], "after": [], "wait": []}
    for _ in range(rounds):
        runs["device"].append(device_only())
        runs["before"].append(before())
        a, w = after()
        runs["after"].append(a)
        runs["wait"].append(w)
    device_s, before_s, after_s = (statistics.median(runs[k]) for k in ("device", "before",
                                                                        "after"))
    return {"steps": steps, "rounds": rounds, "log_every": log_every,
            "device_step_s": device_s, "before_step_s": before_s, "after_step_s": after_s,
            "before_steps_per_s": 1 / before_s, "after_steps_per_s": 1 / after_s,
            "speedup": before_s / after_s,
            # Not clamped: a negative share means the loop ran faster than the device-only
            # timing of the same round (noise between the two), and says so.
            "host_share_before": 1 - device_s / before_s,
            "host_share_after": 1 - device_s / after_s,
            "data_wait_share": statistics.median(runs["wait"]), "runs": runs}


def attention_switch(config: Any) -> str:
    """Which attention implementations the model config can select (none if no field)."""
    for key in ("attention_impl", "attention", "attention_implementation"):
        if key in config.model:
            return f"config.model.{key}"
    return ("none: models/layers.attention calls jax.nn.dot_product_attention("
            "implementation=None) (XLA, or cuDNN on GPU when it applies); no config field")


class Variant:
    """One config's train step, compiled, with its state and a fixed batch, ready to time.
    With a `cache`, later builds of the same program in the process (`loop_bench`, the
    suite's other rows) reuse this step and its compiled program."""

    def __init__(self, config: Any, warmup: int = 1, cache: StepCache | None = None) -> None:
        self.config = config
        self.mesh = sharding.make_mesh(config.mesh)
        self.fns = make_train_step(config, self.mesh, cache=cache)
        t0 = time.perf_counter()
        self.compiled = self.fns.update_fn.lower(*self.fns.abstract_inputs).compile()
        self.compile_s = time.perf_counter() - t0
        self.params, self.state = self.fns.init_fn(jax.random.PRNGKey(0))
        self.batch = random_batch(self.fns, config, seed=0)
        self.loss = float("nan")
        self.step_times(warmup)

    def step_times(self, steps: int) -> list[float]:
        """Seconds of each of `steps` steps, each waited for."""
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            self.params, self.state, metrics = self.compiled(self.params, self.state,
                                                             self.batch, self.fns.run_inputs)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t)
        self.loss = float(metrics["loss"]) if steps else self.loss
        return times


def alternate(timers: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Run every timer (a no-argument function returning seconds) once per round, in turn,
    for `rounds` rounds: a change in machine load hits all of them alike, so ratios are
    taken per round (`round_ratio`)."""
    out: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            out[name].append(timer())
    return out


def round_ratio(runs: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of runs[num][i] / runs[den][i]."""
    return statistics.median(a / b for a, b in zip(runs[num], runs[den], strict=True))


def variant_report(v: Variant, step_s: float, runs: list[float]) -> dict[str, Any]:
    """A variant's figures for its step time (the median of its rounds)."""
    config = v.config
    flops = throughput.step_flops(config)
    out = {"remat_policy": config.model.remat_policy, "attention": config.model.attention,
           "compile_s": v.compile_s, "step_time_s": step_s, "round_step_times_s": runs,
           "flops_per_step": flops,
           "memory_bytes_per_device": memory_report(v.compiled)["total"], "loss": v.loss}
    out.update(throughput.throughput(config, step_s, num_devices=v.mesh.devices.size,
                                     device_kind=v.mesh.devices.flat[0].device_kind,
                                     flops=flops))
    return out


def bench_variants(configs: list[Any], steps: int, warmup: int,
                   rounds: int = 3) -> list[dict[str, Any]]:
    """Compile every config's step, then time them in alternating rounds (`steps` steps
    each, median per round); each result's `vs_baseline` is per-round ratios to the first."""
    variants = [Variant(c, warmup) for c in configs]
    runs = alternate({str(i): (lambda v=v: statistics.median(v.step_times(steps)))
                      for i, v in enumerate(variants)}, rounds)
    results = [variant_report(v, statistics.median(runs[str(i)]), runs[str(i)])
               for i, v in enumerate(variants)]
    for i, r in enumerate(results[1:], start=1):
        r["vs_baseline"] = {
            "step_time": round_ratio(runs, str(i), "0"),
            "compile": r["compile_s"] / results[0]["compile_s"],
            "memory": r["memory_bytes_per_device"] / results[0]["memory_bytes_per_device"]}
    return results


def define_flags() -> None:
    """The benchmark's flags (defined only when run as a program: suite.py imports this)."""
    flags.DEFINE_list("size", None, "One size, default base on GPU, small otherwise (--loop: "
                      "several, default tiny,small).")
    flags.DEFINE_list("remat", ["none", "full"], "Remat policies; the first is the baseline.")
    flags.DEFINE_list("attention", ["auto"], "model.attention values: auto, xla, cudnn (GPU).")
    flags.DEFINE_integer("batch_size", None, "Global batch (default: the config's).")
    flags.DEFINE_string("dtype", None, "Model compute dtype, e.g. bfloat16.")
    flags.DEFINE_integer("steps", 5, "Timed steps per round.")
    flags.DEFINE_integer("rounds", 3, "Alternating rounds over the variants (ratios per round).")
    flags.DEFINE_integer("warmup", 1, "Untimed steps first.")
    flags.DEFINE_bool("loop", False, "Time the training loop before/after (host share), not "
                      "remat.")


def main(argv: list[str]) -> None:
    """CLI: time the train step for each remat policy and attention (or `--loop`)."""
    cli.positional(argv)
    args = flags.FLAGS
    jax.config.update("jax_threefry_partitionable", True)
    if args.loop:
        return main_loop(args)

    backend = jax.default_backend()
    if args.size and len(args.size) > 1:
        cli.fail(f"--size={','.join(args.size)}: one size (several only with --loop)")
    size = args.size[0] if args.size else ("base" if backend == "gpu" else "small")
    configs = []
    for attention in args.attention:
        for policy in args.remat:
            config = get_config(f"size={size}")
            config.model.remat_policy = policy
            config.model.attention = attention
            if args.batch_size:
                config.batch_size = args.batch_size
            if args.dtype:
                config.model.dtype = args.dtype
            configs.append(config)
    results = bench_variants(configs, args.steps, args.warmup, args.rounds)
    base = results[0]
    dev = jax.devices()[0]
    report = {"size": size, "backend": backend, "device_kind": dev.device_kind,
              "num_devices": jax.device_count(), "batch_size": config.batch_size,
              "dtype": config.model.dtype,
              "params": wallwm.count_params(make_train_step(config, sharding.make_mesh(
                  config.mesh)).abstract_params),
              "tokens_per_example": throughput.tokens_per_example(config),
              "peak_flops_per_device": throughput.device_peak(dev.device_kind)[0],
              "attention_switch": attention_switch(config),
              "baseline": base["remat_policy"], "results": results}
    print(json.dumps(report, indent=2))
    parts = []
    for r in results:
        mfu = f", MFU {r['mfu']:.1%}" if "mfu" in r else ""
        ratio = (f" ({r['vs_baseline']['step_time']:.2f}x step time, "
                 f"{r['vs_baseline']['memory']:.2f}x memory)" if "vs_baseline" in r else "")
        parts.append(f"remat={r['remat_policy']} attention={r['attention']}: "
                     f"{r['step_time_s'] * 1e3:.0f} ms/step, "
                     f"compile {r['compile_s']:.1f}s, {r['tokens_per_s']:.0f} tok/s, "
                     f"{r['model_flops_per_s'] / 1e9:.1f} GFLOP/s{mfu}{ratio}")
    print(f"{size} on {report['num_devices']}x {dev.device_kind}, batch {config.batch_size}, "
          f"{base['flops_per_step']:.3g} FLOPs/step: " + "; ".join(parts))


def main_loop(args: Any) -> None:
    """`--loop`: steps/s before/after for each `--size` (comma list), one JSON + summary."""
    out = {"backend": jax.default_backend(), "devices": jax.device_count(), "sizes": {}}
    for size in args.size or ("tiny", "small"):
        config = get_config(f"size={size}")
        if args.batch_size:
            config.batch_size = args.batch_size
        if args.dtype:
            config.model.dtype = args.dtype
        out["sizes"][size] = dict(batch_size=config.batch_size,
                                  **loop_bench(config, args.steps))
    print(json.dumps(out, indent=2))
    print("; ".join(f"{s}: {r['before_steps_per_s']:.2f} -> {r['after_steps_per_s']:.2f} "
                    f"steps/s ({r['speedup']:.2f}x), host share {r['host_share_before']:.0%} "
                    f"-> {r['host_share_after']:.0%}" for s, r in out["sizes"].items()))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
