"""Event captions and task instructions from templates, with train / held-out paraphrases.

Each paraphrase set is split once: the first `NUM_TRAIN` wordings are for training, the rest
are held out for the language-generalisation evaluation. A captioning model replaces the
templates where it is passed explicitly (`captioner=`, or a `CaptionSource`).
"""

from __future__ import annotations

from collections.abc import Callable

from wallwm_jax.data.tasks import MT50_EXTRA, TASK_OBJECTS

NUM_TRAIN = 4
SPLITS = ("train", "heldout")

# phase -> paraphrases over {obj} (what the hand acts on) and {target} (where it goes).
PHASE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "reach": (
        "move the gripper to the {obj}",
        "reach toward the {obj}",
        "bring the hand over to the {obj}",
        "approach the {obj}",
        "head over to the {obj} with the arm",
        "get the end effector close to the {obj}",
    ),
    "lower": (
        "lower the gripper onto the {obj}",
        "move down to the {obj}",
        "descend to the height of the {obj}",
        "drop the hand down to the {obj}",
        "come down next to the {obj}",
        "sink the end effector to the level of the {obj}",
    ),
    "grasp": (
        "grasp the {obj}",
        "close the gripper on the {obj}",
        "take hold of the {obj}",
        "grab the {obj}",
        "secure the {obj} between the fingers",
        "clamp the fingers around the {obj}",
    ),
    "push": (
        "push the {obj} to the {target}",
        "slide the {obj} toward the {target}",
        "shove the {obj} over to the {target}",
        "nudge the {obj} until it reaches the {target}",
        "drive the {obj} along the table to the {target}",
        "keep pushing so the {obj} ends up at the {target}",
    ),
    "pull": (
        "pull the {target} open",
        "drag the {obj} back to open the {target}",
        "tug the {obj} toward the robot",
        "draw the {target} open by its {obj}",
        "haul the {obj} backwards",
        "open the {target} by pulling on the {obj}",
    ),
    "press": (
        "press the {obj} down",
        "push down on the {obj}",
        "depress the {obj}",
        "hit the {obj} from above",
        "poke the {obj} downward",
        "bear down on the {obj} until it clicks",
    ),
    "transport": (
        "carry the {obj} to the {target}",
        "move the held {obj} over to the {target}",
        "bring the {obj} to the {target}",
        "transport the {obj} to the {target}",
        "ferry the {obj} across to the {target}",
        "convey the grasped {obj} toward the {target}",
    ),
    "insert": (
        "insert the {obj} into the {target}",
        "slide the {obj} into the {target}",
        "put the {obj} into the {target}",
        "push the {obj} home in the {target}",
        "fit the {obj} inside the {target}",
        "thread the {obj} through the {target}",
    ),
    "slide": (
        "slide the {target} sideways with its {obj}",
        "move the {obj} along its rail",
        "sweep the {obj} across to shift the {target}",
        "push the {obj} horizontally",
        "glide the {target} along by its {obj}",
        "shift the {obj} to the side",
    ),
    "turn": (
        "turn the {obj}",
        "rotate the {obj} around",
        "twist the {obj} on the {target}",
        "give the {obj} a turn",
        "swing the {obj} round on its axis",
        "crank the {obj} until it stops",
    ),
    "hold": (
        "hold still, the task is done",
        "stay in place",
        "keep the arm steady",
        "remain where you are",
        "pause without moving",
        "wait motionless now that the goal is met",
    ),
}

