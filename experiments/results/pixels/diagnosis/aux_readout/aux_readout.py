"""Closed loop driven by the auxiliary action head's read-out instead of the flow sampler
(issue 28 §2 diagnostic; dev scenes only).

A policy trained with `model.aux_action_weight` > 0 has two read-outs of the first action
from the same image tokens: the flow-matching action expert (what the policy runs) and the
auxiliary head (a linear map over the image tokens as they enter the backbone, plus the
state; a training aid that inference never calls). Acting with each on the same dev scenes
says where the pixel policy's failure is: if the head's actions succeed where the flow's do
not, the tokens carry what the task needs and the action expert does not read it out.

    python experiments/results/pixels/diagnosis/aux_readout/aux_readout.py RUN/checkpoints \\
        --workdir OUT --tasks reach-v3,push-v3 --episodes_per_task 20 [--readout blind]

`--readout blind` is the control: the policy's own flow read-out, but shown one fixed frame
of another scene for the whole episode (per task, the first frame of the run's first
episode; that episode itself sees its own first frame throughout), with its true state. A
policy that reads the scene does worse blind; one that acts from the state alone does not.
`--readout aux_blind`: the auxiliary head's read-out shown those fixed frames.

The head predicts `model.aux_action_steps` actions (1 in the aux_head arms), so the policy
replans after each of them (as many frames rendered as steps).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import jax
import numpy as np

from wallwm_jax.evaluation import suites
from wallwm_jax.evaluation.runner import PolicySpec, evaluate_suite, load_actor
from wallwm_jax.models.wallwm import WallWM, aux_action_enabled


class AuxReadout:
    """A Policy whose actions are its auxiliary head's (deterministic) first action(s)."""

    def __init__(self, policy: Any):
        if not aux_action_enabled(policy.model_config):
            raise ValueError("the policy has no auxiliary action head (model.aux_action_weight"
                             " = 0)")
        self.policy = policy
        cfg = policy.model_config

        def readout(module: WallWM, obs: Any) -> jax.Array:
            x_vlm, _, n_img = module.embed_vlm(obs)
            return module.aux_actions(x_vlm[:, :n_img], obs)

        self._readout = jax.jit(lambda params, obs: WallWM(cfg).apply(
            {"params": params}, obs, method=readout))

    def act(self, image: Any, state: np.ndarray, instruction: str, caption: str | None = None,
            **kwargs: Any) -> dict[str, Any]:
        obs = self.policy.observation(image, state, instruction, caption,
                                      mode=kwargs.get("mode"))
        chunk = self.policy.io.actions(np.asarray(self._readout(self.policy.params, obs))[0])
        return {"actions": chunk, "chunk": chunk}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)


class SceneBlind:
    """The policy, shown per task one fixed frame (the first it was given in this run)."""

    def __init__(self, policy: Any):
        self.policy = policy
        self._frames: dict[str, Any] = {}

    def act(self, image: Any, state: np.ndarray, instruction: str, *args: Any,
            **kwargs: Any) -> dict[str, Any]:
        frames = self._frames.setdefault(instruction, {
            k: np.array(v) for k, v in self.policy.frames(image).items()})
        return self.policy.act(frames, state, instruction, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="checkpoint directory or export of an aux-head policy")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--suite", default="mt10_seen")
    parser.add_argument("--tasks", default="reach-v3,push-v3")
    parser.add_argument("--episodes_per_task", type=int, default=20)
    parser.add_argument("--readout", choices=("aux", "blind", "aux_blind"), default="aux")
    parser.add_argument("--execute_steps", type=int, default=None,
                        help="steps of each chunk executed (the flow read-out's; the aux head's "
                        "chunk is model.aux_action_steps long)")
    args = parser.parse_args()
    spec = PolicySpec(args.policy, execute_steps=args.execute_steps)
    policy = load_actor(spec)
    actor = {"aux": lambda: AuxReadout(policy), "blind": lambda: SceneBlind(policy),
             "aux_blind": lambda: SceneBlind(AuxReadout(policy))}[args.readout]()
    suite = suites.get(args.suite).subset(tuple(args.tasks.split(",")), args.episodes_per_task)
    results = evaluate_suite(spec, suite, args.workdir, actor=actor, split="dev")
    print(json.dumps({"readout": args.readout, "summary": results["summary"]}))
    with open(os.path.join(args.workdir, "readout.json"), "w") as f:
        json.dump({"readout": args.readout, "policy": args.policy,
                   "execute_steps": args.execute_steps}, f)


if __name__ == "__main__":
    main()
