"""Does a pixel policy's first action follow where the goal or the puck is? Over N `mt10_seen`
dev scenes per task, R² of the policy's first position-target offset (target − hand, xy)
against the scripted expert's at the same state (`a / 10`, a clipped to ±1), after one no-op
step (the reset frame draws the goal where it was before, docs/pixels.md). R² ≤ 0: the
policy predicts no better than the scenes' mean offset, i.e. it ignores the scene.

    python experiments/results/pixels/sanity/target_probe.py CHECKPOINT_DIR... [--scenes 20]
        [--step N]   (a checkpoint's step: the latest by default)
        [--samples K]   (the mean of K sampled chunks per scene: 1 by default, as executed;
                         K > 1 removes the flow sampler's noise, so R² then says whether the
                         policy's mean action follows the scene)

Prints one JSON line per policy and task. The expert's offset is read through the
simulator (privileged): this is a diagnosis, not an evaluation.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from wallwm_jax.data import captions
from wallwm_jax.envs.metaworld import MetaWorldTask
from wallwm_jax.evaluation.runner import PolicySpec, _env_cameras, load_actor
from wallwm_jax.evaluation.suites import scene_seeds


def r2(pred: np.ndarray, true: np.ndarray) -> list[float | None]:
    """Per-axis R² of pred [N, D] against true [N, D] (None where true does not vary: reach's
    y, where the expert's action is clipped in every scene)."""
    ss = ((true - true.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1 - ((pred - true) ** 2).sum(0) / np.where(ss > 1e-12, ss, np.nan)
    return [None if np.isnan(v) else round(float(v), 2) for v in out]


def probe(path: str, task: str, scenes: int, step: int | None = None,
          samples: int = 1) -> dict:
    """First-step target offsets of the policy at `path` (checkpoint `step`, None: the
    latest; the mean of `samples` sampled chunks) and of the expert on `task`."""
    policy = load_actor(PolicySpec(path, step=step))
    pred, true = [], []
    for seed in scene_seeds("mt10_seen", task, "dev", scenes):
        env = MetaWorldTask(task, seed=seed, image_size=policy.config.data.image_size,
                            extra_cameras=_env_cameras(policy))
        try:
            env.reset()
            obs, _ = env.step(np.zeros(4, np.float32))
            policy.reset(seed % 2**31)
            images = {k: v for k, v in obs.items() if k.startswith("image")}
            first = [policy.act(images, obs["state"], captions.instruction(task, variant=0))
                     ["chunk"][0, :2] for _ in range(samples)]
            pred.append(np.mean(first, axis=0) - obs["state"][:2])
            true.append(np.clip(env.expert_action(), -1, 1)[:2] / 10)
        finally:
            env.close()
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    return {"policy": path, "step": step, "samples": samples, "task": task, "scenes": scenes,
            "r2_xy": r2(pred, true),
            "expert_std_xy": true.std(0).round(3).tolist(),
            "policy_std_xy": pred.std(0).round(3).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", help="checkpoint directories or exports")
    parser.add_argument("--tasks", default="reach-v3,push-v3")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (latest)")
    parser.add_argument("--samples", type=int, default=1, help="chunks averaged per scene")
    args = parser.parse_args()
    for path in args.policies:
        for task in args.tasks.split(","):
            print(json.dumps(probe(path, task, args.scenes, args.step, args.samples)), flush=True)


if __name__ == "__main__":
    main()
