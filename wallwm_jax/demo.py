"""The whole WALL-WM path in one command, sized for a laptop CPU:

    python -m wallwm_jax.demo --workdir /tmp/wallwm_demo

MetaWorld scripted rollouts -> event-segmented TFDS/ArrayRecord dataset -> event-mode
pretraining of a tiny WALL-WM -> Orbax checkpoints -> offline + closed-loop evaluation ->
export bundle -> a fresh process loads the export and acts. Re-running with the same workdir
resumes every stage instead of starting over. Flags scale it up.
"""

from __future__ import annotations

import json
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
_EPISODES = flags.DEFINE_integer("episodes_per_task", 20, "Expert episodes per task.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Training steps.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch size.")
_SIZE = flags.DEFINE_string("size", "tiny", "Model size (experiments/pretrain.py sizes).")
_EVAL_EPISODES = flags.DEFINE_integer("eval_episodes", 3, "Closed-loop episodes per task.")
_EVAL_MAX_STEPS = flags.DEFINE_integer("eval_max_steps", 150, "Step limit per eval episode.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Camera image side in pixels.")
_WORKERS = flags.DEFINE_integer("build_workers", 2, "Rollout worker processes for the build.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for data, init and sampling.")


def demo_config(dataset_dir: str) -> Any:
    """The tiny event-mode config, pointed at the demo dataset and sized by the flags."""
    from experiments.pretrain import get_config

    config = get_config(f"size={_SIZE.value},mode=event")
    config.seed = _SEED.value
    config.total_steps = _STEPS.value
    config.batch_size = _BATCH.value
    config.log_every_steps = 1
    config.data.data_dir = dataset_dir
    config.data.image_size = _IMAGE_SIZE.value
    config.checkpoint.every_steps = max(1, _STEPS.value // 4)
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
    """Per-task table of policy vs expert success and mean episode lengths."""
    lines = ["| task | policy success | expert success | policy steps | expert steps |",
             "|---|---|---|---|---|"]
    for task, row in closed.items():
        lines.append(f"| {task} | {row['policy_success']:.0%} | {row['expert_success']:.0%} | "
                     f"{row['policy_steps']:.0f} | {row['expert_steps']:.0f} |")
    return "\n".join(lines)


def closed_loop_eval(export_dir: str, workdir: str, tasks: tuple[str, ...], episodes: int,
                     max_steps: int) -> dict[str, dict[str, float]]:
    """The `demo` suite (unseen positions) for the export and the expert, per task."""
    import dataclasses

    import numpy as np

    from wallwm_jax.evaluation import suites
    from wallwm_jax.evaluation.runner import PolicySpec, evaluate_suite

    suite = dataclasses.replace(suites.get("demo"), groups={"demo": tasks},
                                episodes_per_task=episodes, episode_limit=max_steps)
    runs = {who: evaluate_suite(PolicySpec(path), suite, os.path.join(workdir, "eval", who))
            for who, path in (("expert", "expert"), ("policy", export_dir))}
    table: dict[str, dict[str, float]] = {}
    for task in tasks:
        row = {}
        for who, res in runs.items():
            eps = [e for e in res["episodes"] if e["task"] == task]
            row[f"{who}_success"] = res["summary"]["tasks"][task]["success"]
            row[f"{who}_steps"] = float(np.mean([e["steps"] for e in eps]))
        table[task] = row
    return table


def format_summary(summary: dict[str, Any]) -> str:
    """The Markdown table the demo prints at the end."""
    lines = ["| stage | result |", "|---|---|"]
    for key in ("dataset", "episodes", "train_steps", "loss_first_10pct", "loss_last_10pct",
                "val_action_mse", "val_duration_acc", "checkpoint_dir", "export_dir",
                "fresh_process_chunk"):
        lines.append(f"| {key} | {summary[key]} |")
    lines += ["", closed_loop_table(summary["closed_loop"])]
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in summary["timings_s"].items())
    lines += ["", f"stage times: {timings}"]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
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

    t = time.time()
    print(f"[1/5] dataset: {len(tasks)} tasks x {_EPISODES.value} expert episodes")
    dataset_dir = build(os.path.join(workdir, "data"), config="demo", tasks=tasks,
                        episodes_per_task=_EPISODES.value, image_size=_IMAGE_SIZE.value,
                        seed=_SEED.value, num_workers=_WORKERS.value)
    timings["dataset"] = time.time() - t

    t = time.time()
    print(f"[2/5] pretraining ({_SIZE.value}, event mode) for {_STEPS.value} steps")
    config = demo_config(dataset_dir)
    run_dir = os.path.join(workdir, "run")
    result = train_and_evaluate(config, run_dir)
    timings["train"] = time.time() - t
    if result["preempted"]:  # SIGTERM: stop here, leave the last export and summary alone
        print(f"interrupted during pretraining at step {result['last_step']}: checkpoint in "
              f"{result['checkpoint_dir']}; export and summary not touched. Run the same "
              f"command again to resume.")
        return

    t = time.time()
    print("[3/5] offline evaluation on held-out episodes")
    offline = evaluate_offline(result["params"], config, split="val")
    timings["offline_eval"] = time.time() - t

    t = time.time()
    print("[4/5] export")
    export_dir = export_bundle(os.path.join(workdir, "export"), result["params"], config,
                               result["norm_stats"], os.path.join(dataset_dir, "tokenizer.model"))
    fresh = act_in_fresh_process(export_dir, tasks[0])
    timings["export"] = time.time() - t

    t = time.time()
    print(f"[5/5] closed-loop evaluation: {_EVAL_EPISODES.value} episodes per task")
    closed = closed_loop_eval(export_dir, workdir, tasks, _EVAL_EPISODES.value,
                              _EVAL_MAX_STEPS.value)
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
