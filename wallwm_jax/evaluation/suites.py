"""Closed-loop evaluation suites: which MetaWorld tasks, scenes, wordings and observation
protocol each generalisation question is asked with (scene, language, task, LeRobot MT50).

Scene rule (`scene_seeds`): every suite has a `dev` split (for tuning: anything chosen by
looking at success) and a `test` split (every reported figure). Dataset builds draw episode
seeds from a 32-bit digest (< 2**32, `data_builders.metaworld_events.episode_seed`); dev
scenes lie in [2**32, 2**33) and test scenes in [2**33, 2**34), so no dev scene of any suite
is a test scene of any suite, and no evaluation scene is a training scene, whatever seed a
dataset was built with.
"""

from __future__ import annotations

import dataclasses
import hashlib

from wallwm_jax.data.tasks import DEMO_TASKS, MT10_TASKS, MT50_TASKS

TRAIN_SEED_LIMIT = 2**32  # every dataset-build seed is below this
# Split -> first seed of its range; each range is 2**32 wide (a 32-bit digest on top).
SPLIT_SEED_BASE: dict[str, int] = {"dev": 2**32, "test": 2**33}
SPLITS = tuple(SPLIT_SEED_BASE)

# LeRobot's MetaWorld evaluation protocol (lerobot.envs.metaworld): difficulty groups,
# task descriptions used as the instruction, episode limit = the env's max_path_length.
LEROBOT_GROUPS: dict[str, tuple[str, ...]] = {
    "easy": (
        "button-press-v3", "button-press-topdown-v3", "button-press-topdown-wall-v3",
        "button-press-wall-v3", "coffee-button-v3", "dial-turn-v3", "door-close-v3",
        "door-lock-v3", "door-open-v3", "door-unlock-v3", "drawer-close-v3", "drawer-open-v3",
        "faucet-close-v3", "faucet-open-v3", "handle-press-v3", "handle-press-side-v3",
        "handle-pull-v3", "handle-pull-side-v3", "lever-pull-v3", "plate-slide-v3",
        "plate-slide-back-v3", "plate-slide-back-side-v3", "plate-slide-side-v3", "reach-v3",
        "reach-wall-v3", "window-close-v3", "window-open-v3", "peg-unplug-side-v3",
    ),
    "medium": (
        "basketball-v3", "bin-picking-v3", "box-close-v3", "coffee-pull-v3", "coffee-push-v3",
        "hammer-v3", "peg-insert-side-v3", "push-wall-v3", "soccer-v3", "sweep-v3",
        "sweep-into-v3",
    ),
    "hard": ("assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3",
             "push-back-v3"),
    "very_hard": ("shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3",
                  "pick-place-wall-v3"),
}
LEROBOT_DESCRIPTIONS: dict[str, str] = {
    "assembly-v3": "Pick up a nut and place it onto a peg",
    "basketball-v3": "Dunk the basketball into the basket",
    "bin-picking-v3": "Grasp the puck from one bin and place it into another bin",
    "box-close-v3": "Grasp the cover and close the box with it",
    "button-press-topdown-v3": "Press a button from the top",
    "button-press-topdown-wall-v3": "Bypass a wall and press a button from the top",
    "button-press-v3": "Press a button",
    "button-press-wall-v3": "Bypass a wall and press a button",
    "coffee-button-v3": "Push a button on the coffee machine",
    "coffee-pull-v3": "Pull a mug from a coffee machine",
    "coffee-push-v3": "Push a mug under a coffee machine",
    "dial-turn-v3": "Rotate a dial 180 degrees",
    "disassemble-v3": "Pick a nut out of a peg",
    "door-close-v3": "Close a door with a revolving joint",
    "door-lock-v3": "Lock the door by rotating the lock clockwise",
    "door-open-v3": "Open a door with a revolving joint",
    "door-unlock-v3": "Unlock the door by rotating the lock counter-clockwise",
    "hand-insert-v3": "Insert the gripper into a hole",
    "drawer-close-v3": "Push and close a drawer",
    "drawer-open-v3": "Open a drawer",
    "faucet-open-v3": "Rotate the faucet counter-clockwise",
    "faucet-close-v3": "Rotate the faucet clockwise",
    "hammer-v3": "Hammer a screw on the wall",
    "handle-press-side-v3": "Press a handle down sideways",
    "handle-press-v3": "Press a handle down",
    "handle-pull-side-v3": "Pull a handle up sideways",
    "handle-pull-v3": "Pull a handle up",
    "lever-pull-v3": "Pull a lever down 90 degrees",
    "peg-insert-side-v3": "Insert a peg sideways",
    "pick-place-wall-v3": "Pick a puck, bypass a wall and place the puck",
    "pick-out-of-hole-v3": "Pick up a puck from a hole",
    "reach-v3": "Reach a goal position",
    "push-back-v3": "Push the puck to a goal",
    "push-v3": "Push the puck to a goal",
    "pick-place-v3": "Pick and place a puck to a goal",
    "plate-slide-v3": "Slide a plate into a cabinet",
    "plate-slide-side-v3": "Slide a plate into a cabinet sideways",
    "plate-slide-back-v3": "Get a plate from the cabinet",
    "plate-slide-back-side-v3": "Get a plate from the cabinet sideways",
    "peg-unplug-side-v3": "Unplug a peg sideways",
    "soccer-v3": "Kick a soccer into the goal",
    "stick-push-v3": "Grasp a stick and push a box using the stick",
    "stick-pull-v3": "Grasp a stick and pull a box with the stick",
    "push-wall-v3": "Bypass a wall and push a puck to a goal",
    "reach-wall-v3": "Bypass a wall and reach a goal",
    "shelf-place-v3": "Pick and place a puck onto a shelf",
    "sweep-into-v3": "Sweep a puck into a hole",
    "sweep-v3": "Sweep a puck off the table",
    "window-open-v3": "Push and open a window",
    "window-close-v3": "Push and close a window",
}
METAWORLD_EPISODE_LIMIT = 500  # MetaWorld v3's max_path_length


