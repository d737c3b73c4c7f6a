"""Input-pipeline throughput vs what the train step consumes, measured in the same run.

    python benchmarks/input_pipeline.py                      # builds a small demo dataset
    python benchmarks/input_pipeline.py --data_dir DIR --layout unified --batches 20

For 0, 1 and 2 Grain worker processes: samples/s of the real pipeline (event sampling, PNG
decoding of the needed frames, normalisation, tokenisation, augmentation). The baseline is
the `small` model's train step (forward + backward + AdamW, jitted, this machine) at the
same batch size: samples/s it consumes. Prints one JSON object and a one-line summary with
the ratio pipeline / consumption (target >= 3: data wait < 2% of the step).

Mixture row: the same dataset mixed half and half with a second robot (default: the 7-D joint /
14-D state arm of tests/data_builders/testdata/lerobot_arm7, converted at the same image size),
padded into 14-D state / 7-D actions with masks and one tokenizer, against the single dataset,
0 workers, in alternating A/B rounds of the same run: samples/s of each and their ratio
(aim >= 0.9).
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


def pipeline_rate(config, workers: int, batches: int, **kwargs) -> dict[str, float]:
    """Samples/s of `batches` batches after one warm-up batch (worker start-up excluded);
    `kwargs` go to `make_pipeline` (a mixture's widths and tokenizer)."""
    config = config.copy_and_resolve_references()
    config.data.num_workers = workers
    pipe = make_pipeline(config.data, global_batch=config.batch_size, seed=0, **kwargs)
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


def second_robot(image_size: int) -> str:
    """tests/data_builders/testdata/lerobot_arm7 converted at `image_size` (built once)."""
    from data_builders.common import EmbodimentFlags
    from data_builders.lerobot_events.lerobot_events import build
    from data_builders.rlds_events import KeyMapping

    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                          "data_builders", "testdata", "lerobot_arm7")
    mapping = KeyMapping(image_keys=("observation.images.top", "observation.images.wrist"),
                         state_key="observation.state", action_key="action", gripper_index=6,
                         instruction_key="task", image_size=image_size)
    return build(source, os.path.join(tempfile.gettempdir(), "wallwm_bench_data"), mapping,
                 embodiment=EmbodimentFlags(name="arm7", action_space="joint_position"))


def mixture_rows(config, second: str, batches: int, rounds: int) -> dict:
    """Single dataset (A) vs the mixture with `second` (B), alternating A/B `rounds` times."""
    from wallwm_jax.data.pipeline import model_widths, run_tokenizer

    mixed = config.copy_and_resolve_references()
    mixed.data.mixture = ((config.data.data_dir, 1.0), (second, 1.0))
    widths = model_widths(mixed.data, [config.data.data_dir, second])
    tokenizer = run_tokenizer(mixed.data, os.path.join(tempfile.mkdtemp(), "tokenizer.model"))
    single_rates, mixture_rates = [], []
    for _ in range(rounds):
        single_rates.append(pipeline_rate(config, 0, batches)["samples_per_s"])
        mixture_rates.append(pipeline_rate(mixed, 0, batches, widths=widths,
                                           tokenizer_path=tokenizer)["samples_per_s"])
    ratios = [m / s for m, s in zip(mixture_rates, single_rates, strict=True)]
    return {"second_dataset": second, "widths": list(widths), "rounds": rounds,
            "single_samples_per_s": single_rates, "mixture_samples_per_s": mixture_rates,
            "ratio_per_round": ratios, "ratio_median": sorted(ratios)[len(ratios) // 2]}


def define_flags() -> None:
    """The benchmark's flags (defined only when run as a program)."""
    flags.DEFINE_string("data_dir", "", "Built dataset dir (default: build one).")
    flags.DEFINE_enum("layout", "event", ["event", "unified", "chunk"], "Sample layout.")
    flags.DEFINE_integer("batch_size", 32, "Global batch.")
    flags.DEFINE_integer("batches", 10, "Batches timed per worker count.")
    flags.DEFINE_integer("train_steps", 3, "Train steps timed.")
    flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts.")
    flags.DEFINE_string("mixture_dir", "", "Second robot's dataset for the mixture row "
                        "(default: lerobot_arm7 test data, converted); 'none': no row.")
    flags.DEFINE_integer("mixture_rounds", 3, "A/B rounds of the mixture row.")


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
    mixture = None
    if args.mixture_dir != "none":
        second = args.mixture_dir or second_robot(config.data.image_size)
        mixture = mixture_rows(config, second, args.batches, args.mixture_rounds)
    train = train_consumption_rate(config, args.train_steps) if args.train_steps else None
    for row in rows:
        row["ratio_to_train_step"] = (row["samples_per_s"] / train["samples_per_s"]
                                      if train else None)
    best = max(rows, key=lambda r: r["samples_per_s"])
    print(json.dumps({"device": jax.devices()[0].device_kind, "layout": args.layout,
                      "batch_size": args.batch_size, "pipeline": rows,
                      "mixture": mixture, "train_step_small": train}, indent=1))
    if mixture:
        mid = args.mixture_rounds // 2
        mixed, single = (sorted(mixture[k])[mid] for k in ("mixture_samples_per_s",
                                                           "single_samples_per_s"))
        print(f"mixture (2 datasets, padded to {mixture['widths']}): {mixed:.0f} samples/s vs "
              f"single {single:.0f} -> median ratio {mixture['ratio_median']:.2f}x over "
              f"{args.mixture_rounds} A/B rounds")
    if not train:
        return
    print(f"input pipeline ({args.layout}, batch {args.batch_size}): "
          + ", ".join(f"{r['workers']} workers {r['samples_per_s']:.0f} samples/s" for r in rows)
          + f"; small train step consumes {train['samples_per_s']:.1f} samples/s "
          f"({train['step_s']:.2f} s/step) -> best ratio {best['ratio_to_train_step']:.1f}x")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
