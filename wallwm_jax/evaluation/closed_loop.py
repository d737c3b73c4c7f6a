"""Closed-loop evaluation in MetaWorld: event-mode policy vs the scripted expert, per task.

The scripted expert plays the planner: at every step its privileged phase names the current
event, whose (train-split) caption is given to the policy as the next-event description.
The policy re-plans when the phase changes or its chunk runs out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from wallwm_jax.data import captions
from wallwm_jax.envs.metaworld import MetaWorldTask

EVAL_SEED_OFFSET = 100_000  # evaluation scenes never coincide with training seeds


def run_episode(env: MetaWorldTask, act: Callable[[dict[str, Any], str], np.ndarray] | None,
                *, task: str, max_steps: int, replan_every: int) -> dict[str, Any]:
    """One episode; `act=None` runs the scripted expert. Returns success and step count."""
    obs = env.reset()
    steps, success = 0, False
    while steps < max_steps and not success:
        phase = env.phase()
        if act is None:
            obs, success = env.step(env.expert_action())
            steps += 1
            continue
        chunk = act(obs, captions.event_caption(task, phase, variant=0, split="train"))
        for action in chunk[:replan_every]:
            obs, success = env.step(np.clip(action, -1.0, 1.0))
            steps += 1
            if success or steps >= max_steps or env.phase() != phase:
                break
    return {"success": bool(success), "steps": steps}


def evaluate_closed_loop(policy: Any, tasks: Sequence[str], *, episodes_per_task: int,
                         max_steps: int, image_size: int, replan_every: int = 8,
                         include_expert: bool = True) -> dict[str, dict[str, float]]:
    """Success rate per task of `policy` (event mode) and, on the same scenes, the expert."""
    results: dict[str, dict[str, float]] = {}
    total = len(tasks) * episodes_per_task * (2 if include_expert else 1)
    pbar = tqdm(total=total, desc="closed-loop eval", unit="episode")
    for task in tasks:
        instruction = captions.instruction(task, variant=0, split="train")

        def act(obs: dict[str, Any], caption: str, instruction: str = instruction) -> np.ndarray:
            return policy.act(obs["image"], obs["state"], instruction, caption)["actions"]

        row: dict[str, float] = {}
        for who, fn in (("policy", act), ("expert", None))[: 2 if include_expert else 1]:
            outcomes = []
            for ep in range(episodes_per_task):
                env = MetaWorldTask(task, seed=EVAL_SEED_OFFSET + ep, image_size=image_size)
                try:
                    outcomes.append(run_episode(env, fn, task=task, max_steps=max_steps,
                                                replan_every=replan_every))
                finally:
                    env.close()
                pbar.update(1)
            row[f"{who}_success"] = float(np.mean([o["success"] for o in outcomes]))
            row[f"{who}_steps"] = float(np.mean([o["steps"] for o in outcomes]))
        results[task] = row
    pbar.close()
    return results


def results_markdown(results: dict[str, dict[str, float]]) -> str:
    """Per-task table of policy vs expert success and episode lengths."""
    lines = ["| task | policy success | expert success | policy steps | expert steps |",
             "|---|---|---|---|---|"]
    for task, row in results.items():
        lines.append(f"| {task} | {row['policy_success']:.0%} | "
                     f"{row.get('expert_success', float('nan')):.0%} | "
                     f"{row['policy_steps']:.0f} | {row.get('expert_steps', float('nan')):.0f} |")
    return "\n".join(lines)
