"""Dataset build throughput vs the raw simulate+render rate of this machine.

    python benchmarks/data_build.py --config mt10 --episodes_per_task 2 --workers 1,2

Raw rate: `rollout_expert` in this process (MuJoCo physics + offscreen rendering + the
scripted expert, nothing written), over the same tasks and seeds the build uses. Build rate:
`build()` end to end into a fresh directory (rollouts, PNG encoding, ArrayRecord writing,
norm stats, tokenizer) for each worker count. Prints JSON and a one-line summary with
episodes/min and the ratio build / raw (above 1 with several workers: parallel rollouts).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import flags

from data_builders.metaworld_events import metaworld_events as mwe
from wallwm_jax import cli
from wallwm_jax.envs.metaworld import rollout_expert

flags.DEFINE_string("config", "mt10", "Builder config: demo | mt10 | mt50.")
flags.DEFINE_integer("episodes_per_task", 2, "Expert episodes per task.")
flags.DEFINE_integer("image_size", 64, "Square image side in pixels.")
flags.DEFINE_list("workers", ["1", "2"], "Rollout worker counts.")


def raw_rate(cfg: mwe.MetaworldEventsConfig) -> dict[str, float]:
    """Episodes/min of bare expert rollouts (train split jobs of the config), one process."""
    jobs = [(task, i) for task in cfg.tasks
            for i in mwe.split_episodes(cfg.episodes_per_task)["train"]]
    t0 = time.perf_counter()
    steps = 0
    for task, i in jobs:
        out = rollout_expert(task, seed=mwe.episode_seed(cfg.seed, task, i),
                             image_size=cfg.image_size, max_steps=mwe.MAX_STEPS)
        steps += len(out["actions"])
    seconds = time.perf_counter() - t0
    return {"episodes": len(jobs), "steps": steps, "seconds": seconds,
            "episodes_per_min": 60 * len(jobs) / seconds}


def main(argv: list[str]) -> None:
    """Run the benchmark; print JSON and a summary line."""
    cli.positional(argv)
    a = flags.FLAGS
    cfg = mwe.make_config(a.config, episodes_per_task=a.episodes_per_task,
                          image_size=a.image_size)
    raw = raw_rate(cfg)
    builds = []
    for workers in (int(w) for w in a.workers):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            version_dir = mwe.build(tmp, config=a.config, episodes_per_task=a.episodes_per_task,
                                    image_size=a.image_size, num_workers=workers)
            seconds = time.perf_counter() - t0
            with open(os.path.join(version_dir, mwe.REPORT_FILE)) as f:
                report = json.load(f)
        rate = 60 * report["rollouts"] / seconds
        builds.append({"workers": workers, "rollouts": report["rollouts"],
                       "episodes_kept": report["episodes"], "seconds": seconds,
                       "episodes_per_min": rate, "ratio_to_raw": rate / raw["episodes_per_min"]})
    print(json.dumps({"config": a.config, "episodes_per_task": a.episodes_per_task,
                      "image_size": a.image_size, "raw": raw, "builds": builds}, indent=1))
    print(f"data build ({a.config}, {a.image_size}px): raw simulate+render "
          f"{raw['episodes_per_min']:.1f} episodes/min; build " + ", ".join(
              f"{b['workers']} workers {b['episodes_per_min']:.1f}/min "
              f"({b['ratio_to_raw']:.2f}x raw)" for b in builds))


if __name__ == "__main__":
    cli.run(main)
