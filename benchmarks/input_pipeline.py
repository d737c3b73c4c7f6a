"""Input-pipeline throughput vs what the train step consumes, measured in the same run.

    python benchmarks/input_pipeline.py                      # builds a small demo dataset
    python benchmarks/input_pipeline.py --data_dir DIR --layout unified --batches 20

For 0, 1 and 2 Grain worker processes: samples/s of the real pipeline (event sampling, PNG
decoding of the needed frames, normalisation, tokenisation, augmentation). The baseline is
the `small` model's train step (forward + backward + AdamW, jitted, this machine) at the
same batch size: samples/s it consumes. Prints one JSON object and a one-line summary with
the ratio pipeline / consumption (target >= 3: data wait < 2% of the step).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import optax  # noqa: E402
from absl import flags  # noqa: E402

from experiments.pretrain import get_config  # noqa: E402
from wallwm_jax import cli  # noqa: E402
from wallwm_jax.data.pipeline import make_pipeline, to_event_batch  # noqa: E402
from wallwm_jax.models import wallwm  # noqa: E402


def pipeline_rate(config, workers: int, batches: int) -> dict[str, float]:
    """Samples/s of `batches` batches after one warm-up batch (worker start-up excluded)."""
    config = config.copy_and_resolve_references()
    config.data.num_workers = workers
    pipe = make_pipeline(config.data, global_batch=config.batch_size, seed=0)
    try:
        t0 = time.perf_counter()
        next(pipe)
        warmup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(batches):
            next(pipe)
        seconds = time.perf_counter() - t0
    finally:
        if workers:
            pipe.iterator.close()
    return {"workers": workers, "samples_per_s": batches * config.batch_size / seconds,
            "first_batch_s": warmup}


def train_consumption_rate(config, steps: int) -> dict[str, float]:
    """Samples/s the `small` train step consumes at this batch size (compile excluded)."""
    model_cfg = get_config(f"size=small,mode={config.mode}").model
    model_cfg.image_size = config.data.image_size
    batch = to_event_batch(next(make_pipeline(config.data, global_batch=config.batch_size,
                                              seed=0)))
    params = wallwm.init_params(model_cfg, jax.random.PRNGKey(0))
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch, rng):
        grads = jax.grad(lambda p: wallwm.compute_loss(model_cfg, p, batch, rng)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    t0 = time.perf_counter()
    params, opt_state = jax.block_until_ready(step(params, opt_state, batch,
                                                   jax.random.PRNGKey(0)))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        params, opt_state = step(params, opt_state, batch, jax.random.PRNGKey(i))
    jax.block_until_ready(params)
    step_s = (time.perf_counter() - t0) / steps
    return {"step_s": step_s, "compile_s": compile_s,
            "samples_per_s": config.batch_size / step_s}


def define_flags() -> None:
    """The benchmark's flags (defined only when run as a program)."""
    flags.DEFINE_string("data_dir", "", "Built dataset dir (default: build one).")
    flags.DEFINE_enum("layout", "event", ["event", "unified", "chunk"], "Sample layout.")
    flags.DEFINE_integer("batch_size", 32, "Global batch.")
    flags.DEFINE_integer("batches", 10, "Batches timed per worker count.")
    flags.DEFINE_integer("train_steps", 3, "Train steps timed.")
    flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts.")


def main(argv: list[str]) -> None:
    """Run the benchmark and print JSON + a summary line."""
    cli.positional(argv)
    args = flags.FLAGS

    data_dir = args.data_dir
    if not data_dir:
        from data_builders.metaworld_events import metaworld_events as mwe

        data_dir = mwe.build(os.path.join(tempfile.gettempdir(), "wallwm_bench_data"),
                             episodes_per_task=6, image_size=64)
    config = get_config(f"size=small,mode={args.layout}")
    config.data.data_dir = data_dir
    config.batch_size = args.batch_size
    rows = [pipeline_rate(config, int(w), args.batches) for w in args.workers]
    train = train_consumption_rate(config, args.train_steps)
    for row in rows:
        row["ratio_to_train_step"] = row["samples_per_s"] / train["samples_per_s"]
    best = max(rows, key=lambda r: r["samples_per_s"])
    print(json.dumps({"device": jax.devices()[0].device_kind, "layout": args.layout,
                      "batch_size": args.batch_size, "pipeline": rows,
                      "train_step_small": train}, indent=1))
    print(f"input pipeline ({args.layout}, batch {args.batch_size}): "
          + ", ".join(f"{r['workers']} workers {r['samples_per_s']:.0f} samples/s" for r in rows)
          + f"; small train step consumes {train['samples_per_s']:.1f} samples/s "
          f"({train['step_s']:.2f} s/step) -> best ratio {best['ratio_to_train_step']:.1f}x")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
