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
from wallwm_jax.data.tasks import TASK_OBJECTS
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

    def observe(self) -> dict[str, np.ndarray]:
        return self._env.observe()

    def _check(self, what: str) -> None:
        if not self.privileged:
            raise PrivilegedAccessError(f"{what} is privileged simulator state; this run "
                                        "declared it does not read it")

    def phase(self) -> str:
        self._check("the expert's phase")
        return self._env.phase()

    def scored_phase(self) -> str:
        """The phase for scoring a run (caption and boundary accuracy) after the fact, never
        for the policy: the harness reads it only into the episode's record."""
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

    def phase_captions(self, task: str, phase: str) -> list[str]:
        """Every wording of `phase` a decoded caption may match: the train paraphrases (what
        the model learnt) and this wording's split; [] for a phase without captions."""
        out: list[str] = []
        for split in dict.fromkeys(("train", self.split)):
            other = dataclasses.replace(self, split=split)
            for variant in range(captions.num_variants(split)):
                other = dataclasses.replace(other, variant=variant)
                try:
                    text = other.caption(task, phase)
                except ValueError:  # e.g. the hold phase after success has no caption
                    return []
                if text not in out:
                    out.append(text)
        return out


class OraclePlanner:
    """Event descriptions from the scripted expert's current phase (privileged state)."""

    name = "oracle"
    privileged = True

    def __call__(self, env: GuardedEnv, task: str, wording: Wording) -> str:
        return wording.caption(task, env.phase())


class ConstantPlanner:
    """The first event's caption (the phase at the episode's first step) for the whole
    episode: does the policy need the caption to change? Reads the phase once."""

    name = "constant"
    privileged = True

    def __init__(self) -> None:
        self._caption: str | None = None  # one planner per episode (the runner's rule)

    def __call__(self, env: GuardedEnv, task: str, wording: Wording) -> str:
        if self._caption is None:
            self._caption = wording.caption(task, env.phase())
        return self._caption


class BlankPlanner:
    """An empty caption every step: what the policy does with no event description."""

    name = "blank"
    privileged = False

    def __call__(self, env: GuardedEnv, task: str, wording: Wording) -> str:
        return ""


def other_task(task: str) -> str:
    """The task whose wording `wrong_task` borrows: the next one (in name order, wrapping)
    whose object and target names both differ from `task`'s."""
    names = sorted(TASK_OBJECTS)
    objects = TASK_OBJECTS[task]
    start = names.index(task) if task in names else -1
    for other in names[start + 1:] + names[:start + 1]:
        theirs = TASK_OBJECTS[other]
        if theirs[0] != objects[0] and theirs[1] != objects[1]:
            return other
    raise ValueError(f"no task words its objects differently from {task!r}")


class WrongTaskPlanner:
    """The current phase worded as another task words it (`other_task`): the right event,
    the wrong objects. Reads the phase."""

    name = "wrong_task"
    privileged = True

    def __call__(self, env: GuardedEnv, task: str, wording: Wording) -> str:
        return wording.caption(other_task(task), env.phase())


PLANNERS: dict[str, Callable[[], Any]] = {
    p.name: p for p in (OraclePlanner, ConstantPlanner, BlankPlanner, WrongTaskPlanner)}

# What a run may read that a deployed robot would not know, as results.json records it.
PRIVILEGED_INPUTS: dict[str, str] = {
    "simulator": "the whole simulator state (the scripted expert)",
    "phase": "the scripted expert's phase (oracle planner)",
    "object_goal_state": "object and goal positions in the state vector",
}


