"""`python -m data_builders.metaworld_events --data_dir DIR --config mt10 --episodes_per_task 20`

Builds (or reuses) a MetaWorld scripted-expert event dataset and prints its build report.
"""

from __future__ import annotations

import argparse

from data_builders.metaworld_events.metaworld_events import build


def main() -> None:
    """Parse flags and build."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--config", default="demo", help="demo | mt10 | mt50")
    p.add_argument("--episodes_per_task", type=int, default=10)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--tasks", default="", help="comma-separated subset of the config's tasks")
    p.add_argument("--cameras", default="", help="extra cameras, e.g. gripper")
    p.add_argument("--keep_failures", action="store_true", help="keep failed expert episodes")
    p.add_argument("--strict", action="store_true", help="fail on an invalid episode")
    a = p.parse_args()
    path = build(a.data_dir, config=a.config, episodes_per_task=a.episodes_per_task,
                 image_size=a.image_size, seed=a.seed, num_workers=a.workers,
                 tasks=tuple(a.tasks.split(",")) if a.tasks else None,
                 cameras=tuple(c for c in a.cameras.split(",") if c),
                 keep_failures=a.keep_failures, strict=a.strict)
    print(path)


if __name__ == "__main__":
    main()
