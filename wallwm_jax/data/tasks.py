"""The MetaWorld task vocabulary: task sets, the object/target words of each task, and the
layout of the state vector (agent state, or with privileged simulator state).

Plain data without import side effects, so captions, suites and tokenizers can name tasks
without importing the simulator (`wallwm_jax.envs.metaworld` re-exports these).
"""

from __future__ import annotations

import numpy as np

DEMO_TASKS = ("reach-v3", "push-v3", "button-press-topdown-v3")
MT10_TASKS = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3",
    "drawer-close-v3", "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3",
    "window-close-v3",
)
# task -> (object, target) as they are named in captions and instructions.
TASK_OBJECTS: dict[str, tuple[str, str]] = {
    "reach-v3": ("goal point", "goal point"),
    "push-v3": ("puck", "goal"),
    "pick-place-v3": ("puck", "goal"),
    "door-open-v3": ("door handle", "door"),
    "drawer-open-v3": ("drawer handle", "drawer"),
    "drawer-close-v3": ("drawer handle", "drawer"),
    "button-press-topdown-v3": ("button", "button"),
    "peg-insert-side-v3": ("peg", "hole"),
    "window-open-v3": ("window handle", "window"),
    "window-close-v3": ("window handle", "window"),
}
# The other 40 tasks of MT50: (object, target, grasps first?, phase once at the object, what
# the whole task is). Their phases come from privileged positions by a generic rule (below).
MT50_EXTRA: dict[str, tuple[str, str, bool, str, str]] = {
    "assembly-v3": ("ring", "peg", True, "transport", "put the ring onto the peg"),
    "basketball-v3": ("ball", "hoop", True, "transport", "dunk the ball into the hoop"),
    "bin-picking-v3": ("cube", "bin", True, "transport", "move the cube into the other bin"),
    "box-close-v3": ("lid", "box", True, "transport", "put the lid on the box"),
    "button-press-topdown-wall-v3": ("button", "button", False, "press",
                                     "press the button from the top behind the wall"),
    "button-press-v3": ("button", "button", False, "press", "press the button"),
    "button-press-wall-v3": ("button", "button", False, "press",
                             "press the button behind the wall"),
    "coffee-button-v3": ("coffee button", "coffee machine", False, "press",
                         "push the button on the coffee machine"),
    "coffee-pull-v3": ("mug", "coffee machine", True, "pull", "pull the mug from the machine"),
    "coffee-push-v3": ("mug", "coffee machine", True, "push", "push the mug under the machine"),
    "dial-turn-v3": ("dial", "dial", False, "turn", "turn the dial"),
    "disassemble-v3": ("ring", "peg", True, "pull", "take the ring off the peg"),
    "door-close-v3": ("door", "door", False, "push", "close the door"),
    "door-lock-v3": ("lock", "door", False, "turn", "lock the door"),
    "door-unlock-v3": ("lock", "door", False, "turn", "unlock the door"),
    "faucet-close-v3": ("faucet handle", "faucet", False, "turn", "turn the faucet off"),
    "faucet-open-v3": ("faucet handle", "faucet", False, "turn", "turn the faucet on"),
    "hammer-v3": ("hammer", "nail", True, "transport", "hammer the nail in"),
    "hand-insert-v3": ("hole", "hole", False, "insert", "put the hand into the hole"),
    "handle-press-side-v3": ("handle", "handle", False, "press",
                             "press the handle down from the side"),
    "handle-press-v3": ("handle", "handle", False, "press", "press the handle down"),
    "handle-pull-side-v3": ("handle", "handle", False, "pull", "pull the handle up sideways"),
    "handle-pull-v3": ("handle", "handle", False, "pull", "pull the handle up"),
    "lever-pull-v3": ("lever", "lever", False, "pull", "pull the lever up"),
    "peg-unplug-side-v3": ("peg", "socket", True, "pull", "unplug the peg from the side"),
    "pick-out-of-hole-v3": ("peg", "goal", True, "transport", "pick the peg out of the hole"),
    "pick-place-wall-v3": ("puck", "goal", True, "transport",
                           "pick the puck over the wall and place it at the goal"),
    "plate-slide-back-side-v3": ("plate", "cabinet", False, "slide",
                                 "slide the plate back into the cabinet from the side"),
    "plate-slide-back-v3": ("plate", "cabinet", False, "slide",
                            "slide the plate back into the cabinet"),
    "plate-slide-side-v3": ("plate", "cabinet", False, "slide",
                            "slide the plate sideways into the cabinet"),
    "plate-slide-v3": ("plate", "cabinet", False, "slide", "slide the plate into the cabinet"),
    "push-back-v3": ("puck", "goal", False, "push", "push the puck back to the goal"),
    "push-wall-v3": ("puck", "goal", False, "push", "push the puck around the wall to the goal"),
    "reach-wall-v3": ("goal point", "goal point", False, "reach",
                      "reach the goal point behind the wall"),
    "shelf-place-v3": ("block", "shelf", True, "transport", "place the block on the shelf"),
    "soccer-v3": ("ball", "goal", False, "push", "kick the ball into the goal"),
    "stick-pull-v3": ("stick", "container", True, "pull", "pull the container with the stick"),
    "stick-push-v3": ("stick", "container", True, "push", "push the container with the stick"),
    "sweep-into-v3": ("puck", "hole", False, "push", "sweep the puck into the hole"),
    "sweep-v3": ("puck", "table edge", False, "push", "sweep the puck off the table"),
}
TASK_OBJECTS.update({task: (obj, target) for task, (obj, target, *_) in MT50_EXTRA.items()})
MT50_TASKS = tuple(sorted(TASK_OBJECTS))


