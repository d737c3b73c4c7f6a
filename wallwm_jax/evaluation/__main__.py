"""`python -m wallwm_jax.evaluation --export DIR`: closed-loop MetaWorld evaluation of an export.

Writes `closed_loop.json` and `closed_loop.md` into `--out` (default: the export directory).
"""

from __future__ import annotations

import argparse
import json
import os

from absl import logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="export bundle directory")
    parser.add_argument("--tasks", default="reach-v3,push-v3,button-press-topdown-v3")
    parser.add_argument("--episodes_per_task", type=int, default=10)
    parser.add_argument("--max_steps", type=int, default=150)
    parser.add_argument("--replan_every", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)

    from wallwm_jax.envs import metaworld  # noqa: F401  (sets MUJOCO_GL first)
    from wallwm_jax.evaluation.closed_loop import evaluate_closed_loop, results_markdown
    from wallwm_jax.policy import load_policy

    policy = load_policy(args.export)
    results = evaluate_closed_loop(policy, args.tasks.split(","),
                                   episodes_per_task=args.episodes_per_task,
                                   max_steps=args.max_steps,
                                   image_size=policy.config.data.image_size,
                                   replan_every=args.replan_every)
    out = args.out or args.export
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "closed_loop.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = results_markdown(results)
    with open(os.path.join(out, "closed_loop.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
