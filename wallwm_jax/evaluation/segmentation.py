"""Grading the automatic segmenter against MetaWorld's ground-truth event starts.

Boundary precision/recall/F1 per task of `wallwm_jax.data.segmentation.segment_events`, next
to a uniform-cut baseline, on a built dataset or on fresh MetaWorld expert rollouts:
`python -m wallwm_jax.evaluation.segmentation [--dataset DIR] [--tolerance 1,3,5]`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from absl import flags

from wallwm_jax import cli
from wallwm_jax.data.episodes import open_dataset
from wallwm_jax.data.segmentation import boundary_f1, f1_scores, segment_events
from wallwm_jax.data.tasks import DEMO_TASKS, MT10_TASKS

# Ground-truth phases no segmenter that sees only actions/states can place: MetaWorld's "hold"
# starts when the simulator reports success, while the expert's commands carry on unchanged.
INVISIBLE_PHASES = ("hold",)


def uniform_starts(t_total: int, n_events: int) -> np.ndarray:
    """int64 [n_events] starts of `n_events` equal events: the trivial baseline."""
    return np.unique(np.floor(np.arange(n_events) * t_total / n_events).astype(np.int64))


def _visible(pred: np.ndarray, true: np.ndarray, phases: list[str], tolerance: int):
    """Drop true boundaries of invisible phases, and for each the nearest prediction within
    `tolerance` (a don't-care region, so a lucky cut there is neither a TP nor an FP)."""
    hidden = {int(s) for s, p in zip(true, phases, strict=True)
              if p in INVISIBLE_PHASES and s > 0}
    pred = list(pred)
    for s in sorted(hidden):
        near = [q for q in pred if abs(q - s) <= tolerance]
        if near:
            pred.remove(min(near, key=lambda q: (abs(q - s), q)))
    return (np.asarray(pred, np.int64),
            np.asarray([s for s in true if int(s) not in hidden], np.int64))


def evaluate(episodes: Iterable[dict], *, tolerances: Sequence[int] = (3,), gripper_index: int = 3,
             position_slice: slice = slice(0, 3), **segment_kwargs) -> dict:
    """Summed boundary counts per task and "overall" over episodes given as dicts with task,
    actions [T,A], states [T,S], starts [E] and phases [E] (ground truth).

    Per tolerance k: "all" (every true boundary), "visible" (without INVISIBLE_PHASES) and
    "uniform" (uniform cuts with the segmenter's event count, against every true boundary).
    """
    totals: dict = {}
    for ep in episodes:
        pred = segment_events(ep["actions"], ep["states"], gripper_index=gripper_index,
                              position_slice=position_slice, **segment_kwargs)
        true = np.asarray(ep["starts"], np.int64)
        base = uniform_starts(len(ep["actions"]), len(pred))
        for task in (ep["task"], "overall"):
            row = totals.setdefault(task, {"episodes": 0, "true": 0, "pred": 0})
            row["episodes"] += 1
            row["true"] += int(np.sum(true > 0))
            row["pred"] += int(np.sum(pred > 0))
            for k in tolerances:
                runs = {"all": (pred, true), "visible": _visible(pred, true, ep["phases"], k),
                        "uniform": (base, true)}
                for name, (p, t) in runs.items():
                    counts = row.setdefault((k, name), np.zeros(3, np.int64))
                    s = boundary_f1(p, t, tolerance=k)
                    counts += (s["tp"], s["fp"], s["fn"])
    return {task: {key: (f1_scores(*(int(c) for c in v)) if isinstance(key, tuple) else v)
                   for key, v in row.items()} for task, row in totals.items()}


def format_table(results: dict, tolerances: Sequence[int] = (3,)) -> str:
    """The per-task table printed by the command line."""
    head = f"{'task':26s} {'eps':>4s} {'true/ep':>7s} {'pred/ep':>7s}"
    for k in tolerances:
        head += f" | ±{k}: {'P':>5s} {'R':>5s} {'F1':>5s} {'F1vis':>5s} {'F1uni':>5s}"
    lines = [head, "-" * len(head)]
    for task in [*sorted(t for t in results if t != "overall"), "overall"]:
        row = results[task]
        line = (f"{task:26s} {row['episodes']:4d} {row['true'] / row['episodes']:7.2f} "
                f"{row['pred'] / row['episodes']:7.2f}")
        for k in tolerances:
            a = row[(k, "all")]
            line += (f" | {'':{len(str(k)) + 3}s}{a['precision']:5.2f} {a['recall']:5.2f} "
                     f"{a['f1']:5.2f} {row[(k, 'visible')]['f1']:5.2f} "
                     f"{row[(k, 'uniform')]['f1']:5.2f}")
        lines.append(line)
    return "\n".join(lines)


def dataset_episodes(dataset_dir: str, split: str = "train") -> Iterator[dict]:
    """Episodes of a built event dataset, in the form `evaluate` reads."""
    source = open_dataset(dataset_dir, split)
    for i in range(len(source)):
        ep = source[i]
        yield {"task": ep["episode_metadata/task"], "actions": ep["steps/action"],
               "states": ep["steps/observation/state"], "starts": ep["events/start"],
               "phases": ep["events/phase"]}


def rollout_episodes(tasks: Sequence[str], episodes: int, seed: int) -> Iterator[dict]:
    """Fresh MetaWorld expert rollouts (seeds seed .. seed + episodes - 1 per task)."""
    # The simulator (MuJoCo) is imported only when rollouts are asked for, not for a dataset.
    from wallwm_jax.envs.metaworld import rollout_expert

    for task in tasks:
        for i in range(episodes):
            ep = rollout_expert(task, seed=seed + i, image_size=8)  # images are not used
            yield {"task": task, "actions": ep["actions"], "states": ep["states"],
                   "starts": [s for s, _, _ in ep["events"]],
                   "phases": [p for _, _, p in ep["events"]]}


def define_flags() -> None:
    """The CLI's flags (defined only when run as a program, so importers keep theirs)."""
    flags.DEFINE_string("dataset", None, "Built dataset version dir (else: fresh rollouts).")
    flags.DEFINE_string("split", "train", "Dataset split.")
    flags.DEFINE_list("tolerance", ["3"], "Tolerances in steps, e.g. --tolerance 1,3,5.")
    flags.DEFINE_list("tasks", ["mt10"], "Rollouts: 'mt10', 'demo' or task names "
                      "(comma-separated).")
    flags.DEFINE_integer("episodes", 5, "Rollouts per task.")
    flags.DEFINE_integer("seed", 1000, "First rollout seed (defaults were tuned on seeds 0-9).")


def print_quality(dataset: str | None = None, split: str = "train",
                  tolerances: Sequence[int] = (3,), tasks: str = "mt10", episodes: int = 5,
                  seed: int = 1000) -> None:
    """Print boundary precision/recall/F1 of the segmenter against MetaWorld ground truth,
    on a built dataset's split or on fresh expert rollouts of `tasks`."""
    tolerances = tuple(tolerances)
    if dataset:
        source_episodes = dataset_episodes(dataset, split)
        source = f"{dataset} split {split}"
    else:
        names = {"mt10": MT10_TASKS, "demo": DEMO_TASKS}.get(tasks)
        names = names or tuple(t.strip() for t in tasks.split(",") if t.strip())
        source_episodes = rollout_episodes(names, episodes, seed)
        source = f"fresh expert rollouts, {episodes}/task, seeds {seed}-{seed + episodes - 1}"
    results = evaluate(source_episodes, tolerances=tolerances)
    print(f"Boundary P/R/F1 vs ground-truth event starts ({source}); F1vis: without "
          f"{'/'.join(INVISIBLE_PHASES)} starts; F1uni: uniform cuts, same event count")
    print(format_table(results, tolerances))
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    """CLI: `python -m wallwm_jax.evaluation.segmentation [--dataset DIR] [--tolerance 1,3,5]`."""
    cli.positional(argv)
    fl = flags.FLAGS
    try:
        tolerances = tuple(int(t) for t in fl.tolerance)
    except ValueError:
        raise cli.UserError(f"--tolerance={','.join(fl.tolerance)}: expected integers, e.g. "
                            f"--tolerance 1,3,5") from None
    print_quality(fl.dataset, fl.split, tolerances, ",".join(fl.tasks), fl.episodes, fl.seed)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
