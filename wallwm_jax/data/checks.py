"""Checks of `config.data` against itself and against a dataset on disk, run when the config is
read and when a pipeline opens a dataset, so a bad value is one error naming the field."""

from __future__ import annotations

import dataclasses
import json

import ml_collections
import numpy as np
from etils import epath

from wallwm_jax.data.augment import check_augment
from wallwm_jax.data.embodiment import Embodiment, legacy_embodiment, read_embodiment
from wallwm_jax.data.tasks import STATE_LAYOUT_FILE


def check_layout(data_cfg: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the field when data.layout and data.max_captions disagree."""
    want = {"event": "== 1", "unified": ">= 2", "chunk": "== 0"}
    layout, slots = data_cfg.get("layout"), data_cfg.get("max_captions")
    if layout not in want:
        raise ValueError(f"data.layout='{layout}' must be one of {sorted(want)}")
    ok = {"event": slots == 1, "unified": slots is not None and slots >= 2,
          "chunk": slots == 0}[layout]
    if not ok:
        raise ValueError(f"data.max_captions={slots} does not fit data.layout='{layout}' "
                         f"(expected {want[layout]})")


def mixture_entries(data_cfg: ml_collections.ConfigDict) -> list[tuple[str, float]]:
    """`data.mixture` as [(dataset dir, weight)], or [(data.data_dir, 1.0)] when empty."""
    entries = [(str(d), float(w)) for d, w in (data_cfg.get("mixture") or ())]
    return entries or [(data_cfg.data_dir, 1.0)]


def check_data_config(data_cfg: ml_collections.ConfigDict) -> None:
    """Reject bad data settings when the config is read, naming the field."""
    check_layout(data_cfg)
    alpha = data_cfg.get("balance_alpha")
    if alpha is not None and (not np.isfinite(alpha) or alpha < 0):
        raise ValueError(f"data.balance_alpha={alpha} must be a finite number >= 0 (or None "
                         f"for uniform event sampling)")
    gain = data_cfg.get("action_target_gain", 0.0) or 0.0
    if not np.isfinite(gain) or gain < 0:
        raise ValueError(f"data.action_target_gain={gain} must be a finite number >= 0 (0: the "
                         f"model predicts the recorded actions; g > 0: position targets of a "
                         f"gain-g controller on the hand at state dims 0-2)")
    if data_cfg.get("num_clusters", 1) < 1:
        raise ValueError(f"data.num_clusters={data_cfg.num_clusters} must be >= 1")
    weights = [w for _, w in mixture_entries(data_cfg)]
    for j, w in enumerate(weights):
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"data.mixture[{j}] weight {w} must be a finite number >= 0")
    if sum(weights) <= 0:
        raise ValueError(f"data.mixture weights {weights} are all zero")
    if data_cfg.augment.enabled:
        check_augment(data_cfg.augment)


def dataset_state_record(dataset_dir: str) -> dict | None:
    """The dataset's state layout record (`state_layout.json`, written by the MetaWorld
    builder), or None for a dataset without one (agent state of whatever width it stores)."""
    path = epath.Path(dataset_dir) / STATE_LAYOUT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def check_state_layout(dataset_dir: str, data_cfg: ml_collections.ConfigDict,
                       field: str = "data.data_dir") -> None:
    """Raise ValueError when `data.privileged_state` disagrees with what the dataset (given as
    `field`) stores (privileged simulator state must be asked for on both sides, never picked
    up by chance)."""
    want = bool(data_cfg.get("privileged_state", False))
    record = dataset_state_record(dataset_dir)
    has = bool(record and record.get("privileged_state"))
    if want != has:
        raise ValueError(
            f"config.data.privileged_state={want} but the dataset at {field}={dataset_dir!r} "
            f"stores "
            + (f"privileged simulator state ({record['state_dim']}-D: {record['source']})"
               if has else "no privileged simulator state (" + (
                   f"{record['state_dim']}-D agent state" if record else
                   f"no {STATE_LAYOUT_FILE}") + ")")
            + "; build the dataset with --privileged_state or set "
            f"--config.data.privileged_state={has}")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a built dataset's metadata (features.json, state_layout.json) says it stores."""

    cameras: dict[str, tuple[int, ...]]  # camera feature name -> frame shape (H, W, 3)
    state_dim: int
    action_dim: int
    privileged_state: bool | None  # None: no state layout record (a converted dataset)


