"""What a dataset's numbers mean: `embodiment.json`, written by every builder next to
dataset_info.json (robot name, state and action dimension names, action space kind, gripper,
control rate, cameras, whether actions can be turned into position targets), and the padding
of one embodiment's state, actions and cameras into a model's wider slots (docs/data.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

EMBODIMENT_FILE = "embodiment.json"
ACTION_SPACES = ("delta_ee", "absolute_ee", "joint_position", "joint_velocity")
GRIPPER_CONVENTIONS = ("close_high", "open_high")


@dataclasses.dataclass(frozen=True)
class Embodiment:
    """One robot's data layout. `hand_position` (state columns [start, stop) of the
    end-effector xyz) is set only for `delta_ee` actions whose dims 0-2 move that hand: then
    `data.action_target_gain` may turn them into position targets."""

    name: str
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    action_space: str  # one of ACTION_SPACES
    control_hz: float
    cameras: dict[str, tuple[int, int]]  # camera feature name -> (height, width)
    gripper_index: int | None = None  # action column of the gripper command
    gripper_convention: str | None = None  # GRIPPER_CONVENTIONS: what a high command means
    hand_position: tuple[int, int] | None = None

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def position_targets(self) -> bool:
        """Whether `data.action_target_gain` means something for this robot's actions."""
        return self.hand_position is not None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["cameras"] = {k: list(v) for k, v in self.cameras.items()}
        out["hand_position"] = None if self.hand_position is None else list(self.hand_position)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str = EMBODIMENT_FILE) -> Embodiment:
        """Parse and check a record; ValueError names the field."""
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = [f for f in ("name", "state_names", "action_names", "action_space",
                               "control_hz", "cameras") if f not in raw]
        if missing:
            raise ValueError(f"{where}: field '{missing[0]}' is missing")
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise ValueError(f"{where}: unknown field '{unknown[0]}'")
        hand = raw.get("hand_position")
        emb = cls(name=str(raw["name"]), state_names=tuple(raw["state_names"]),
                  action_names=tuple(raw["action_names"]), action_space=raw["action_space"],
                  control_hz=float(raw["control_hz"]),
                  cameras={k: tuple(int(s) for s in v) for k, v in raw["cameras"].items()},
                  gripper_index=raw.get("gripper_index"),
                  gripper_convention=raw.get("gripper_convention"),
                  hand_position=None if hand is None else tuple(int(h) for h in hand))
        emb.check(where)
        return emb

    def check(self, where: str = EMBODIMENT_FILE) -> None:
        """ValueError naming the first field that is not what it should be."""
        if not self.name:
            raise ValueError(f"{where}: field 'name' is empty")
        if self.action_space not in ACTION_SPACES:
            raise ValueError(f"{where}: field 'action_space' is {self.action_space!r}, expected "
                             f"one of {list(ACTION_SPACES)}")
        if not self.state_names or not self.action_names:
            raise ValueError(f"{where}: fields 'state_names' and 'action_names' must name "
                             f"every dimension")
        if not self.control_hz > 0:
            raise ValueError(f"{where}: field 'control_hz' is {self.control_hz}, expected > 0")
        if self.gripper_index is not None and not 0 <= self.gripper_index < self.action_dim:
            raise ValueError(f"{where}: field 'gripper_index' is {self.gripper_index}, expected "
                             f"an action column in [0, {self.action_dim})")
        if self.gripper_convention not in (None, *GRIPPER_CONVENTIONS):
            raise ValueError(f"{where}: field 'gripper_convention' is "
                             f"{self.gripper_convention!r}, expected one of "
                             f"{list(GRIPPER_CONVENTIONS)}")
        if self.hand_position is not None:
            check_position_targets(self.action_space, self.hand_position, self.state_dim,
                                   self.action_dim, f"{where}: field 'hand_position'")


