"""Batch dataclasses: the contract between the input pipeline and the model.

Every array carries its shape in the field comment; `check` validates a batch against the
model config at the boundary so a mismatch names the field instead of failing inside XLA.
"""

from __future__ import annotations

import flax.struct
import numpy as np


@flax.struct.dataclass
class Observation:
    """What the policy sees at one step (B = batch)."""

    image: np.ndarray  # uint8 [B, H, W, 3] scene camera, or [B, C, H, W, 3] with C cameras
    state: np.ndarray  # float32 [B, S] normalised robot state
    instruction: np.ndarray  # int32 [B, Li] task instruction tokens, 0 = padding
    # int32 [B, K, Lc]: K caption slots (BOS ... EOS, then 0 padding; an all-0 slot is
    # absent). K = config.model.max_captions: 1 in event mode, >= 2 in unified mode (the
    # current event's caption, then the next ones), 0 for the chunk baseline.
    caption: np.ndarray
    # Only for a model trained on a mixture of embodiments (`uses_masks`), else None: which
    # dims of the padded state / actions are the robot's own, and which cameras it has (a
    # masked camera's image tokens are not attended).
    state_mask: np.ndarray | None = None  # bool [B, S]
    action_dim_mask: np.ndarray | None = None  # bool [B, A]
    camera_mask: np.ndarray | None = None  # bool [B, C]


@flax.struct.dataclass
class EventBatch:
    """Training example: the observation at step t inside event k -> the next Tmax actions.

    Layouts (config.data.layout): `event` = the rest of event k (one caption); `unified` =
    Tmax steps crossing into events k+1.. (one caption slot per event reached, Staircase
    mask); `chunk` = Tmax steps, no captions.
    """

    obs: Observation
    actions: np.ndarray  # float32 [B, Tmax, A] normalised actions from step t
    action_mask: np.ndarray  # bool [B, Tmax] True on real (not padded) steps
    action_events: np.ndarray  # int32 [B, Tmax] caption slot of each step (non-decreasing)
    # int32 [B, K] per caption slot: slot 0 = bin of the steps left in event k (from t),
    # slot c > 0 = bin of the length of event k + c; ignored on absent slots.
    duration_bin: np.ndarray
    end_image: np.ndarray  # uint8 [B, h, w, 3] low-resolution frame at the event's end


def uses_masks(data_cfg) -> bool:
    """Whether batches carry embodiment masks: a mixture of several datasets, or
    `data.embodiment_masks` (fine-tuning a padded model on one robot)."""
    return len(data_cfg.get("mixture") or ()) > 1 or bool(data_cfg.get("embodiment_masks"))


def abstract_batch(config, batch_size: int | None = None) -> EventBatch:
    """Shapes and dtypes of a global training batch for `config`, as `jax.ShapeDtypeStruct`s.

    Used to lower the train step without data (AOT compilation, FLOP counts). The pipeline's
    real batches have exactly these shapes (`tests/data/test_pipeline.py` checks it).
    """
    import jax  # local: this module is also imported by light tools without JAX

    b = int(batch_size or config.batch_size)
    d, m = config.data, config.model

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), np.dtype(dtype))

    cameras = (len(d.cameras),) if len(d.cameras) > 1 else ()
    masks = {}
    if uses_masks(d):
        masks = {"state_mask": spec((b, m.state_dim), bool),
                 "action_dim_mask": spec((b, m.action_dim), bool),
                 "camera_mask": spec((b, len(d.cameras)), bool)}
    obs = Observation(image=spec((b, *cameras, d.image_size, d.image_size, 3), np.uint8),
                      state=spec((b, m.state_dim), np.float32),
                      instruction=spec((b, d.instruction_len), np.int32),
                      caption=spec((b, m.max_captions, d.caption_len), np.int32), **masks)
    return EventBatch(obs=obs, actions=spec((b, d.max_event_len, m.action_dim), np.float32),
                      action_mask=spec((b, d.max_event_len), bool),
                      action_events=spec((b, d.max_event_len), np.int32),
                      duration_bin=spec((b, m.max_captions), np.int32),
                      end_image=spec((b, d.world_size, d.world_size, 3), np.uint8))


def check_batch(batch: EventBatch, expected: EventBatch) -> None:
    """Raise ValueError naming the first field whose shape or dtype differs from `expected`
    (e.g. `abstract_batch(config, per_host_batch)`), before it reaches the compiled step."""
    import jax

    from wallwm_jax.tree_names import path_name

    got = dict(jax.tree_util.tree_leaves_with_path(batch))
    for path, want in jax.tree_util.tree_leaves_with_path(expected):
        name = path_name(path, ".")
        if path not in got:
            raise ValueError(f"batch has no field '{name}'")
        leaf = got[path]
        if tuple(leaf.shape) != tuple(want.shape) or np.dtype(leaf.dtype) != np.dtype(want.dtype):
            raise ValueError(f"batch field '{name}' has shape {tuple(leaf.shape)} dtype "
                             f"{np.dtype(leaf.dtype)}, expected {tuple(want.shape)} "
                             f"{np.dtype(want.dtype)} from the config")
