"""Tables of the task study from the trials' `eval/mt50_heldout/results.json` files.

Usage: python experiments/results/tasks/summarize.py SWEEP_DIR [SWEEP_DIR ...]
(several directories when seeds were run in different places). Prints the per-seed and
pooled headline, the first-event failure count and the per-task table (markdown).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys

import numpy as np

from wallwm_jax.evaluation.stats import wilson_interval
from wallwm_jax.sweep.report import t_interval


def load(dirs: list[str]) -> dict[tuple[str, int], list[dict]]:
    """(mode, seed) -> episodes, from every finished trial's mt50_heldout results."""
    out = {}
    for d in dirs:
        for path in glob.glob(os.path.join(d, "trials", "*", "eval", "mt50_heldout",
                                           "results.json")):
            trial = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(path))))
            fields = dict(kv.split("=", 1) for kv in trial.split(","))
            with open(path) as f:
                out[(fields["mode"], int(fields["seed"]))] = json.load(f)["episodes"]
    return out


def main(dirs: list[str]) -> None:
    runs = load(dirs)
    all_seeds = sorted({s for _, s in runs})
    rate = {key: 100 * np.mean([e["success"] for e in eps]) for key, eps in runs.items()}
    print("| arm | " + " | ".join(f"seed {s}" for s in all_seeds)
          + " | mean ± s.d. [t95] | pooled [Wilson 95] |")
    print("|---|" + "---|" * (len(all_seeds) + 2))
    for mode in ("event", "chunk"):
        seeds = [s for s in all_seeds if (mode, s) in runs]
        rates = [rate[(mode, s)] for s in seeds]
        wins = sum(sum(e["success"] for e in runs[(mode, s)]) for s in seeds)
        n = sum(len(runs[(mode, s)]) for s in seeds)
        lo, hi = t_interval(rates) if len(rates) > 1 else (float("nan"),) * 2
        wlo, whi = wilson_interval(wins, n)
        print(f"| {mode} | " + " | ".join(f"{r:.0f}%" for r in rates)
              + f" | {np.mean(rates):.0f}% ± {np.std(rates, ddof=1) if len(rates) > 1 else 0:.0f}"
              f" [{lo:.0f}, {hi:.0f}] | {wins}/{n} [{100 * wlo:.0f}, {100 * whi:.0f}] |")
    paired = [s for s in all_seeds if ("event", s) in runs and ("chunk", s) in runs]
    diffs = [rate[("event", s)] - rate[("chunk", s)] for s in paired]
    print("event - chunk by seed: " + ", ".join(f"seed {s} {d:+.0f}" for s, d in
                                                zip(paired, diffs, strict=True))
          + (f"; mean {np.mean(diffs):+.1f} points" if diffs else ""))
    for s in all_seeds:
        if ("event", s) in runs:
            failed = [e for e in runs[("event", s)] if not e["success"]]
            stuck = sum(len(set(e["captions"])) == 1 for e in failed)
            print(f"seed {s}: event failures {len(failed)}, never past the first event {stuck}")
    per_task = collections.defaultdict(lambda: collections.Counter())
    for (mode, _), eps in runs.items():
        for e in eps:
            per_task[e["task"]][mode] += int(e["success"])
            per_task[e["task"]][mode + "_n"] += 1
    print("\n| task | event | chunk |\n|---|---|---|")
    for task in sorted(per_task):
        c = per_task[task]
        if c["event"] or c["chunk"]:
            print(f"| {task.removesuffix('-v3')} | {c['event']}/{c['event_n']} | "
                  f"{c['chunk']}/{c['chunk_n']} |")
    never = [t.removesuffix("-v3") for t in sorted(per_task)
             if not (per_task[t]["event"] or per_task[t]["chunk"])]
    print(f"\nnever succeeded ({len(never)}): {', '.join(never)}")


if __name__ == "__main__":
    main(sys.argv[1:])
