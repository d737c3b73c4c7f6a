"""The whole WALL-WM path in one command, sized for a laptop CPU:

    python -m wallwm_jax.demo --workdir /tmp/wallwm_demo

MetaWorld scripted rollouts -> event-segmented TFDS/ArrayRecord dataset -> event-mode
pretraining of a tiny WALL-WM (and, on the same data, steps and model, the chunk-mode
baseline) -> Orbax checkpoints -> offline + closed-loop evaluation -> export bundles -> a
fresh process loads the export and acts. Re-running with the same workdir resumes every stage
instead of starting over. Flags scale it up.

By default the state vector carries privileged simulator state (the object and goal
positions MetaWorld knows, after the 4-D agent state; `--noprivileged_state` for the 4-D
agent state alone): at 64x64 the goal of reach and the puck of push are a few pixels, and a
tiny model trained for minutes does not find them (docs/demo.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from typing import Any

from absl import flags

from wallwm_jax import cli
from wallwm_jax.envs import metaworld as mw  # sets MUJOCO_GL before MuJoCo is imported

_WORKDIR = flags.DEFINE_string("workdir", None, "Where the dataset, run and export go.")
_TASKS = flags.DEFINE_list("tasks", list(mw.DEMO_TASKS), "MetaWorld tasks (v3 names).")
_EPISODES = flags.DEFINE_integer("episodes_per_task", 30, "Expert episodes per task.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Training steps (of each policy).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch size.")
_SIZE = flags.DEFINE_string("size", "tiny", "Model size (experiments/pretrain.py sizes).")
_LR = flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate.")
_EXPERT_WIDTH = flags.DEFINE_integer("expert_width", 64, "Action expert width (its MLP: 2x).")
_MAX_EVENT_LEN = flags.DEFINE_integer("max_event_len", 8, "Tmax: action steps predicted at "
                                      "once (the rest of the event, at most this many).")
_TARGET_GAIN = flags.DEFINE_float("action_target_gain", 10.0, "Predict the expert "
                                  "controller's position targets, executed as gain * (target - "
                                  "hand) at every step (0: predict the recorded actions).")
_AUGMENT = flags.DEFINE_bool("augment", False, "Random crop and colour jitter of training "
                             "images.")
_EVAL_EPISODES = flags.DEFINE_integer("eval_episodes", 10, "Closed-loop episodes per task.")
_EVAL_MAX_STEPS = flags.DEFINE_integer("eval_max_steps", 150, "Step limit per eval episode.")
_EVAL_WORKERS = flags.DEFINE_integer("eval_workers", 2, "Closed-loop evaluation processes.")
_EVAL_SPLIT = flags.DEFINE_enum("eval_split", "test", ["dev", "test"], "Scene split of the "
                                "closed-loop evaluation: test for reported figures, dev for "
                                "anything chosen by looking at success (tuning).")
_EXECUTE = flags.DEFINE_integer("execute_steps", 8, "Closed loop: replan after at most this "
                                "many steps of a chunk, in both modes (0: the whole chunk).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Camera image side in pixels.")
_WORKERS = flags.DEFINE_integer("build_workers", 2, "Rollout worker processes for the build.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for data, init and sampling.")
_PRIVILEGED = flags.DEFINE_bool("privileged_state", True, "State vector with privileged "
                                "simulator state (object and goal positions after the 4-D "
                                "agent state), in the dataset, the model and the evaluation.")
_NOISE = flags.DEFINE_float("action_noise", 0.3, "Dataset rollouts execute the expert's action "
                            "plus N(0, noise^2) and record the expert's (DART).")
_CHUNK = flags.DEFINE_bool("chunk_baseline", True, "Also train and evaluate the chunk-mode "
                           "baseline on the same data, steps and model.")


# Flag -> (lowest allowed value, whether the bound itself is excluded).
_BOUNDS = ((_EPISODES, 2, False), (_STEPS, 1, False), (_BATCH, 1, False), (_LR, 0, True),
           (_EXPERT_WIDTH, 1, False), (_MAX_EVENT_LEN, 1, False), (_TARGET_GAIN, 0, False),
           (_EVAL_EPISODES, 1, False), (_EVAL_MAX_STEPS, 1, False), (_EVAL_WORKERS, 1, False),
           (_EXECUTE, 0, False), (_IMAGE_SIZE, 1, False), (_WORKERS, 1, False),
           (_SEED, 0, False), (_NOISE, 0, False))


def check_flags() -> None:
    """Check every flag before anything is built: a bad value is one `error:` line naming the
    flag (exit 2) in seconds, not a failure after the dataset is built."""
    from wallwm_jax import config_check
    from wallwm_jax.data.tasks import MT50_TASKS

    workdir = _WORKDIR.value
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        cli.fail(f"--workdir={workdir!r} is a file; expected a directory (made if missing)")
    for holder, low, excluded in _BOUNDS:
        value = holder.value
        if not math.isfinite(value) or (value <= low if excluded else value < low):
            kind = "an integer" if isinstance(value, int) else "a finite number"
            cli.fail(f"--{holder.name}={value}: expected {kind} {'>' if excluded else '>='} "
                     f"{low}" + (" (one or more episodes go to the val split)"
                                 if holder is _EPISODES else ""))
    tasks = [t for t in _TASKS.value if t.strip()]
    unknown = [t for t in tasks if t not in MT50_TASKS]
    if not tasks or unknown:
        cli.fail(f"--tasks={','.join(_TASKS.value)}: " + (
            f"unknown MetaWorld task(s) {unknown}" if unknown else "no task")
            + f"; expected v3 names such as {', '.join(mw.DEMO_TASKS)} (all: MT50)")
    for mode in ("event", "chunk") if _CHUNK.value else ("event",):
        try:
            config = demo_config("<the demo's dataset>", mode)
        except ValueError as err:  # the size is the one flag that picks a config argument
            cli.fail(f"--size={_SIZE.value!r}: {err}")
        if config.data.image_size < config.model.patch_size:
            cli.fail(f"--image_size={_IMAGE_SIZE.value}: expected at least the patch size "
                     f"of --size={_SIZE.value} ({config.model.patch_size})")
        try:
            config_check.validate(config, check_data=False)
        except ValueError as err:
            cli.fail(f"the flags give a config the training would refuse: {err}")


def demo_config(dataset_dir: str, mode: str = "event") -> Any:
    """The tiny config in `mode` (event, or chunk for the baseline), pointed at the demo
    dataset and sized by the flags; both modes get the same data, steps and model. The flags'
    defaults are the `recipe=demo` of experiments/pretrain.py."""
    from experiments.pretrain import get_config
    from wallwm_jax.data.tasks import state_dim

    config = get_config(f"size={_SIZE.value},mode={mode},recipe=demo")
    config.seed = _SEED.value
    config.total_steps = _STEPS.value
    config.batch_size = _BATCH.value
    config.log_every_steps = 1
    config.optimizer.learning_rate = _LR.value
    config.data.data_dir = dataset_dir
    config.data.image_size = _IMAGE_SIZE.value
    config.data.privileged_state = _PRIVILEGED.value
    config.model.state_dim = state_dim(_PRIVILEGED.value)
    config.checkpoint.every_steps = max(1, _STEPS.value // 4)
    config.model.expert_width = _EXPERT_WIDTH.value
    config.model.expert_mlp_dim = 2 * _EXPERT_WIDTH.value
    config.data.max_event_len = _MAX_EVENT_LEN.value  # model.max_event_len follows (a ref)
    config.data.action_target_gain = _TARGET_GAIN.value
    config.data.augment.enabled = _AUGMENT.value
    return config


def loss_drop(workdir: str) -> tuple[float, float]:
    """Mean training loss over the first and the last 10% of logged steps."""
    from wallwm_jax.train_log import read_metrics

    rows = sorted({r["step"]: r for r in read_metrics(workdir) if "loss" in r}.values(),
                  key=lambda r: r["step"])
    k = max(1, len(rows) // 10)
    first = sum(r["loss"] for r in rows[:k]) / k
    last = sum(r["loss"] for r in rows[-k:]) / k
    return first, last


def act_in_fresh_process(export_dir: str, task: str) -> dict[str, Any]:
    """Load the export in a new Python process, act on one MetaWorld observation."""
    cmd = [sys.executable, "-m", "wallwm_jax.policy", "--export", export_dir, "--task", task]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def closed_loop_table(closed: dict[str, dict[str, float]]) -> str:
    """Per-task table: success (k/n) of the event-mode policy, the chunk-mode baseline (when
    it ran) and the scripted expert, and their mean episode lengths."""
    who = [w for w in ("policy", "chunk", "expert") if f"{w}_success" in next(
        iter(closed.values()), {})]
    names = {"policy": "policy success (event)", "chunk": "chunk success",
             "expert": "expert success"}
    steps = {"policy": "event steps", "chunk": "chunk steps", "expert": "expert steps"}
    lines = ["| task | " + " | ".join(names[w] for w in who) + " | "
             + " | ".join(steps[w] for w in who) + " |",
             "|---|" + "---|" * (2 * len(who))]
    for task, row in closed.items():
        rates = [f"{row[f'{w}_success']:.0%} ({row[f'{w}_successes']}/{row[f'{w}_n']})"
                 for w in who]
        lines.append(f"| {task} | " + " | ".join(rates) + " | "
                     + " | ".join(f"{row[f'{w}_steps']:.0f}" for w in who) + " |")
    return "\n".join(lines)


def closed_loop_eval(export_dir: str, workdir: str, tasks: tuple[str, ...], episodes: int,
                     max_steps: int, *, chunk_export: str | None = None, workers: int = 1,
                     execute_steps: int | None = None, split: str = "test"
                     ) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """The `demo` suite's `split` scenes for the export (event mode, oracle planner), the
    chunk-mode baseline's export (when given) and the expert: the per-task table and, per
    arm, the privileged inputs it read. Policies run in `workers` processes; the expert reads
    state only (no rendering) in this one."""
    import dataclasses

    import numpy as np

    from wallwm_jax.evaluation import suites
    from wallwm_jax.evaluation.runner import PolicySpec, evaluate_suite

    suite = dataclasses.replace(suites.get("demo"), groups={"demo": tasks},
                                episodes_per_task=episodes, episode_limit=max_steps)
    who = [("expert", "expert"), ("policy", export_dir)]
    if chunk_export:
        who.append(("chunk", chunk_export))
    runs = {name: evaluate_suite(PolicySpec(path, execute_steps=execute_steps or None), suite,
                                 os.path.join(workdir, "eval", name), split=split,
                                 workers=1 if path == "expert" else workers)
            for name, path in who}
    table: dict[str, dict[str, float]] = {}
    for task in tasks:
        row = {}
        for name, res in runs.items():
            eps = [e for e in res["episodes"] if e["task"] == task]
            stats = res["summary"]["tasks"][task]
            row[f"{name}_success"] = stats["success"]
            row[f"{name}_successes"] = stats["successes"]
            row[f"{name}_n"] = stats["n"]
            row[f"{name}_steps"] = float(np.mean([e["steps"] for e in eps]))
        table[task] = row
    return table, {name: res["privileged_inputs"] for name, res in runs.items()}


def closed_loop_header(summary: dict[str, Any]) -> str:
    """Which scenes the closed-loop table is measured on and what privileged inputs each arm
    read, so a figure with privileged state is never shown unlabelled."""
    from wallwm_jax.evaluation.harness import describe_privileged

    names = {"policy": "event policy", "chunk": "chunk baseline", "expert": "expert"}
    arms = "; ".join(f"{names[arm]}: {describe_privileged(inputs)}"
                     for arm, inputs in summary["privileged_inputs"].items())
    return (f"Closed loop on the demo suite's `{summary['eval_split']}` scenes. Privileged "
            f"inputs, per arm: {arms}.")


def format_summary(summary: dict[str, Any]) -> str:
    """The Markdown table the demo prints at the end."""
    lines = ["| stage | result |", "|---|---|"]
    for key in ("dataset", "episodes", "train_steps", "loss_first_10pct", "loss_last_10pct",
                "val_action_mse", "val_duration_acc", "checkpoint_dir", "export_dir",
                "fresh_process_chunk", "state", "chunk_baseline", "execute_steps",
                "eval_split"):
        lines.append(f"| {key} | {summary[key]} |")
    lines += ["", closed_loop_header(summary), "", closed_loop_table(summary["closed_loop"])]
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in summary["timings_s"].items())
    lines += ["", f"stage times: {timings}"]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    check_flags()  # before the imports and the build below, which take minutes to fail
    from data_builders.metaworld_events import build
    from wallwm_jax.data.episodes import open_dataset
    from wallwm_jax.evaluation.offline import evaluate_offline
    from wallwm_jax.export import export_bundle
    from wallwm_jax.train import train_and_evaluate

    if not cli.verbose():  # our build report and rollout bar say what happens; TFDS's add noise
        import logging

        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
        logging.getLogger("absl").addFilter(cli.drop_below(logging.ERROR, "tensorflow_datasets"))
    workdir = os.path.abspath(_WORKDIR.value)
    timings: dict[str, float] = {}
    tasks = tuple(_TASKS.value)
    n_stages = 6 if _CHUNK.value else 5
    stage = iter(range(1, n_stages + 1))

    def announce(text: str) -> None:
        print(f"[{next(stage)}/{n_stages}] {text}", flush=True)

    t = time.time()
    state = ("privileged simulator state: hand, gripper, object and goal positions"
             if _PRIVILEGED.value else "4-D agent state")
    announce(f"dataset: {len(tasks)} tasks x {_EPISODES.value} expert episodes ({state})")
    dataset_dir = build(os.path.join(workdir, "data"), config="demo", tasks=tasks,
                        episodes_per_task=_EPISODES.value, image_size=_IMAGE_SIZE.value,
                        seed=_SEED.value, num_workers=_WORKERS.value,
                        privileged_state=_PRIVILEGED.value, action_noise=_NOISE.value)
    timings["dataset"] = time.time() - t

    def pretrain(mode: str, run_dir: str, what: str) -> tuple[Any, dict[str, Any]]:
        t = time.time()
        announce(f"pretraining {what} ({_SIZE.value}, {mode} mode) for {_STEPS.value} steps")
        config = demo_config(dataset_dir, mode)
        result = train_and_evaluate(config, run_dir)
        timings[f"train_{mode}"] = time.time() - t
        if result["preempted"]:  # SIGTERM: stop here, leave the last export and summary alone
            print(f"interrupted during pretraining at step {result['last_step']}: checkpoint "
                  f"in {result['checkpoint_dir']}; export and summary not touched. To resume, "
                  f"run the same command again: python -m wallwm_jax.demo "
                  f"{' '.join(sys.argv[1:])}", flush=True)
            raise SystemExit(cli.EXIT_PREEMPTED)  # schedulers requeue on it
        return config, result

    run_dir = os.path.join(workdir, "run")
    config, result = pretrain("event", run_dir, "WALL-WM")
    chunk_run_dir = os.path.join(workdir, "run_chunk")
    chunk_config = chunk_result = None
    if _CHUNK.value:
        chunk_config, chunk_result = pretrain("chunk", chunk_run_dir,
                                              "the chunk baseline, same data, steps and model")

    t = time.time()
    announce("offline evaluation on held-out episodes")
    offline = evaluate_offline(result["params"], config, split="val")
    timings["offline_eval"] = time.time() - t

    t = time.time()
    announce("export")
    tokenizer = os.path.join(dataset_dir, "tokenizer.model")
    export_dir = export_bundle(os.path.join(workdir, "export"), result["params"], config,
                               result["norm_stats"], tokenizer)
    chunk_export = None
    if chunk_result is not None:
        chunk_export = export_bundle(os.path.join(workdir, "export_chunk"),
                                     chunk_result["params"], chunk_config,
                                     chunk_result["norm_stats"], tokenizer)
    fresh = act_in_fresh_process(export_dir, tasks[0])
    timings["export"] = time.time() - t

    t = time.time()
    announce(f"closed-loop evaluation: {_EVAL_EPISODES.value} episodes per task on the demo "
             f"suite's {_EVAL_SPLIT.value} scenes, {_EVAL_WORKERS.value} worker(s)")
    closed, privileged = closed_loop_eval(
        export_dir, workdir, tasks, _EVAL_EPISODES.value, _EVAL_MAX_STEPS.value,
        chunk_export=chunk_export, workers=_EVAL_WORKERS.value, execute_steps=_EXECUTE.value,
        split=_EVAL_SPLIT.value)
    timings["closed_loop_eval"] = time.time() - t

    first, last = loss_drop(run_dir)
    n_train, n_val = (len(open_dataset(dataset_dir, split)) for split in ("train", "val"))
    summary = {
        "dataset": dataset_dir,
        "episodes": f"{n_train} train / {n_val} val",
        "train_steps": f"{result['first_step']} -> {result['last_step']}"
                       + (" (resumed)" if result["first_step"] else ""),
        "loss_first_10pct": f"{first:.4f}",
        "loss_last_10pct": f"{last:.4f}",
        "val_action_mse": f"{offline['val/action_mse']:.4f}",
        "val_duration_acc": f"{offline['val/duration_acc']:.2f}",
        "checkpoint_dir": result["checkpoint_dir"],
        "export_dir": export_dir,
        "fresh_process_chunk": f"shape {fresh['actions_shape']}",
        "state": state,
        "chunk_baseline": (f"{chunk_result['first_step']} -> {chunk_result['last_step']}"
                           f"{' (resumed)' if chunk_result['first_step'] else ''}, "
                           f"{chunk_export}" if chunk_result else "off"),
        "execute_steps": _EXECUTE.value or "whole chunk",
        "eval_split": _EVAL_SPLIT.value,
        "privileged_inputs": privileged,
        "closed_loop": closed,
        "offline": offline,
        "timings_s": timings,
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    table = format_summary(summary)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    cli.run(main)
