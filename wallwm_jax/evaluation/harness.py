"""One closed-loop episode in MetaWorld, with what each mode may know enforced by the env.

`GuardedEnv` hides the simulator's privileged phase and expert unless the run declared it
may read them (the expert itself, or event mode with the `oracle` planner); reading them
otherwise raises `PrivilegedAccessError`, so a mode cannot cheat without the test noticing.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from wallwm_jax.data import captions
from wallwm_jax.evaluation.suites import Suite


class PrivilegedAccessError(RuntimeError):
    """A mode that must not see privileged simulator state tried to read it."""


class GuardedEnv:
    """A MetaWorld task whose privileged reads (phase, expert action) are allowed or not."""

    def __init__(self, env: Any, *, privileged: bool):
        self._env = env
        self.privileged = privileged

    def reset(self) -> dict[str, np.ndarray]:
        return self._env.reset()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        return self._env.step(action)

    def _check(self, what: str) -> None:
        if not self.privileged:
            raise PrivilegedAccessError(f"{what} is privileged simulator state; this run "
                                        "declared it does not read it")

    def phase(self) -> str:
        self._check("the expert's phase")
        return self._env.phase()

    def expert_action(self) -> np.ndarray:
        self._check("the scripted expert's action")
        return self._env.expert_action()

    @property
    def render_images(self) -> bool:
        return self._env.render_images

    @render_images.setter
    def render_images(self, value: bool) -> None:
        self._env.render_images = value

    def close(self) -> None:
        self._env.close()


@dataclasses.dataclass(frozen=True)
class Wording:
    """Which paraphrase an episode uses for its instruction and event descriptions."""

    split: str  # "train" | "heldout"
    variant: int
    instruction_override: str | None = None
    # The paraphrase record stored with a dataset (paraphrases.json: task -> split ->
    # {"instruction": [...], "captions": {phase: [...]}}); None = the caption templates.
    record: dict | None = None

    def _recorded(self, task: str) -> dict | None:
        if self.record is None or task not in self.record:
            return None
        return self.record[task][self.split]

    def instruction(self, task: str) -> str:
        if self.instruction_override is not None:
            return self.instruction_override
        rec = self._recorded(task)
        if rec is not None:
            return rec["instruction"][self.variant % len(rec["instruction"])]
        return captions.instruction(task, variant=self.variant, split=self.split)

    def caption(self, task: str, phase: str) -> str:
        rec = self._recorded(task)
        if rec is not None and phase in rec["captions"]:
            options = rec["captions"][phase]
            return options[self.variant % len(options)]
        return captions.template_caption(task, phase, variant=self.variant, split=self.split)


class OraclePlanner:
    """Event descriptions from the scripted expert's current phase (privileged state)."""

    name = "oracle"
    privileged = True

    def __call__(self, env: GuardedEnv, task: str, wording: Wording) -> str:
        return wording.caption(task, env.phase())


PLANNERS: dict[str, Callable[[], Any]] = {"oracle": OraclePlanner}

# What a run may read that a deployed robot would not know, as results.json records it.
PRIVILEGED_INPUTS: dict[str, str] = {
    "simulator": "the whole simulator state (the scripted expert)",
    "phase": "the scripted expert's phase (oracle planner)",
    "object_goal_state": "object and goal positions in the state vector",
}


def privileged_inputs(mode: str, planner: str | None, privileged_state: bool) -> list[str]:
    """The privileged inputs (PRIVILEGED_INPUTS keys) a run in `mode` reads: the phase via a
    privileged planner in event mode, object/goal positions via a privileged state vector."""
    if mode == "expert":
        return ["simulator"]
    out = []
    if mode == "event" and planner is not None and PLANNERS[planner].privileged:
        out.append("phase")
    if privileged_state:
        out.append("object_goal_state")
    return out


def describe_privileged(inputs: list[str] | None) -> str:
    """One phrase for a results header; None (results written before this was recorded)
    says so rather than guessing."""
    if inputs is None:
        return "not recorded"
    return " + ".join(PRIVILEGED_INPUTS[i] for i in inputs) or "none"


@dataclasses.dataclass
class Recorder:
    """Frames, captions and world-head predictions of an episode, kept for pictures."""

    frames: list[np.ndarray] = dataclasses.field(default_factory=list)
    frame_captions: list[str] = dataclasses.field(default_factory=list)
    world: list[tuple[np.ndarray, int]] = dataclasses.field(default_factory=list)

    def frame(self, obs: dict[str, np.ndarray], caption: str) -> None:
        if "image" in obs:
            self.frames.append(obs["image"])
            self.frame_captions.append(caption)


def run_episode(env: GuardedEnv, actor: Any, *, task: str, suite: Suite, mode: str,
                wording: Wording, planner: Any | None, execute_steps: int | None,
                recorder: Recorder | None = None) -> dict[str, Any]:
    """Run one episode; returns {success, steps, captions, chunk_lengths[, error]}.

    `actor` is None for the scripted expert, else a Policy. Event mode asks `planner` for the
    next event's description at every step and replans when it changes or the chunk is spent;
    chunk and unified modes replan only when their chunk (or `execute_steps`) is spent.
    A crash is caught and returned as `error` (traceback tail); the episode counts as failed.
    """
    record: dict[str, Any] = {"success": False, "steps": 0, "captions": [],
                              "chunk_lengths": []}
    try:
        obs = env.reset()
        instruction = wording.instruction(task)
        caption = ""
        if recorder is not None:
            recorder.frame(obs, instruction)
        while record["steps"] < suite.episode_limit and not record["success"]:
            if actor is None:
                obs, success = env.step(env.expert_action())
                record["steps"] += 1
                record["success"] = bool(success)
                if recorder is not None:
                    recorder.frame(obs, "expert: " + wording.caption(task, env.phase()))
                continue
            if mode == "event":
                caption = planner(env, task, wording)
                out = actor.act(_images(obs), obs["state"], instruction, caption, mode=mode)
                record["captions"].append(caption)
            else:
                out = actor.act(_images(obs), obs["state"], instruction, mode=mode)
                decoded = out.get("captions", [])
                caption = " | ".join(decoded)
                if mode == "unified":
                    record["captions"].append(decoded)
            chunk = out["actions"]
            if execute_steps:
                chunk = out["chunk"][:execute_steps] if mode != "event" else chunk[:execute_steps]
            record["chunk_lengths"].append(int(len(chunk)))
            start = record["steps"]
            for action in chunk:
                action = actor.env_action(action, obs["state"])  # targets -> actions here
                obs, success = env.step(np.clip(action, -1.0, 1.0))
                record["steps"] += 1
                record["success"] = bool(success)
                if recorder is not None:
                    recorder.frame(obs, caption)
                if success or record["steps"] >= suite.episode_limit:
                    break
                if mode == "event" and planner(env, task, wording) != caption:
                    break  # the planner moved on to the next event
            if recorder is not None and mode != "chunk":
                # The world head predicts the frame at the end of the current event: the end
                # of the executed chunk in event mode, the first decoded event's predicted end
                # (within what was executed) in unified mode.
                done = record["steps"] - start
                predicted = (out.get("event_steps") or [done])[0] if mode == "unified" else done
                recorder.world.append((out["world"], start + min(done, int(predicted))))
    except Exception:  # noqa: BLE001  (one crashing episode must not end the run)
        record["error"] = "".join(traceback.format_exc().splitlines(True)[-12:])
        record["success"] = False
    return record


def _images(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in obs.items() if k.startswith("image")}
