"""WALL-WM pretraining loop, readable top to bottom (big_vision style).

    python -m wallwm_jax.train --config experiments/pretrain.py:size=tiny,mode=event \
        --workdir /tmp/run --config.data.data_dir=<dataset dir> --config.total_steps=300

Stages: mesh -> input pipeline -> train step (model, optimizer, sharding, update; built by
`train_step.make_train_step`) -> checkpoint (restore or init) -> evals -> loop (log,
checkpoint, eval, stop on preemption or NaN). Several processes: add `--coordinator_address
host:port --num_processes N --process_id i` (or the JAX_* environment variables).
"""

from __future__ import annotations

# ruff: noqa: E402  (the command line below is dispatched before the imports)
if __name__ == "__main__":
    # `python -m wallwm_jax.train`: the command (train_cli.py) checks the flags, --workdir and
    # the config before the imports below (JAX, the model) load, then imports this file as
    # `wallwm_jax.train` to train. run() exits.
    from wallwm_jax import train_cli

    train_cli.run()

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from wallwm_jax import bundle, cli, config_check, sharding, throughput
from wallwm_jax import checkpoint as ckpt
from wallwm_jax.data.batches import abstract_batch
from wallwm_jax.data.pipeline import make_pipeline, run_tokenizer
from wallwm_jax.evaluation.evaluators import make_evaluators
from wallwm_jax.models import pretrained, wallwm
from wallwm_jax.models.pretrained import describe, load_pretrained
from wallwm_jax.prefetch import Prefetcher
from wallwm_jax.train_log import MetricLogger, StepTimer
from wallwm_jax.train_step import StepCache, TrainState, make_train_step

__all__ = ["NonFiniteLossError", "TrainState", "initialize_distributed", "train_and_evaluate"]