def check_position_targets(action_space: str, hand: tuple[int, int], state_dim: int,
                           action_dim: int, field: str) -> None:
    """Position targets (`data.action_target_gain`) read actions 0-2 as a hand displacement and
    the state's `hand` columns as the hand: only `delta_ee` actions mean that."""
    if action_space != "delta_ee":
        raise ValueError(f"{field}: position targets need action_space 'delta_ee' (actions "
                         f"0-2 move the hand), not {action_space!r}; leave the hand position "
                         f"unset for this dataset")
    lo, hi = hand
    if hi - lo != 3 or not 0 <= lo < hi <= state_dim or action_dim < 3:
        raise ValueError(f"{field}: {list(hand)} must be 3 state columns inside [0, "
                         f"{state_dim}) and the actions at least 3-D")


def embodiment_path(dataset_dir: str) -> str:
    return os.path.join(os.fspath(dataset_dir), EMBODIMENT_FILE)


def write_embodiment(dataset_dir: str, embodiment: Embodiment) -> str:
    """Write `<dataset_dir>/embodiment.json` atomically; returns its path."""
    embodiment.check()
    path = embodiment_path(dataset_dir)
    with open(path + ".tmp", "w") as f:
        json.dump(embodiment.to_json(), f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def read_embodiment(dataset_dir: str) -> Embodiment | None:
    """The dataset's embodiment, or None for a dataset built before embodiment.json."""
    path = embodiment_path(dataset_dir)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return Embodiment.from_json(json.load(f), path)


def legacy_embodiment(dataset_dir: str, state_dim: int, action_dim: int,
                      cameras: dict[str, tuple[int, ...]]) -> Embodiment:
    """What a dataset without embodiment.json was always read as: delta end-effector actions
    with the hand at state dims 0-2, named after its directory."""
    parts = os.path.normpath(os.fspath(dataset_dir)).split(os.sep)
    name = "/".join(parts[-3:-1]) if len(parts) >= 3 else parts[-1]
    return Embodiment(name=name, state_names=tuple(f"state_{i}" for i in range(state_dim)),
                      action_names=tuple(f"action_{i}" for i in range(action_dim)),
                      action_space="delta_ee", control_hz=1.0,
                      cameras={k: tuple(v[:2]) for k, v in cameras.items()},
                      hand_position=(0, 3) if state_dim >= 3 and action_dim >= 3 else None)


# -- padding one embodiment into the model's slots ------------------------------------------------
def pad(x: np.ndarray, width: int) -> np.ndarray:
    """float [..., d] -> [..., width], zeros after the d real dims (d <= width)."""
    x = np.asarray(x, np.float32)
    d = x.shape[-1]
    if d == width:
        return x
    if d > width:
        raise ValueError(f"a {d}-D vector does not fit the model's {width} dims")
    out = np.zeros(x.shape[:-1] + (width,), np.float32)
    out[..., :d] = x
    return out


def dims_mask(d: int, width: int) -> np.ndarray:
    """bool [width]: True on the first d (real) dims."""
    return np.arange(width) < d


# -- every embodiment a model was trained on (exports, checkpoint assets) --------------------------
EMBODIMENTS_FILE = "embodiments.json"


def embodiments_record(entries: list[tuple[Embodiment, dict[str, Any]]]) -> dict[str, Any]:
    """[(embodiment, its norm stats)] -> the JSON of embodiments.json, in training order
    (the first is the primary: the one `norm_stats.json` holds)."""
    out: dict[str, Any] = {}
    for emb, stats in entries:
        out.setdefault(emb.name, {"embodiment": emb.to_json(), "norm_stats": {
            key: {n: np.asarray(v).tolist() for n, v in group.items()}
            for key, group in stats.items()}})
    return out


def read_embodiments(path: str) -> dict[str, tuple[Embodiment, dict[str, dict[str, np.ndarray]]]]:
    """embodiments.json (a file, or the directory that holds it) -> {name: (embodiment, norm
    stats as float32 arrays)}, in training order; {} when the directory has none."""
    if os.path.isdir(path):
        path = os.path.join(path, EMBODIMENTS_FILE)
        if not os.path.exists(path):
            return {}
    with open(path) as f:
        raw = json.load(f)
    return {name: (Embodiment.from_json(entry["embodiment"], f"{path} [{name!r}]"),
                   {key: {n: np.asarray(v, np.float32) for n, v in group.items()}
                    for key, group in entry["norm_stats"].items()})
            for name, entry in raw.items()}