@dataclasses.dataclass(frozen=True)
class Suite:
    """One evaluation suite: tasks in groups, episodes, wording and observation protocol.

    `wording` is the paraphrase split instructions and event descriptions come from
    ("train" or "heldout"); `instructions` overrides the instruction per task (LeRobot's task
    descriptions). `camera_setup` is "ours" (the dataset builder's corner2 view) or "lerobot"
    (corner2 moved and flipped as LeRobot's MetaWorld env does). `image_size` None = the
    policy's own input size. `scenes` names the scene set the suite draws from (default:
    its own name); a suite that asks another question of the same scenes shares them.
    """

    name: str
    description: str
    groups: dict[str, tuple[str, ...]]
    episodes_per_task: int
    episode_limit: int
    wording: str = "train"
    instructions: dict[str, str] = dataclasses.field(default_factory=dict)
    camera: str = "corner2"
    camera_setup: str = "ours"
    image_size: int | None = None
    state_dims: int = 4
    question: str = ""
    differences: tuple[str, ...] = ()
    scenes: str = ""

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task of the suite, group by group, in order."""
        return tuple(t for group in self.groups.values() for t in group)

    def group_of(self, task: str) -> str:
        """The group `task` belongs to."""
        for group, tasks in self.groups.items():
            if task in tasks:
                return group
        raise KeyError(task)

    @property
    def scene_set(self) -> str:
        """The name of the scene set the suite's seeds are drawn from."""
        return self.scenes or self.name

    def protocol(self) -> dict:
        """The observation protocol, as recorded with every result."""
        return {"camera": self.camera, "camera_setup": self.camera_setup,
                "image_size": self.image_size, "state_dims": self.state_dims,
                "episode_limit": self.episode_limit, "wording": self.wording,
                "episodes_per_task": self.episodes_per_task}

    def subset(self, tasks: tuple[str, ...] | None, episodes_per_task: int | None) -> Suite:
        """The same suite restricted to `tasks` (kept in suite order) and/or episodes."""
        groups = self.groups
        if tasks:
            unknown = [t for t in tasks if t not in self.tasks]
            if unknown:
                raise ValueError(f"task(s) {unknown} are not in suite {self.name!r}; its tasks: "
                                 f"{', '.join(self.tasks)}")
            groups = {g: tuple(t for t in ts if t in tasks) for g, ts in groups.items()}
            groups = {g: ts for g, ts in groups.items() if ts}
        episodes = self.episodes_per_task if episodes_per_task is None else episodes_per_task
        if episodes < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {episodes}")
        return dataclasses.replace(self, groups=groups, episodes_per_task=episodes)