# The train steps this process has built: `train_and_evaluate` uses it unless given its own, so
# runs of the same model in one process (tests, in-process sweep trials, the fine-tuning
# baseline) reuse the traced step. Pass `step_cache=StepCache(0)` to build afresh.
STEP_CACHE = StepCache()


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
                       devices: Sequence[jax.Device] | None = None,
                       step_cache: StepCache | None = None) -> dict[str, Any]:
    """Train (resuming from the latest checkpoint in `workdir` if any); return a summary.

    `stop_after` ends the run early at that step (with a checkpoint) as an interruption
    would, without changing the config, so the schedule matches an uninterrupted run.
    `devices` (default: all, of every process) are the devices the mesh is built over;
    `step_cache` (default: `STEP_CACHE`) holds the traced steps a later run may reuse.
    `config.init_from` (used only when `workdir` has no checkpoint) is a checkpoint
    directory or an export bundle whose params start the run, with a fresh optimizer;
    `config.init_pretrained` then loads ((file, layout), ...) foreign weights on top
    (`wallwm_jax.models.pretrained`: big_vision SigLIP, HF Gemma, our own layout).
    `config.eval_every_steps` > 0 runs the offline evaluation on the val split every that
    many steps and at the end (0: none here; the caller evaluates the final params).
    """
    config_check.validate(config)  # before any data, device or compile: a bad field is one line
    os.makedirs(workdir, exist_ok=True)
    jax.config.update("jax_threefry_partitionable", True)
    is_chief = jax.process_index() == 0
    resolve_pretrained(config, workdir, is_chief=is_chief)  # model fields set before compiling

    # ---------------------------------------------------------------- Mesh
    mesh = sharding.make_mesh(config.mesh, devices)

    # ---------------------------------------------------------------- Input pipeline
    # A mixture's one tokenizer is built over all its datasets' texts, once, into the workdir
    # (a resumed run reads it back); it travels with every checkpoint's assets.
    tokenizer_path = run_tokenizer(config.data, os.path.join(workdir, "tokenizer.model"))
    pipeline = make_pipeline(config.data, global_batch=config.batch_size, seed=config.seed,
                             tokenizer_path=tokenizer_path,
                             widths=(config.model.state_dim, config.model.action_dim))
    data_iter = pipeline.iterator  # drawn from only by the prefetch thread once training runs
    norm_stats = pipeline.norm_stats
    assets = ckpt.make_assets(config, norm_stats, pipeline.tokenizer_path, pipeline.embodiments)
    _check_and_report_data(pipeline, config, is_chief)
    check_resume_tokenizer(os.path.join(workdir, "checkpoints"), pipeline.tokenizer_path)
    if config.init_from:
        check_init_from(config, pipeline)

    # ---------------------------------------------------------------- Model, optimizer,
    # sharding and update step: one builder, shared with aot.py and the benchmarks.
    step_fns = make_train_step(config, mesh,
                               cache=STEP_CACHE if step_cache is None else step_cache)
    update_fn = step_fns.update_fn
    flops_per_step = throughput.step_flops(config)

    # ---------------------------------------------------------------- Checkpoint
    manager = ckpt.make_manager(os.path.join(workdir, "checkpoints"), config.checkpoint)
    params, state = restore_or_init(config, manager, step_fns, data_iter, is_chief=is_chief)
    first_step = int(state.step)
    expected_host_batch = abstract_batch(config, pipeline.per_host_batch)

    # ---------------------------------------------------------------- Evals
    evaluators = make_evaluators(config, workdir, mesh, norm_stats=norm_stats,
                                 tokenizer_path=pipeline.tokenizer_path,
                                 embodiments=pipeline.embodiments)

    # ---------------------------------------------------------------- Loop
    # The host never waits on the device between log steps: the next batch is prefetched
    # to the devices while a step runs, and metrics are fetched one step late (`LateMetrics`),
    # only at log, checkpoint and eval steps, where NaN/Inf losses are found (flagged inside
    # the step, see train_step.py) and named.
    logger = MetricLogger(workdir, config, total_steps=config.total_steps, active=is_chief)
    losses: list[float] = []
    eval_metrics: dict[str, float] = {}
    pbar = tqdm(total=config.total_steps, initial=first_step, desc="train", unit="step",
                file=sys.stdout, disable=first_step >= config.total_steps or not is_chief)
    log_every = max(1, int(config.log_every_steps))
    timer = StepTimer()

    def record(s: int, m: dict[str, Any], extra: dict[str, float], force: bool = False) -> None:
        """A fetched step's metrics: checked for NaN/Inf, kept, logged."""
        _check_finite(m, s, config, manager)
        losses.append(float(m["loss"]))
        logger.log(s, m, force=force, **extra)
        pbar.set_postfix(loss=f"{losses[-1]:.4f}", data=f"{extra.get('data_time', 0):.3f}s")

    late = LateMetrics(record)
    step = first_step
    if is_chief and first_step < config.total_steps:  # the first step waits minutes on it
        tqdm.write(f"compiling the train step ({config.get('size', 'custom')}, {config.mode} "
                   f"mode, batch {config.batch_size}, mesh {dict(mesh.shape)})",
                   file=sys.stdout)
    # The timer's watching thread stops however the loop ends (a NaN stop raises).
    with _Preemption() as preemption, Prefetcher(pipeline, mesh, expected_host_batch,
                                                    rules=step_fns.rules) as feed, \
            contextlib.closing(timer):
        while step < config.total_steps:
            t0 = time.perf_counter()
            item = feed.next()
            got = time.perf_counter()
            params, state, metrics = update_fn(params, state, item.batch, step_fns.run_inputs)
            # data_time: the part of the wait after the previous step was computed
            timer.add(data_s=got - t0, waited=(t0, got), outputs=metrics)
            if step == first_step:  # compiled now: the bar's rate and ETA start from here
                pbar.unpause()
            step += 1
            pbar.update(1)
            done = step == config.total_steps
            interrupt = preemption.requested or step == stop_after
            save = step % config.checkpoint.every_steps == 0 or done or interrupt
            extra: dict[str, float] = {}
            if step % log_every == 0 or done or save:  # averages over the steps since the last
                # Save (and the end) waits for this step anyway: time the window to its end.
                extra = timer.take(block_on=metrics if save else None)
                extra.update(throughput.throughput(config, extra["step_time"], flops=flops_per_step,
                                                   num_devices=mesh.devices.size,
                                                   device_kind=mesh.devices.flat[0].device_kind))
                extra.update(pipeline.sampling_metrics())
            late.add(step, metrics, extra)
            # A step late: the device is already busy with this step when we wait on the last.
            if (step - 1) % log_every == 0 or len(late) > log_every:
                late.fetch(keep_newest=True)

            # ------------------------------------------------------------ Checkpoint
            if save:
                late.fetch(keep_newest=True)
                _, last, extra = late.pop_newest()
                _check_finite(last, step, config, manager)  # never save after a NaN/Inf step
                t_save = time.perf_counter()
                # The iterator state after this step's batch, not after the prefetched ones.
                ckpt.save(manager, step, params, {"step": state.step,
                                                  "opt_state": state.opt_state},
                          item.iterator_state, assets, force=True)
                # Time the loop was blocked by the (async) save.
                extra["checkpoint_blocking_s"] = time.perf_counter() - t_save
                record(step, last, extra, force=True)

            # ------------------------------------------------------------ Evals
            due = [ev for ev in evaluators if ev.due(step, done)]
            if due:
                late.fetch(keep_newest=False)
                eval_metrics = {}
                for ev in due:
                    eval_metrics.update(ev(params, step))
                logger.log(step, eval_metrics, force=True)
            if interrupt:
                print(f"interrupted: saved checkpoint at step {step}; exiting")
                break
        late.fetch(keep_newest=False)
    pbar.close()
    manager.wait_until_finished()
    manager.close()
    logger.close()
    return {"params": params, "first_step": first_step, "last_step": step, "losses": losses,
            "checkpoint_dir": str(manager.directory), "preempted": preemption.requested,
            "norm_stats": norm_stats, "assets": assets, "eval": eval_metrics,
            "embodiments": pipeline.embodiments, "tokenizer_path": pipeline.tokenizer_path,
            "flops_per_step": flops_per_step}


