"""Key mapping from an RLDS/TFDS source (Open X-Embodiment style) to our event format.

`KeyMapping` names the source keys; `resolve_mapping` checks it against the source's feature
spec (clear errors naming the key); `convert_episode` turns one source episode into one
`rlds_events` example, with events from `segment_events` and captions from `describe_events`.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from wallwm_jax.data.segmentation import describe_events, segment_events

# describe_events caption prefix -> events/phase (the motion primitive's name).
PRIMITIVES = (("close the gripper", "close_gripper"), ("open the gripper", "open_gripper"),
              ("hold still", "hold_still"), ("lift", "lift"), ("lower the gripper", "lower"),
              ("move the gripper", "move"))


@dataclasses.dataclass(frozen=True)
class KeyMapping:
    """Which source keys hold what. Short names are looked up under the usual RLDS prefix
    (images/state: `steps/observation/`, action: `steps/`, instruction: `steps/` then
    `episode_metadata/`, success: `episode_metadata/` then `steps/`); a key containing "/"
    is a full path. The first image key becomes `image`, others `image_<name>`."""

    image_keys: tuple[str, ...] = ("image",)
    state_key: str = "state"
    action_key: str = "action"
    gripper_index: int = -1  # column of the gripper command in the action
    position_slice: tuple[int, int] = (0, 3)  # end-effector xyz columns [start, stop) of state
    instruction_key: str = "language_instruction"
    success_key: str | None = None  # None: every episode counts as a success (demonstrations)
    task_key: str | None = None  # None: the source dataset's name
    image_size: int | None = None  # square resize; None keeps the source frame size
    gripper_open_high: bool = False  # True when a high gripper command means "open"
    segmenter: tuple[tuple[str, float], ...] = ()  # extra segment_events keyword arguments

    def __post_init__(self):
        object.__setattr__(self, "image_keys", tuple(self.image_keys))
        object.__setattr__(self, "position_slice", tuple(self.position_slice))
        object.__setattr__(self, "segmenter", tuple(tuple(kv) for kv in self.segmenter))


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A mapping resolved against one source: full source paths, output camera names and
    per-step shapes (what the output feature spec is built from)."""

    cameras: tuple[tuple[str, str, tuple[int, int, int]], ...]  # (out name, source path, shape)
    state_path: str
    action_path: str
    state_dim: int
    action_dim: int
    instruction_path: str
    success_path: str | None
    task_path: str | None
    task_default: str


def camera_name(key: str) -> str:
    """Output name of an extra camera key: "wrist_image" -> "wrist", "image_2" -> "2"."""
    name = key.rsplit("/", 1)[-1]
    return name.removesuffix("_image").removeprefix("image_") or name


def _flat_tensor_info(features) -> dict[str, tuple[tuple, np.dtype]]:
    """Flat path -> (shape, dtype) of a TFDS FeaturesDict; step features have a leading None
    (a `Sequence` reports it, a `Dataset` (RLDS `steps`) does not, so it is added)."""
    import tensorflow_datasets as tfds

    flat: dict[str, tuple[tuple, np.dtype]] = {}

    def walk(tree, prefix, lead):
        if isinstance(tree, dict):
            for k, v in tree.items():
                walk(v, f"{prefix}{k}/", lead)
        else:
            flat[prefix[:-1]] = (lead + tuple(tree.shape), np.dtype(tree.numpy_dtype))

    for key, feature in features.items():
        lead = (None,) if isinstance(feature, tfds.features.Dataset) else ()
        walk(feature.get_tensor_info(), f"{key}/", lead)
    return flat


def _find(flat: dict, key: str, prefixes: tuple[str, ...], what: str) -> str:
    """Full source path of `key` (tried under each prefix unless it already has a "/")."""
    candidates = [key] if "/" in key else [p + key for p in prefixes]
    for path in candidates:
        if path in flat:
            return path
    raise ValueError(f"{candidates[0]}: missing ({what}); available keys: {sorted(flat)}")