# task -> paraphrased instructions for the whole episode.
INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "reach-v3": (
        "reach the goal point", "move the gripper to the target location",
        "bring the hand to the goal position", "touch the marked point in space",
        "go to the goal spot with the end effector", "position the arm at the indicated target",
    ),
    "push-v3": (
        "push the puck to the goal", "slide the puck onto the target",
        "move the puck to the goal by pushing it", "shove the puck to the marked spot",
        "nudge the puck along the table until it sits on the goal",
        "get the puck to the target without lifting it",
    ),
    "pick-place-v3": (
        "pick up the puck and place it at the goal", "put the puck on the target",
        "grab the puck and move it to the goal", "lift the puck and set it at the goal position",
        "relocate the puck to the marked spot by carrying it",
        "take the puck over to the target and release it there",
    ),
    "door-open-v3": (
        "open the door", "pull the door open", "swing the door open by its handle",
        "open up the door", "grab the door handle and swing it open",
        "get the door wide open",
    ),
    "drawer-open-v3": (
        "open the drawer", "pull the drawer out", "slide the drawer open",
        "pull out the drawer by its handle", "draw the drawer toward you",
        "get the drawer open",
    ),
    "drawer-close-v3": (
        "close the drawer", "push the drawer shut", "slide the drawer closed",
        "shut the drawer", "push the drawer back in", "get the drawer closed",
    ),
    "button-press-topdown-v3": (
        "press the button from the top", "push the button down", "press down on the button",
        "hit the button from above", "depress the button with the gripper",
        "poke the button downward until it clicks",
    ),
    "peg-insert-side-v3": (
        "insert the peg into the hole", "put the peg in the hole",
        "pick up the peg and push it into the hole", "fit the peg into the side hole",
        "slide the peg sideways into the opening", "get the peg inside the hole",
    ),
    "window-open-v3": (
        "open the window", "slide the window open", "push the window open sideways",
        "move the window pane to open it", "slide the window along to open it",
        "get the window open",
    ),
    "window-close-v3": (
        "close the window", "slide the window shut", "push the window closed sideways",
        "move the window pane to close it", "slide the window along to close it",
        "get the window closed",
    ),
}

# The other MT50 tasks: six framings of one task phrase (the last two held out).
_FRAMES = ("{x}", "please {x}", "your job is to {x}", "{x}, then stop",
           "go ahead and {x}", "the goal: {x}")
INSTRUCTIONS.update({task: tuple(f.format(x=phrase) for f in _FRAMES)
                     for task, (*_, phrase) in MT50_EXTRA.items()})

# A captioning model: (task, phase, variant, split) -> caption. None means templates.
Captioner = Callable[[str, str, int, str], str]


def _pick(options: tuple[str, ...], variant: int, split: str) -> str:
    if split == "train":
        pool = options[:NUM_TRAIN]
    elif split == "heldout":
        pool = options[NUM_TRAIN:]
    else:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return pool[variant % len(pool)]


def num_variants(split: str = "train") -> int:
    """Number of distinct paraphrases per template in `split` (variants wrap around)."""
    sizes = {len(p) for p in PHASE_TEMPLATES.values()} | {len(p) for p in INSTRUCTIONS.values()}
    if split == "train":
        return NUM_TRAIN
    if split == "heldout":
        return min(sizes) - NUM_TRAIN
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def template_caption(task: str, phase: str, *, variant: int, split: str = "train") -> str:
    """Templated caption for `phase` of `task` (object/target names from TASK_OBJECTS)."""
    if phase not in PHASE_TEMPLATES:
        raise ValueError(f"no caption template for phase {phase!r}")
    if task not in TASK_OBJECTS:
        raise ValueError(f"no object/target names for task {task!r}")
    obj, target = TASK_OBJECTS[task]
    return _pick(PHASE_TEMPLATES[phase], variant, split).format(obj=obj, target=target)


class CaptionSource:
    """Captions for events: templates, or the captioning model it was built with."""

    def __init__(self, captioner: Captioner | None = None):
        self.captioner = captioner

    def event_caption(self, task: str, phase: str, *, variant: int, split: str = "train") -> str:
        """Caption of an event from the model if there is one, else from the templates."""
        return event_caption(task, phase, variant=variant, split=split,
                             captioner=self.captioner)


def event_caption(task: str, phase: str, *, variant: int, split: str = "train",
                  captioner: Captioner | None = None) -> str:
    """Caption of an event: `captioner(task, phase, variant, split)` when given, else the
    template paraphrase `variant` of `split`."""
    if captioner is not None:
        return captioner(task, phase, variant, split)
    return template_caption(task, phase, variant=variant, split=split)


def instruction(task: str, *, variant: int, split: str = "train") -> str:
    """Paraphrase `variant` (wrapping) of the task instruction from `split`."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"no instruction paraphrases for task {task!r}")
    return _pick(INSTRUCTIONS[task], variant, split)


def train_texts(tasks: tuple[str, ...] | list[str]) -> list[str]:
    """Every train-split instruction and caption of `tasks`: the tokenizer's corpus."""
    texts = []
    for task in tasks:
        texts += [instruction(task, variant=v) for v in range(NUM_TRAIN)]
        for phase in PHASE_TEMPLATES:
            texts += [template_caption(task, phase, variant=v) for v in range(NUM_TRAIN)]
    return texts