def dataset_spec(dataset_dir: str) -> DatasetSpec:
    """The cameras, state and action widths of a built dataset, read from its metadata by
    TFDS (no episode is read), so a config can be checked against it before any compile."""
    import tensorflow_datasets as tfds

    try:
        features = tfds.features.FeatureConnector.from_config(dataset_dir)
        steps = features["steps"]
        observation = steps["observation"]
        cameras = {k: tuple(observation[k].shape) for k in observation.keys()
                   if k.startswith("image")}
        state, action = tuple(observation["state"].shape), tuple(steps["action"].shape)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{dataset_dir}: its features.json does not describe an event dataset "
                         f"(steps/observation/image*, steps/observation/state, steps/action): "
                         f"{type(err).__name__}: {err}") from None
    record = dataset_state_record(dataset_dir)
    return DatasetSpec(cameras=cameras, state_dim=int(np.prod(state)),
                       action_dim=int(np.prod(action)),
                       privileged_state=None if record is None else
                       bool(record.get("privileged_state")))


def dataset_embodiment(dataset_dir: str) -> Embodiment:
    """The dataset's embodiment.json, or what a dataset built before it was read as
    (`embodiment.legacy_embodiment`)."""
    emb = read_embodiment(dataset_dir)
    if emb is not None:
        return emb
    spec = dataset_spec(dataset_dir)
    return legacy_embodiment(dataset_dir, spec.state_dim, spec.action_dim, spec.cameras)


def check_dataset_fits(dataset_dir: str, config: ml_collections.ConfigDict,
                       field: str = "data.data_dir") -> None:
    """Raise ValueError (one line naming the config field and value, and the dataset, given as
    `field`, and what it stores) when the model and data settings of `config` cannot read
    `dataset_dir`: cameras, image size, privileged state, state and action widths."""
    from wallwm_jax.data.batches import uses_masks

    spec = dataset_spec(dataset_dir)
    data, model = config.data, config.model
    where = f"the dataset at {field}={dataset_dir!r}"
    masked = uses_masks(data)
    check_embodiment(dataset_dir, spec, config, field)
    cameras = tuple(data.cameras)
    for j, name in enumerate(cameras):
        if masked and j > 0 and name not in spec.cameras:
            continue  # a masked slot for this robot (the first camera is the world target)
        if name not in spec.cameras:
            raise ValueError(f"config.data.cameras={cameras} but {where} has no camera {name!r} "
                             f"(its cameras: {tuple(spec.cameras)}); set --config.data.cameras "
                             f"(and --config.model.cameras) to cameras it has")
    size = int(data.image_size)
    for name in (c for c in cameras if c in spec.cameras):
        shape = spec.cameras[name]
        if shape != (size, size, 3):
            fix = (f"set --config.data.image_size={shape[0]} (model.image_size follows it)"
                   if len(shape) == 3 and shape[0] == shape[1] else
                   "training reads square frames: convert it again with --image_size")
            raise ValueError(f"config.data.image_size={size} (model.image_size="
                             f"{model.get('image_size')}) but {where} stores "
                             f"{'x'.join(map(str, shape))} frames in "
                             f"steps/observation/{name}; {fix}")
    check_state_layout(dataset_dir, data, field)
    for key, stored, what in (("state_dim", spec.state_dim, "states (steps/observation/state)"),
                              ("action_dim", spec.action_dim, "actions (steps/action)")):
        value = model.get(key)
        if masked and value is not None and stored <= value:
            continue  # padded into the model's width, with a mask
        if value != stored:
            fix = (f"set --config.model.{key}={stored} (the widest dataset's)" if masked else
                   f"set --config.model.{key}={stored}")
            raise ValueError(f"config.model.{key}={value} but {where} stores {stored}-D "
                             f"{what}; {fix}")


def check_embodiment(dataset_dir: str, spec: DatasetSpec, config: ml_collections.ConfigDict,
                     field: str = "data.data_dir") -> None:
    """Raise ValueError (one line naming the field) when the dataset's embodiment.json
    disagrees with what it stores, or with `data.action_target_gain` for a single dataset
    whose actions are not hand displacements."""
    emb = read_embodiment(dataset_dir)
    where = f"the dataset at {field}={dataset_dir!r}"
    if emb is not None:
        path = f"{dataset_dir}/embodiment.json"
        for key, named, stored in (("state_names", emb.state_dim, spec.state_dim),
                                   ("action_names", emb.action_dim, spec.action_dim)):
            if named != stored:
                raise ValueError(f"{path}: field '{key}' names {named} dims but the dataset "
                                 f"stores {stored}; rebuild the dataset")
        for name in emb.cameras:
            if name not in spec.cameras:
                raise ValueError(f"{path}: field 'cameras' names {name!r} but the dataset "
                                 f"has only {tuple(spec.cameras)}; rebuild the dataset")
    gain = config.data.get("action_target_gain") or 0.0
    single = len(config.data.get("mixture") or ()) <= 1
    if gain and single and emb is not None and not emb.position_targets \
            and not config.data.get("norm_stats"):
        raise ValueError(f"config.data.action_target_gain={gain} but {where} declares "
                         f"action_space {emb.action_space!r} without a hand position "
                         f"(embodiment.json field 'hand_position'): position targets mean "
                         f"nothing for its actions; set --config.data.action_target_gain=0")
