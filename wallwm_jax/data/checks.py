"""Checks of `config.data` against itself and against a dataset on disk, run when the config is
read and when a pipeline opens a dataset, so a bad value is one error naming the field."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
from etils import epath

from wallwm_jax.data.augment import check_augment
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


def check_state_layout(dataset_dir: str, data_cfg: ml_collections.ConfigDict) -> None:
    """Raise ValueError when `data.privileged_state` disagrees with what the dataset stores
    (privileged simulator state must be asked for on both sides, never picked up by chance)."""
    want = bool(data_cfg.get("privileged_state", False))
    record = dataset_state_record(dataset_dir)
    has = bool(record and record.get("privileged_state"))
    if want != has:
        raise ValueError(
            f"{dataset_dir}: data.privileged_state={want} but the dataset stores "
            + (f"privileged simulator state ({record['state_dim']}-D: {record['source']})"
               if has else "no privileged simulator state (" + (
                   f"{record['state_dim']}-D agent state" if record else
                   f"no {STATE_LAYOUT_FILE}") + ")")
            + "; build the dataset with --privileged_state or set "
            f"--config.data.privileged_state={has}")