def privileged_inputs(mode: str, planner: str | None, privileged_state: bool) -> list[str]:
    """The privileged inputs (PRIVILEGED_INPUTS keys) a run in `mode` reads: the phase via a
    planner that reads it (event mode, or unified mode's caption control), object/goal
    positions via a privileged state vector."""
    if mode == "expert":
        return ["simulator"]
    out = []
    if mode in ("event", "unified") and planner is not None and PLANNERS[planner].privileged:
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
    """Run one episode; returns {success, steps, captions, chunk_lengths[, replans,
    caption_scores][, error]}.

    `actor` is None for the scripted expert, else a Policy. Event mode asks `planner` for the
    next event's description at every step and replans when it changes or the chunk is spent;
    chunk mode replans when its chunk (or `execute_steps`) is spent. Unified mode executes
    what the model predicts: the chunk up to the predicted end of its last decoded event,
    capped by `execute_steps`; the caption of an event predicted to go on stays in effect
    (given back as caption 0) until the model predicts its end. With a `planner` (the
    oracle-captions control) the planner's caption is caption 0 instead, as in event mode.
    Unified replans are scored against the scripted phase (`replans`, `caption_scores`).
    A crash is caught and returned as `error` (traceback tail); the episode counts as failed.
    """
    record: dict[str, Any] = {"success": False, "steps": 0, "captions": [],
                              "chunk_lengths": []}
    if mode == "unified":
        record["replans"] = []
    try:
        obs = env.reset()
        instruction = wording.instruction(task)
        caption, in_effect = "", None
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
            elif mode == "unified":
                given = planner(env, task, wording) if planner is not None else in_effect
                out = actor.act(_images(obs), obs["state"], instruction, mode=mode,
                                in_effect=given)
                decoded = out["captions"]
                caption = given if planner is not None else " | ".join(decoded)
                record["captions"].append(decoded)
                replan = _score_replan(env, task, wording, actor, out, given)
            else:
                out = actor.act(_images(obs), obs["state"], instruction, mode=mode)
            chunk = out["actions"]
            if execute_steps:
                chunk = out["chunk"][:execute_steps] if mode == "chunk" else chunk[:execute_steps]
            record["chunk_lengths"].append(int(len(chunk)))
            start = record["steps"]
            # Frames only where the policy looks (each step when recording): the chunk's
            # steps run without rendering, and the frame of the state it ends in is rendered
            # after it (`observe`), the same frame `step` would have rendered.
            env.render_images = recorder is not None
            for action in chunk:
                action = actor.env_action(action, obs["state"])  # targets -> actions here
                obs, success = env.step(np.clip(action, -1.0, 1.0))
                record["steps"] += 1
                record["success"] = bool(success)
                if recorder is not None:
                    recorder.frame(obs, caption)
                if mode == "unified" and replan.get("phase") is not None \
                        and replan["phase_end"] is None \
                        and env.scored_phase() != replan["phase"]:
                    replan["phase_end"] = record["steps"] - start
                if success or record["steps"] >= suite.episode_limit:
                    break
                if planner is not None and planner(env, task, wording) != caption:
                    break  # the planner moved on to the next event
            env.render_images = True
            if recorder is None and not record["success"] \
                    and record["steps"] < suite.episode_limit:
                obs = env.observe()  # the policy acts on it next
            done = record["steps"] - start
            if mode == "unified":
                if planner is None:  # the model's own memory: the event it predicts goes on
                    in_effect = actor.caption_in_effect(list(out["caption_ids"]),
                                                        out["event_steps"], done)
                replan.update(executed=done, in_effect_after=None if in_effect is None
                              else actor.tokenizer.decode(in_effect))
                if done == len(chunk) and replan.get("phase") is not None:
                    # Did the model place the end of its current event where the phase ended?
                    replan["boundary_ok"] = bool(
                        (out["event_steps"][0] <= done) == (replan["phase_end"] is not None))
                record["replans"].append(replan)
            if recorder is not None and mode != "chunk":
                # The world head predicts the frame at the end of the current event: the end
                # of the executed chunk in event mode, the first decoded event's predicted end
                # (within what was executed) in unified mode.
                predicted = (out.get("event_steps") or [done])[0] if mode == "unified" else done
                recorder.world.append((out["world"], start + min(done, int(predicted))))
    except Exception:  # noqa: BLE001  (one crashing episode must not end the run)
        record["error"] = "".join(traceback.format_exc().splitlines(True)[-12:])
        record["success"] = False
    if mode == "unified":
        from wallwm_jax.evaluation.caption_metrics import closed_loop_scores

        record["caption_scores"] = closed_loop_scores(record["replans"])
    return record


def _score_replan(env: GuardedEnv, task: str, wording: Wording, actor: Any,
                  out: dict[str, Any], given: str | None) -> dict[str, Any]:
    """One unified replan's record: its first caption (the current event's), whether it was
    given, its predicted remaining steps, and that caption scored against the wordings of
    the scripted phase (read for scoring only; the policy never sees it)."""
    phase = env.scored_phase()
    replan: dict[str, Any] = {"caption": out["captions"][0], "given": given is not None,
                              "event_steps": [int(x) for x in out["event_steps"]],
                              "predicted": int(len(out["actions"])), "phase": None,
                              "phase_end": None}
    wordings = wording.phase_captions(task, phase)
    if not wordings:
        return replan  # no caption for this phase (the hold after success): not scored
    length = out["caption_ids"].shape[1]
    truth = [actor.tokenizer.encode(text, length) for text in wordings]
    from wallwm_jax.evaluation.caption_metrics import best_match

    replan.update(phase=phase, **best_match(out["caption_ids"][0], truth))
    return replan


def _images(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in obs.items() if k.startswith("image")}