def _check_and_report_data(pipeline: Any, config: ml_collections.ConfigDict,
                           is_chief: bool) -> None:
    """The tokenizer must fit the model's vocabulary; print the balanced sampling's clusters."""
    if pipeline.vocab_size > config.model.vocab_size:
        raise ValueError(f"model.vocab_size={config.model.vocab_size} is smaller than the "
                         f"dataset tokenizer's {pipeline.vocab_size}")
    report = pipeline.cluster_report()
    if report is not None and is_chief:
        print(f"balanced sampling (alpha={config.data.balance_alpha}): {len(report['sizes'])} "
              f"clusters of sizes {report['sizes']}, effective clusters exp(H) "
              f"{report['effective_clusters']:.2f} (data: {report['effective_clusters_data']:.2f})")


def _same_file(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def check_resume_tokenizer(checkpoint_dir: str, tokenizer_path: str) -> None:
    """Refuse (UserError) to resume a run whose checkpoints learnt another tokenizer's ids
    than the one this run reads with (a changed `data.tokenizer`, or a mixture's
    `<workdir>/tokenizer.model` replaced)."""
    steps = ckpt.finished_steps(checkpoint_dir) if os.path.isdir(checkpoint_dir) else []
    if not steps:
        return
    try:
        saved = ckpt.read_assets(checkpoint_dir, steps[-1]).tokenizer_path
    except (OSError, ValueError):
        return  # a damaged step: restore_or_init names it
    if not _same_file(saved, tokenizer_path):
        raise cli.UserError(
            f"{checkpoint_dir} step {steps[-1]} was trained with the tokenizer in its assets "
            f"({saved}), not {tokenizer_path}; resume with --config.data.tokenizer={saved}")


def check_init_from(config: ml_collections.ConfigDict, pipeline: Any) -> None:
    """Refuse (UserError, one line) to start from `config.init_from` with another tokenizer
    than the one its weights learnt, or with other statistics for a robot it knows: the token
    ids and action scales would silently mean something else."""
    try:
        assets = (bundle.read_assets(config.init_from) if bundle.is_export_bundle(
            config.init_from) else ckpt.read_assets(config.init_from))
    except (OSError, ValueError) as err:
        raise cli.UserError(f"config.init_from={config.init_from!r}: cannot read its assets "
                            f"({err})") from None
    if not _same_file(assets.tokenizer_path, pipeline.tokenizer_path):
        raise cli.UserError(
            f"config.init_from={config.init_from!r} learnt the token ids of its own "
            f"tokenizer.model, but this run reads {pipeline.tokenizer_path}; set "
            f"--config.data.tokenizer={assets.tokenizer_path} (experiments/finetune.py does)")
    known = assets.embodiments
    for emb, stats in pipeline.embodiments:
        if emb.name not in known:
            continue  # a new robot: its own statistics
        want = known[emb.name][1]
        if any(not np.array_equal(np.asarray(stats[k][n], np.float32), want[k][n])
               for k in want for n in want[k]):
            raise cli.UserError(
                f"config.init_from={config.init_from!r} knows embodiment {emb.name!r} with "
                f"other statistics than this run's; set --config.data.norm_stats="
                f"{os.path.join(config.init_from, 'embodiments.json')} "
                f"(experiments/finetune.py does)")


def restore_or_init(config: ml_collections.ConfigDict, manager: Any, step_fns: Any,
                    data_iter: Any, *, is_chief: bool = True) -> tuple[Any, TrainState]:
    """(params, state) from the newest intact checkpoint step (damaged newer ones are set
    aside as <step>.corrupt; the data iterator is restored in place), else freshly
    initialised: from `config.init_from` (export or checkpoint) and `config.init_pretrained`
    (foreign weights) when set."""
    start_step, params, state = ckpt.restore_latest(manager, step_fns.abstract_params,
                                                    step_fns.abstract_state, data_iter)
    if start_step is not None:
        print(f"Resumed from checkpoint step {start_step} in {manager.directory}")
        return params, state
    params, state = step_fns.init_fn(jax.random.PRNGKey(config.seed + 1))
    if config.init_from:
        params = _init_params(config.init_from, step_fns.abstract_params)
        print(f"Initialised params from {config.init_from}")
    for path, layout in config.get("init_pretrained") or ():
        params, report = load_pretrained(params, path, layout=layout)
        if is_chief:
            print(describe(report).splitlines()[0] + f": loaded {len(report.loaded)} "
                  f"keys, {len(report.mismatched)} mis-shaped, {len(report.unused)} unused")
    params, _ = pretrained.load_configured(params, config.model)  # reported by resolve_pretrained
    return params, state


PRETRAINED_REPORT = "pretrained_load.txt"


def resolve_pretrained(config: ml_collections.ConfigDict, workdir: str, *,
                       is_chief: bool = True) -> list[pretrained.LoadReport]:
    """Before anything compiles: set the `config.model` fields the layouts of
    `config.model.pretrained` need (e.g. Gemma's embedding scale) and check every file
    against our param shapes (`strict`: a problem stops the run as one line). The load
    report is printed once and written to <workdir>/pretrained_load.txt."""
    entries = pretrained.configured(config.model)
    if not entries:
        return []
    try:
        fields = pretrained.configure(config.model)
        abstract = wallwm.abstract_params(config.model)
        strict = bool(config.model.pretrained.get("strict", True))
        reports = [pretrained.check_pretrained(abstract, path, layout=layout, strict=strict)
                   for path, layout in entries]
    except (ValueError, FileNotFoundError) as err:
        raise cli.UserError(f"model.pretrained: {err}") from None
    if is_chief:
        for report in reports:
            print(describe(report).splitlines()[0] + f": {len(report.loaded)} keys to load, "
                  f"{len(report.mismatched)} mis-shaped, {len(report.unused)} unused, "
                  f"{len(report.not_covered)} of our leaves left at init")
        if fields:
            print("model fields set for the pretrained weights: "
                  + ", ".join(f"model.{k}={v!r}" for k, v in fields.items()))
        with open(os.path.join(workdir, PRETRAINED_REPORT), "w") as f:
            f.write("\n".join(describe(r) for r in reports) + "\n")
    return reports


def _init_params(init_from: str, abstract_params: Any) -> Any:
    """`config.init_from`'s params: an export bundle's weights or a checkpoint's params."""
    if bundle.is_export_bundle(init_from):
        return bundle.load_params(init_from, abstract_params)
    return ckpt.restore_params(init_from, abstract_params)


class LateMetrics:
    """The metrics of dispatched steps, kept on the device until fetched together, a step
    late: the device is already running the next step while the host waits for them. Each
    fetched step goes to `record(step, metrics, extra)` in step order."""

    def __init__(self, record: Any) -> None:
        self._record = record
        self._rows: list[tuple[int, dict[str, Any], dict[str, float]]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, step: int, metrics: dict[str, Any], extra: dict[str, float]) -> None:
        self._rows.append((step, metrics, extra))

    def fetch(self, *, keep_newest: bool) -> None:
        """Fetch and record every step (but the newest, still running, with `keep_newest`)."""
        rows = self._rows[:-1] if keep_newest else self._rows
        self._rows = self._rows[len(rows):]
        if rows:
            for (s, _, extra), m in zip(rows, _fetch([m for _, m, _ in rows]), strict=True):
                self._record(s, m, extra)

    def pop_newest(self) -> tuple[int, dict[str, Any], dict[str, float]]:
        """The newest step's (step, fetched metrics, extra), not recorded."""
        s, m, extra = self._rows.pop()
        return s, _fetch(m), extra


def _fetch(tree: Any) -> Any:
    """The only device-to-host transfer of the loop (log, checkpoint and eval steps)."""
    return jax.device_get(tree)


def _check_finite(metrics: dict[str, Any], step: int, config: ml_collections.ConfigDict,
                  manager: Any) -> None:
    """Stop with a message naming the step and every loss term when the loss is NaN/Inf
    (`on_nonfinite="stop"`); with "skip" the step already kept the previous params."""
    if np.isfinite(metrics["loss"]):
        return
    terms = {k: float(v) for k, v in metrics.items() if k.startswith("loss")}
    if config.get("on_nonfinite", "stop") == "skip":
        print(f"non-finite loss at step {step}: {json.dumps(terms)}; update skipped")
        return
    manager.wait_until_finished()
    raise NonFiniteLossError(
        f"non-finite loss at step {step}: {json.dumps(terms)}; the last finished checkpoint "
        f"(step {manager.latest_step()}) in {manager.directory} is intact")


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Join a multi-process run via `jax.distributed.initialize` when one is asked for.

    Each argument falls back to the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID). Nothing happens for a single process; returns whether it initialised.
    Must run before anything touches the devices.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if num_processes is None or num_processes <= 1:
        return False
    if not coordinator_address or process_id is None:
        raise ValueError(f"num_processes={num_processes} needs coordinator_address (host:port) "
                         f"and process_id (0..{num_processes - 1}); got "
                         f"coordinator_address={coordinator_address!r}, process_id={process_id}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in 0..{num_processes - 1}")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True