# -- The MetaWorld state vector: the one definition of its layout -------------------------
# (name, start, stop) slices of MetaWorld's 39-D simulator observation. The 4-D agent state
# (hand xyz + gripper opening) is what a real robot reports and what LeRobot's MT50 protocol
# gives. "Privileged simulator state" appends the first object's position and the goal
# position, which only the simulator knows; a dataset built with `privileged_state=True`
# stores it (recorded in the dataset's STATE_LAYOUT_FILE), `config.data.privileged_state`
# says a model reads it, and the evaluator builds the environment to provide it.
AGENT_STATE: tuple[tuple[str, int, int], ...] = (("hand_xyz", 0, 3), ("gripper", 3, 4))
PRIVILEGED_STATE: tuple[tuple[str, int, int], ...] = AGENT_STATE + (
    ("object_xyz", 4, 7), ("goal_xyz", 36, 39))
STATE_LAYOUT_FILE = "state_layout.json"


def state_layout(privileged_state: bool) -> tuple[tuple[str, int, int], ...]:
    """(name, start, stop) slices of the simulator observation that make the state vector."""
    return PRIVILEGED_STATE if privileged_state else AGENT_STATE


def state_dim(privileged_state: bool) -> int:
    """Width of the state vector: 4 (agent state) or 10 (with privileged simulator state)."""
    return sum(stop - start for _, start, stop in state_layout(privileged_state))


def state_names(privileged_state: bool) -> list[str]:
    """Per-dimension names of the state vector, e.g. hand_xyz[0] ... goal_xyz[2]."""
    return [name if stop - start == 1 else f"{name}[{i}]"
            for name, start, stop in state_layout(privileged_state)
            for i in range(stop - start)]


def state_vector(sim_obs: np.ndarray, privileged_state: bool) -> np.ndarray:
    """MetaWorld's 39-D observation -> the float32 state vector of that layout."""
    sim_obs = np.asarray(sim_obs)
    return np.concatenate([sim_obs[start:stop] for _, start, stop in
                           state_layout(privileged_state)]).astype(np.float32)


def state_record(privileged_state: bool) -> dict:
    """What a dataset records about its state vector (STATE_LAYOUT_FILE)."""
    return {"privileged_state": bool(privileged_state), "state_dim": state_dim(privileged_state),
            "names": state_names(privileged_state),
            "source": "MetaWorld observation slices " + ", ".join(
                f"{n}=[{a}:{b}]" for n, a, b in state_layout(privileged_state))}
