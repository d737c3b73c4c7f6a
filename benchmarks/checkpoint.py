"""Checkpoint-save benchmark: how long an async save blocks the training loop, what blocks
(device-to-host copy, the array items, the data-iterator JSON, the assets JSON, waiting for the
previous save) and how that compares with one training step of the same size and with
Orbax's default options (directories made while the loop waits).

    python benchmarks/checkpoint.py                      # tiny and small
    python benchmarks/checkpoint.py --sizes=small --saves=5

Each save goes through `wallwm_jax.checkpoint.save`, the call the training loop makes. The
baseline in the same run is one compiled train step of the size (random, well-formed batch):
the loop is blocked for `blocking_s / step_s` steps. Prints one JSON object and a summary line.
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

import grain  # noqa: E402
import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from absl import flags  # noqa: E402

from experiments.pretrain import get_config  # noqa: E402
from wallwm_jax import checkpoint as ckpt  # noqa: E402
from wallwm_jax import cli, sharding  # noqa: E402
from wallwm_jax.prefetch import IteratorState  # noqa: E402
from wallwm_jax.train_step import make_train_step  # noqa: E402

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small"], "Model sizes (experiments/pretrain.py).")
_SAVES = flags.DEFINE_integer("saves", 4, "Timed saves per measurement (after one warm-up).")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed train steps for the baseline.")
_IMAGE = flags.DEFINE_integer("image_size", 64, "Image side (the batch of the baseline step).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch of the baseline step.")


def _median(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _assets(config: Any) -> dict[str, bytes]:
    """Asset files of the size a real run writes: config, norm stats, a tokenizer-sized blob."""
    stats = {"state": {"mean": [0.0] * 39, "std": [1.0] * 39}}
    return {"config.json": config.to_json_best_effort(indent=2).encode(),
            "norm_stats.json": json.dumps(stats).encode(), "tokenizer.model": b"A" * 240_000}


def measure(size: str, saves: int, steps: int) -> dict[str, Any]:
    """Blocking time of a save and its parts, and the step time, for one model size."""
    import train_step as step_bench  # benchmarks/train_step.py

    config = get_config(f"size={size},mode=event")
    config.data.image_size, config.batch_size = _IMAGE.value, _BATCH.value
    config.checkpoint.async_save = True
    mesh = sharding.make_mesh(config.mesh)
    fns = make_train_step(config, mesh)
    params, state = fns.init_fn(jax.random.PRNGKey(0))
    batch = step_bench.random_batch(fns, config, 0)
    params, state, metrics = fns.update_fn(params, state, batch, fns.run_inputs)  # compile
    jax.block_until_ready(metrics)

    def one_step() -> None:
        nonlocal params, state
        params, state, m = fns.update_fn(params, state, batch, fns.run_inputs)
        jax.block_until_ready(m)

    step_s = _median(one_step, steps)
    train_state = {"step": state.step, "opt_state": state.opt_state}
    assets = _assets(config)
    data_iter = IteratorState({"n": 1, "epoch": 0, "cluster_counts": list(range(64))})
    out: dict[str, Any] = {"size": size, "step_s": step_s,
                           "param_bytes": sum(x.nbytes for x in jax.tree.leaves(params)),
                           "state_bytes": sum(x.nbytes for x in jax.tree.leaves(train_state))}

    with tempfile.TemporaryDirectory() as root:
        manager = ckpt.make_manager(os.path.join(root, "full"), config.checkpoint)
        step = iter(range(1, 10_000))

        def full_save() -> None:
            ckpt.save(manager, next(step), params, train_state, data_iter, assets, force=True)

        full_save()
        manager.wait_until_finished()  # warm-up: directories, handlers

        def blocking() -> float:
            manager.wait_until_finished()
            t0 = time.perf_counter()
            full_save()
            dt = time.perf_counter() - t0
            manager.wait_until_finished()
            return dt

        out["blocking_s"] = statistics.median(blocking() for _ in range(saves))
        t0 = time.perf_counter()
        full_save()
        manager.wait_until_finished()
        out["save_total_s"] = time.perf_counter() - t0
        # Back to back: the second save first waits for the first to finish.
        manager.wait_until_finished()
        full_save()
        t0 = time.perf_counter()
        full_save()
        out["blocking_back_to_back_s"] = time.perf_counter() - t0
        manager.wait_until_finished()
        manager.close()

        # The parts, each as its own item through Orbax (same handlers as the full save).
        parts = {
            "arrays": lambda: ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                train_state=ocp.args.StandardSave(train_state)),
            "data_iter": lambda: ocp.args.Composite(
                data_iter=grain.checkpoint.CheckpointSave(data_iter)),
            "assets": lambda: ocp.args.Composite(assets=ckpt.AssetsSave(assets)),
        }
        for name, args in parts.items():
            mngr = ckpt.make_manager(os.path.join(root, name), config.checkpoint)
            steps_iter = iter(range(1, 10_000))
            mngr.save(next(steps_iter), args=args(), force=True)
            mngr.wait_until_finished()
            times = []
            for _ in range(saves):
                t0 = time.perf_counter()
                mngr.save(next(steps_iter), args=args(), force=True)
                times.append(time.perf_counter() - t0)
                mngr.wait_until_finished()
            out[f"blocking_{name}_s"] = statistics.median(times)
            mngr.close()
        # Baseline: Orbax's default, the step's directories made while the loop waits.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.checkpoint.keep, enable_async_checkpointing=True, create=True)
        mngr = ocp.CheckpointManager(os.path.join(root, "sync_dirs"), options=options,
                                     item_handlers=ckpt._handlers())
        steps_iter = iter(range(1, 10_000))
        ckpt.save(mngr, next(steps_iter), params, train_state, data_iter, assets, force=True)
        times = []
        for _ in range(saves):
            mngr.wait_until_finished()
            t0 = time.perf_counter()
            ckpt.save(mngr, next(steps_iter), params, train_state, data_iter, assets,
                      force=True)
            times.append(time.perf_counter() - t0)
        mngr.wait_until_finished()
        mngr.close()
        out["blocking_baseline_sync_dirs_s"] = statistics.median(times)
    out["d2h_copy_s"] = _median(lambda: jax.device_get((params, train_state)), saves)
    out["blocking_in_steps"] = out["blocking_s"] / step_s
    return out


def main(argv: list[str]) -> None:
    del argv
    rows = [measure(size, _SAVES.value, _STEPS.value) for size in _SIZES.value]
    result = {"benchmark": "checkpoint_save", "backend": jax.default_backend(),
              "devices": jax.device_count(), "rows": rows}
    print(json.dumps(result, indent=2))
    print("summary: " + "; ".join(
        f"{r['size']}: save blocks {r['blocking_s'] * 1e3:.0f} ms = "
        f"{r['blocking_in_steps']:.2f} steps of {r['step_s'] * 1e3:.0f} ms, "
        f"{r['blocking_s'] / r['blocking_baseline_sync_dirs_s']:.2f}x Orbax's default "
        f"(arrays {r['blocking_arrays_s'] * 1e3:.0f}, data_iter "
        f"{r['blocking_data_iter_s'] * 1e3:.0f}, assets {r['blocking_assets_s'] * 1e3:.0f}, "
        f"d2h {r['d2h_copy_s'] * 1e3:.0f} ms; back-to-back "
        f"{r['blocking_back_to_back_s'] * 1e3:.0f} ms)" for r in rows))


if __name__ == "__main__":
    cli.run(main)
