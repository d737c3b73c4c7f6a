"""Persistent compilation cache benchmark: the same training command started twice on a fresh
cache directory, the first start compiling (cold), the second loading (warm).

    python benchmarks/compile_cache.py                   # tiny model, 3 steps, a tiny dataset
    python benchmarks/compile_cache.py --size=small --rounds=2 --data_dir=<dataset dir>

Each start is `python -m wallwm_jax.train` in its own process, as a user runs it. Per start:
the wall time, the seconds JAX spent tracing, lowering and compiling (or loading from the cache)
and the train step's compile alone, read from JAX's own timing lines
(JAX_DEBUG_LOG_MODULES), and the cache hits. The cold start of the same round is the baseline:
warm/cold ratios, one round per fresh cache directory. Prints one JSON object and a summary line.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from wallwm_jax import cli, compile_cache  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DATA = flags.DEFINE_string("data_dir", None, "Event dataset (default: a tiny one, built once "
                            "into the temp directory: 2 tasks x 4 episodes, 32 px).")
_SIZE = flags.DEFINE_string("size", "tiny", "Model size (experiments/pretrain.py).")
_STEPS = flags.DEFINE_integer("steps", 3, "Train steps per start.")
_IMAGE = flags.DEFINE_integer("image_size", 32, "Image side (must match the dataset's).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Cold + warm pairs, each on a fresh cache.")
_XLA = flags.DEFINE_string("xla_flags", "", "XLA_FLAGS for the starts (default: none, what "
                           "a user gets; the tests' fast-compile flags make it ~10x quicker).")

_TIMING = re.compile(r"Finished (tracing|jaxpr to MLIR module conversion|XLA compilation)"
                     r"(?: of)? (\S+).* in ([0-9.]+) sec")
_HIT = "Persistent compilation cache hit for"


def _dataset() -> str:
    if _DATA.value:
        return _DATA.value
    from data_builders.metaworld_events import build

    return build(os.path.join(tempfile.gettempdir(), "wallwm_bench_compile_cache_data"),
                 config="demo", tasks=("reach-v3", "push-v3"), episodes_per_task=4,
                 image_size=_IMAGE.value, seed=0, num_workers=1)


def start(data_dir: str, cache_dir: str, workdir: str) -> dict[str, Any]:
    """One `python -m wallwm_jax.train` start: wall time and JAX's own phase timings."""
    cmd = [sys.executable, "-m", "wallwm_jax.train",
           "--config", f"experiments/pretrain.py:size={_SIZE.value},mode=event",
           "--workdir", workdir, f"--compilation_cache_dir={cache_dir}",
           f"--config.data.data_dir={data_dir}", f"--config.data.image_size={_IMAGE.value}",
           f"--config.batch_size={_BATCH.value}", f"--config.total_steps={_STEPS.value}"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_DEBUG_LOG_MODULES="jax._src.dispatch,jax._src.compiler",
               XLA_FLAGS=_XLA.value)
    for name in (compile_cache.ENV_VAR, "JAX_COMPILATION_CACHE_DIR"):
        env.pop(name, None)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"train exited {out.returncode}: {out.stderr[-3000:]}")
    seconds = {"tracing": 0.0, "jaxpr to MLIR module conversion": 0.0, "XLA compilation": 0.0}
    step_compile = 0.0
    seen = set()
    for line in out.stderr.splitlines():
        m = _TIMING.search(line)
        # JAX's debug handler and absl's both print each record: count a message once.
        if not m or line[m.start():] in seen:
            continue
        seen.add(line[m.start():])
        seconds[m.group(1)] += float(m.group(3))
        if m.group(1) == "XLA compilation" and m.group(2) == "jit(update)":
            step_compile += float(m.group(3))
    hits = {line[line.index(_HIT):] for line in out.stderr.splitlines() if _HIT in line}
    return {"wall_s": round(wall, 2), "trace_s": round(seconds["tracing"], 2),
            "lower_s": round(seconds["jaxpr to MLIR module conversion"], 2),
            "compile_s": round(seconds["XLA compilation"], 2),
            "train_step_compile_s": round(step_compile, 2), "cache_hits": len(hits),
            "cache_entries": len([n for n in os.listdir(cache_dir) if n.endswith("-cache")])}


def main(argv: list[str]) -> None:
    """Run the benchmark and print JSON + a summary line."""
    cli.positional(argv)
    data_dir = _dataset()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="wallwm_bench_cc_") as tmp:
        for r in range(_ROUNDS.value):
            cache = os.path.join(tmp, f"cache_{r}")
            cold = start(data_dir, cache, os.path.join(tmp, f"cold_{r}"))
            warm = start(data_dir, cache, os.path.join(tmp, f"warm_{r}"))
            rounds.append({"cold": cold, "warm": warm,
                           "compile_ratio": warm["compile_s"] / cold["compile_s"],
                           "train_step_compile_ratio": (warm["train_step_compile_s"]
                                                        / cold["train_step_compile_s"]),
                           "wall_ratio": warm["wall_s"] / cold["wall_s"]})
    ratio = statistics.median(r["compile_ratio"] for r in rounds)
    wall = statistics.median(r["wall_ratio"] for r in rounds)
    first = rounds[0]
    print(json.dumps({"command": f"python -m wallwm_jax.train size={_SIZE.value}, "
                                 f"{_STEPS.value} steps, batch {_BATCH.value}, "
                                 f"{_IMAGE.value} px",
                      "xla_flags": _XLA.value, "cpus": os.cpu_count(), "rounds": rounds,
                      "median_compile_ratio": ratio, "median_wall_ratio": wall}, indent=1))
    print(f"compile cache ({_SIZE.value}): compile {first['cold']['compile_s']:.1f}s cold -> "
          f"{first['warm']['compile_s']:.1f}s warm ({ratio:.2f}x, aim <= 0.3x); wall "
          f"{first['cold']['wall_s']:.1f}s -> {first['warm']['wall_s']:.1f}s ({wall:.2f}x); "
          f"{first['warm']['cache_hits']} cache hits")


if __name__ == "__main__":
    cli.run(main)
