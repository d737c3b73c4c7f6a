"""WALL-WM pretraining loop, readable top to bottom (big_vision style).

    python -m wallwm_jax.train --config experiments/pretrain.py:size=tiny,mode=event \
        --workdir /tmp/run --config.data.data_dir=<dataset dir> --config.total_steps=300

Stages: mesh -> input pipeline -> model and optimizer -> sharding -> update step ->
checkpoint (restore or init) -> loop (log, checkpoint, stop on preemption or NaN).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags
from tqdm.auto import tqdm

from wallwm_jax import checkpoint as ckpt
from wallwm_jax import sharding
from wallwm_jax.data.pipeline import make_pipeline, to_event_batch
from wallwm_jax.models import wallwm
from wallwm_jax.optim.factory import learning_rate_schedule, make_optimizer
from wallwm_jax.train_log import MetricLogger


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, besides the params and the data iterator."""

    step: jax.Array  # int32 []
    opt_state: Any


class NonFiniteLossError(FloatingPointError):
    """Raised when a step's loss is NaN/Inf; the message names the step and the loss terms."""


class _Preemption:
    """Turns SIGTERM into a flag the loop checks at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_after: int | None = None,
                       devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
    """Train (resuming from the latest checkpoint in `workdir` if any); return a summary.

    `stop_after` ends the run early at that step (with a checkpoint) as an interruption
    would, without changing the config, so the schedule matches an uninterrupted run.
    `devices` (default: all) are the devices the mesh is built over.
    `config.init_from` (used only when `workdir` has no checkpoint) is a checkpoint
    directory or an export bundle whose params start the run, with a fresh optimizer.
    """
    os.makedirs(workdir, exist_ok=True)
    jax.config.update("jax_threefry_partitionable", True)

    # ---------------------------------------------------------------- Mesh
    mesh = sharding.make_mesh(config.mesh, devices)
    if config.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the data-parallel "
                         f"mesh size {mesh.shape['data'] * mesh.shape['fsdp']}")

    # ---------------------------------------------------------------- Input pipeline
    pipeline = make_pipeline(config.data, global_batch=config.batch_size, seed=config.seed)
    data_iter = pipeline.iterator
    norm_stats = pipeline.sampler.norm_stats
    assets = ckpt.make_assets(config, norm_stats, pipeline.sampler.tokenizer_path)
    if pipeline.sampler.tokenizer.vocab_size > config.model.vocab_size:
        raise ValueError(f"model.vocab_size={config.model.vocab_size} is smaller than the "
                         f"dataset tokenizer's {pipeline.sampler.tokenizer.vocab_size}")

    # ---------------------------------------------------------------- Model and optimizer
    model_cfg = config.model
    logical_axes = wallwm.param_logical_axes(model_cfg)
    tx = make_optimizer(config.optimizer, config.total_steps, logical_axes)
    lr_schedule = learning_rate_schedule(config.optimizer, config.total_steps)

    # ---------------------------------------------------------------- Sharding
    abstract_params = jax.eval_shape(lambda: wallwm.init_params(model_cfg, jax.random.PRNGKey(0)))
    param_sharding = sharding.logical_to_sharding(logical_axes, mesh, config.sharding_rules,
                                                  abstract_params)
    abstract_params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_params, param_sharding)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sharding = sharding.opt_state_sharding(abstract_opt, abstract_params, param_sharding,
                                               mesh)
    state_sharding = TrainState(step=sharding.replicated(mesh), opt_state=opt_sharding)

    @functools.partial(jax.jit, out_shardings=(param_sharding, state_sharding))
    def init_fn(rng):
        params = wallwm.init_params(model_cfg, rng)
        return params, TrainState(step=jnp.zeros((), jnp.int32), opt_state=tx.init(params))

    # ---------------------------------------------------------------- Update step
    base_rng = jax.random.PRNGKey(config.seed)

    @functools.partial(
        jax.jit, donate_argnums=(0, 1),
        out_shardings=(param_sharding, state_sharding, sharding.replicated(mesh)))
    def update_fn(params, state, batch):
        rng = jax.random.fold_in(base_rng, state.step)
        grad_fn = jax.value_and_grad(
            lambda p: wallwm.compute_loss(model_cfg, p, batch, rng, train=True), has_aux=True)
        (loss, metrics), grads = grad_fn(params)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                       update_norm=optax.global_norm(updates))
        return params, TrainState(step=state.step + 1, opt_state=opt_state), metrics

    # ---------------------------------------------------------------- Checkpoint
    manager = ckpt.make_manager(os.path.join(workdir, "checkpoints"), config.checkpoint)
    abstract_state = jax.eval_shape(init_fn, base_rng)[1]
    abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_state, state_sharding)
    start_step = manager.latest_step()
    if start_step is not None:
        params, state = ckpt.restore(manager, start_step, abstract_params, abstract_state,
                                     data_iter)
        print(f"Resumed from checkpoint step {start_step} in {manager.directory}")
    else:
        params, state = init_fn(jax.random.PRNGKey(config.seed + 1))
        if config.init_from:
            params = ckpt.restore_params(config.init_from, abstract_params)
            print(f"Initialised params from {config.init_from}")
    first_step = int(state.step)

    # ---------------------------------------------------------------- Loop
    logger = MetricLogger(workdir, config, total_steps=config.total_steps)
    losses: list[float] = []
    pbar = tqdm(total=config.total_steps, initial=first_step, desc="train", unit="step",
                file=sys.stdout, disable=first_step >= config.total_steps)
    step = first_step
    with _Preemption() as preemption:
        while step < config.total_steps:
            t0 = time.perf_counter()
            batch = sharding.global_batch(to_event_batch(next(data_iter)), mesh)
            t_data = time.perf_counter() - t0
            params, state, metrics = update_fn(params, state, batch)
            metrics = jax.device_get(metrics)
            step += 1
            _check_finite(metrics, step, config, manager)
            losses.append(float(metrics["loss"]))
            step_time = time.perf_counter() - t0
            pbar.update(1)
            pbar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
            done = step == config.total_steps
            interrupt = preemption.requested or step == stop_after
            extra = {}
            if step % config.checkpoint.every_steps == 0 or done or interrupt:
                t_save = time.perf_counter()
                ckpt.save(manager, step, params, {"step": state.step,
                                                  "opt_state": state.opt_state},
                          data_iter, assets, force=True)
                # Time the loop was blocked by the (async) save: also in metrics.jsonl.
                extra["checkpoint_blocking_s"] = time.perf_counter() - t_save
                logger.scalar(step, "checkpoint/blocking_s", extra["checkpoint_blocking_s"])
            logger.log(step, metrics, force=bool(extra), step_time=step_time,
                       data_time=t_data, lr=float(lr_schedule(step)), **extra)
            if interrupt:
                print(f"interrupted: saved checkpoint at step {step}; exiting")
                break
    pbar.close()
    manager.wait_until_finished()
    manager.close()
    logger.close()
    return {"params": params, "first_step": first_step, "last_step": step, "losses": losses,
            "checkpoint_dir": str(manager.directory), "preempted": preemption.requested,
            "norm_stats": norm_stats, "assets": assets}


def _check_finite(metrics: dict[str, Any], step: int, config: ml_collections.ConfigDict,
                  manager: Any) -> None:
    """Stop with a message naming the step and every loss term when the loss is NaN/Inf."""
    if np.isfinite(metrics["loss"]):
        return
    manager.wait_until_finished()
    terms = {k: float(v) for k, v in metrics.items() if k.startswith("loss")}
    raise NonFiniteLossError(
        f"non-finite loss at step {step}: {json.dumps(terms)}; the last finished checkpoint "
        f"(step {manager.latest_step()}) in {manager.directory} is intact")


def main(argv: list[str]) -> None:
    """CLI entry point: `--config` (ml_collections config file) and `--workdir`."""
    del argv
    summary = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    losses = summary["losses"]
    if losses:
        print(f"trained steps {summary['first_step']}..{summary['last_step']}, "
              f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    # Flags are defined only when run as a program, so importing this module (the demo,
    # tests) never clashes with the importer's own flags.
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config, e.g. experiments/pretrain.py:size=tiny,mode=event")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