def resolve_mapping(mapping: KeyMapping, features, dataset_name: str) -> SourceSpec:
    """Check `mapping` against a source FeaturesDict; ValueError names the key and what was
    expected (missing key, wrong rank, gripper index or position slice out of range)."""
    flat = _flat_tensor_info(features)
    if not mapping.image_keys:
        raise ValueError("image_keys: empty; expected one or more camera keys")
    cameras, names = [], set()
    for i, key in enumerate(mapping.image_keys):
        path = _find(flat, key, ("steps/observation/",), "an image key")
        shape, dtype = flat[path]
        if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
            raise ValueError(f"{path}: shape {shape} {dtype}, expected uint8 (T, H, W, 3)")
        name = "image" if i == 0 else f"image_{camera_name(key)}"
        if name in names:
            raise ValueError(f"{path}: output camera name {name!r} is used twice; "
                             "rename the source key or drop one camera")
        names.add(name)
        size = mapping.image_size
        frame = (size, size, 3) if size else tuple(int(s) for s in shape[1:])
        if None in frame:
            raise ValueError(f"{path}: frame shape {shape[1:]} is not fixed; set image_size")
        cameras.append((name, path, frame))
    vectors = {}
    for what, key, prefixes in (("state", mapping.state_key, ("steps/observation/",)),
                                ("action", mapping.action_key, ("steps/",))):
        path = _find(flat, key, prefixes, f"the {what} key")
        shape, dtype = flat[path]
        if len(shape) != 2 or shape[1] is None or not (
                np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
            raise ValueError(f"{path}: shape {shape} {dtype}, expected a real-valued (T, D)")
        vectors[what] = (path, int(shape[1]))
    (state_path, s_dim), (action_path, a_dim) = vectors["state"], vectors["action"]
    g = mapping.gripper_index
    if not -a_dim <= g < a_dim:
        raise ValueError(f"{action_path}: shape (T, {a_dim}), expected the gripper index {g} "
                         f"to be < {a_dim}")
    lo, hi = mapping.position_slice
    if not 0 <= lo < hi <= s_dim:
        raise ValueError(f"{state_path}: shape (T, {s_dim}), expected the position slice "
                         f"{lo}:{hi} to lie inside its {s_dim} columns")
    instruction = _find(flat, mapping.instruction_key, ("steps/", "episode_metadata/"),
                        "the instruction key")
    success = task = None
    if mapping.success_key:
        success = _find(flat, mapping.success_key, ("episode_metadata/", "steps/"),
                        "the success key")
    if mapping.task_key:
        task = _find(flat, mapping.task_key, ("episode_metadata/", "steps/"), "the task key")
    return SourceSpec(cameras=tuple(cameras), state_path=state_path, action_path=action_path,
                      state_dim=s_dim, action_dim=a_dim, instruction_path=instruction,
                      success_path=success, task_path=task, task_default=dataset_name)


def flatten_episode(raw: dict) -> dict:
    """Flat path -> value of a source episode; RLDS `steps` (a TFDS `Dataset` feature, which
    `as_data_source` returns as a lazy per-step source) are stacked into [T, ...] arrays."""
    flat: dict = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}/")
        elif hasattr(node, "__getitem__") and hasattr(node, "__len__") and not isinstance(
                node, (np.ndarray, list, tuple, bytes, str)):
            if len(node) == 0:
                raise ValueError(f"{prefix[:-1]}: episode has no steps")
            steps = [flatten_episode(node[i]) for i in range(len(node))]
            for k in steps[0]:
                flat[f"{prefix}{k}"] = np.stack([np.asarray(s[k]) for s in steps])
        else:
            flat[prefix[:-1]] = node

    walk(raw, "")
    return flat


def _get(flat: dict, path: str):
    if path not in flat:
        raise ValueError(f"{path}: missing from the episode")
    return flat[path]


def _text(x) -> str:
    x = np.asarray(x).reshape(-1)[0] if np.ndim(x) else x  # step-level: the first step's
    if isinstance(x, np.ndarray):
        x = x.item()
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _png(frame: np.ndarray, shape: tuple[int, int, int]) -> bytes:
    image = Image.fromarray(frame)
    if frame.shape != shape:
        image = image.resize((shape[1], shape[0]), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def phase_of(caption: str) -> str:
    """The motion primitive's name of a `describe_events` caption ("move the gripper up" ->
    "move"); events/phase holds it."""
    for prefix, phase in PRIMITIVES:
        if caption.startswith(prefix):
            return phase
    raise ValueError(f"caption {caption!r}: no known motion primitive")


def segment(actions: np.ndarray, states: np.ndarray, mapping: KeyMapping
            ) -> tuple[np.ndarray, list[str]]:
    """Event starts int64 [E] and captions of an episode (actions [T, A], states [T, S])."""
    g = mapping.gripper_index % actions.shape[1]
    if mapping.gripper_open_high:  # the segmenter reads a high command as "closed"
        actions = actions.copy()
        actions[:, g] = 1.0 - actions[:, g]
    kw = dict(gripper_index=g, position_slice=slice(*mapping.position_slice))
    starts = segment_events(actions, states, **kw, **dict(mapping.segmenter))
    gripper = {k: v for k, v in mapping.segmenter if k.startswith("gripper_")}
    return starts, describe_events(actions, states, starts, **kw, **gripper)


def convert_episode(raw: dict, mapping: KeyMapping, spec: SourceSpec) -> dict:
    """One source episode (nested dict, as `as_data_source` returns it) -> one rlds_events
    example; ValueError "<source key>: <what is wrong>" for an empty episode, a NaN/Inf or a
    wrong shape."""
    raw = flatten_episode(raw)
    actions = np.asarray(_get(raw, spec.action_path))
    states = np.asarray(_get(raw, spec.state_path))
    t = len(actions)
    if t == 0:
        raise ValueError(f"{spec.action_path}: episode has no steps")
    for path, x, dim in ((spec.action_path, actions, spec.action_dim),
                         (spec.state_path, states, spec.state_dim)):
        if x.shape != (t, dim):
            raise ValueError(f"{path}: shape {x.shape}, expected {(t, dim)}")
        bad = ~np.isfinite(x)
        if bad.any():
            raise ValueError(f"{path}: non-finite value (NaN/Inf) at step "
                             f"{int(np.argwhere(bad)[0][0])}")
    observation = {}
    for name, path, shape in spec.cameras:
        frames = np.asarray(_get(raw, path))
        if frames.ndim != 4 or len(frames) != t or frames.shape[-1] != 3:
            raise ValueError(f"{path}: shape {frames.shape}, expected ({t}, H, W, 3)")
        observation[name] = [_png(f, shape) for f in frames]
    actions, states = actions.astype(np.float32), states.astype(np.float32)
    starts, captions = segment(actions, states, mapping)
    observation["state"] = states
    success = True
    if spec.success_path:
        value = np.asarray(_get(raw, spec.success_path)).reshape(-1)
        success = bool(value[-1]) if len(value) else False
    task = _text(_get(raw, spec.task_path)) if spec.task_path else spec.task_default
    return {
        "steps": {"observation": observation, "action": actions,
                  "is_first": np.arange(t) == 0, "is_last": np.arange(t) == t - 1},
        "episode_metadata": {"task": task,
                             "instruction": _text(_get(raw, spec.instruction_path)),
                             "success": success},
        "events": {"start": starts.astype(np.int32),
                   "end": np.r_[starts[1:], t].astype(np.int32),
                   "caption": captions, "phase": [phase_of(c) for c in captions]},
    }