def check_split(split: str) -> str:
    """`split` when it is a scene split; the error lists the valid ones."""
    if split not in SPLIT_SEED_BASE:
        raise ValueError(f"unknown scene split {split!r}; splits: {', '.join(SPLITS)} (dev for "
                         "tuning, test for reported figures)")
    return split


def scene_seeds(suite: str | Suite, task: str, split: str, n: int) -> list[int]:
    """Scene seeds of episodes 0..n-1 of `task` in `suite`'s `split` (dev or test).

    SPLIT_SEED_BASE[split] + a 32-bit digest of (split, scene set, task, episode): dev and
    test ranges are disjoint from each other and from every dataset seed (< 2**32), and
    episode i's seed does not depend on n.
    """
    suite = get(suite) if isinstance(suite, str) else suite
    check_split(split)
    if task not in suite.tasks:
        raise ValueError(f"task {task!r} is not in suite {suite.name!r}; its tasks: "
                         f"{', '.join(suite.tasks)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base = SPLIT_SEED_BASE[split]
    return [base + int.from_bytes(hashlib.sha1(
                f"{split}/{suite.scene_set}/{task}/{i}".encode()).digest()[:4], "little")
            for i in range(n)]


_HELDOUT_TASKS = tuple(t for t in MT50_TASKS if t not in MT10_TASKS)
_OURS = "the dataset builder's corner2 view (upright)"

_SUITES: dict[str, Suite] = {
    "mt10_seen": Suite(
        name="mt10_seen", description="MT10 tasks at object/goal positions no dataset uses",
        groups={"mt10": MT10_TASKS}, episodes_per_task=10, episode_limit=200,
        question="scene generalisation"),
    "mt10_paraphrase": Suite(
        name="mt10_paraphrase",
        description="mt10_seen's episodes, instructions and event descriptions only from the "
                    "held-out paraphrases",
        groups={"mt10": MT10_TASKS}, episodes_per_task=10, episode_limit=200,
        wording="heldout", question="language generalisation", scenes="mt10_seen"),
    "mt50_heldout": Suite(
        name="mt50_heldout", description="the 40 MT50 tasks outside MT10 (never in an MT10 "
                                         "training set)",
        groups={"mt50_not_mt10": _HELDOUT_TASKS}, episodes_per_task=10, episode_limit=200,
        question="task generalisation"),
    "mt50_lerobot": Suite(
        name="mt50_lerobot",
        description="LeRobot's MetaWorld MT50 protocol: difficulty groups, 10 episodes per "
                    "task, corner2 as LeRobot places and flips it, 4-D agent state, task "
                    "descriptions as instructions, the env's 500-step limit",
        groups=LEROBOT_GROUPS, episodes_per_task=10, episode_limit=METAWORLD_EPISODE_LIMIT,
        instructions=LEROBOT_DESCRIPTIONS, camera_setup="lerobot",
        question="comparison with published MT50 numbers",
        differences=(
            "images are rendered at the policy's input size, not LeRobot's 480x480",
            "scenes come from our evaluation seeds (dev or test split, >= 2**32), not "
            "LeRobot's reset seeds",
        )),
    "demo": Suite(
        name="demo", description="the demo's tasks at unseen positions",
        groups={"demo": DEMO_TASKS}, episodes_per_task=10, episode_limit=150,
        question="does the demo policy act"),
}


def names() -> tuple[str, ...]:
    """Names of every suite."""
    return tuple(_SUITES)


def get(name: str) -> Suite:
    """The suite called `name`; the error lists the valid names."""
    if name not in _SUITES:
        raise ValueError(f"unknown suite {name!r}; valid suites: {', '.join(_SUITES)}")
    return _SUITES[name]


def observation_note(suite: Suite) -> str:
    """One line saying which camera view the suite renders."""
    if suite.camera_setup == "lerobot":
        return "corner2 at LeRobot's position (0.75, 0.075, 0.7), flipped on both axes"
    return _OURS
