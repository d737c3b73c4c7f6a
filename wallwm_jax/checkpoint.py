"""Orbax checkpoints: params, train state, data-iterator state and assets, saved together.

Items (openpi-style split): `params` (inference-ready weights), `train_state` (step, optimizer
state, rng), `data_iter` (Grain iterator state), `assets` (config, norm stats, tokenizer).
Orbax writes into a temporary directory and renames it when complete, so a half-written
step is never listed as a checkpoint.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

ITEMS = ("params", "train_state", "data_iter", "assets")


def _handlers() -> dict[str, Any]:
    """Explicit handlers, so metadata (saved shapes) can be read before restoring."""
    return {"params": ocp.StandardCheckpointHandler(),
            "train_state": ocp.StandardCheckpointHandler(),
            "data_iter": grain.checkpoint.CheckpointHandler(),
            "assets": ocp.JsonCheckpointHandler()}


def _read_only(directory: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(epath.Path(directory), item_handlers=_handlers(),
                                 options=ocp.CheckpointManagerOptions(read_only=True))


def make_manager(directory: str, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """A CheckpointManager that keeps the latest `cfg.keep` saves (async when configured)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep,
        keep_period=cfg.get("keep_period") or None,
        enable_async_checkpointing=cfg.async_save,
        create=True,
    )
    return ocp.CheckpointManager(epath.Path(directory), options=options,
                                 item_handlers=_handlers())


def make_assets(config: ml_collections.ConfigDict, norm_stats: dict[str, Any],
                tokenizer_path: str) -> dict[str, Any]:
    """What must travel with the weights: the config, norm stats and the tokenizer model."""
    tokenizer = base64.b64encode(epath.Path(tokenizer_path).read_bytes()).decode("ascii")
    stats = jax.tree.map(lambda x: x.tolist() if hasattr(x, "tolist") else x, norm_stats)
    return {"config": json.loads(config.to_json()), "norm_stats": stats,
            "tokenizer_model_b64": tokenizer}


def save(manager: ocp.CheckpointManager, step: int, params: Any, train_state: Any,
         data_iter: grain.DatasetIterator, assets: dict[str, Any], *,
         force: bool = False) -> bool:
    """Start an (async) save of every item at `step`; returns whether a save was started."""
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        train_state=ocp.args.StandardSave(train_state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
        assets=ocp.args.JsonSave(assets),
    )
    return manager.save(step, args=args, force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_params: Any,
            abstract_train_state: Any, data_iter: grain.DatasetIterator) -> tuple[Any, Any]:
    """Restore params and train state onto the shardings of the abstract trees given.

    The data iterator is restored in place. A tree that does not match the checkpoint (for
    example another model size) raises ValueError naming the first mismatched parameter.
    """
    check_compatible(manager, step, abstract_params)
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        train_state=ocp.args.StandardRestore(abstract_train_state),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter),
    ))
    return restored["params"], restored["train_state"]


def restore_params(directory: str, abstract_params: Any, step: int | None = None) -> Any:
    """Restore only the `params` item (fine-tuning, export) from a checkpoint directory."""
    with _read_only(directory) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {directory}")
        check_compatible(mngr, step, abstract_params)
        out = mngr.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params)))
        return out["params"]


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_params: Any) -> None:
    """Compare saved parameter shapes with the model's and name the first mismatch."""
    meta = manager.item_metadata(step)
    saved = meta["params"] if meta is not None and "params" in meta else None
    if saved is None:
        return
    saved_flat = {jax.tree_util.keystr(k): v for k, v in
                  jax.tree_util.tree_leaves_with_path(saved)}
    want_flat = {jax.tree_util.keystr(k): v for k, v in
                 jax.tree_util.tree_leaves_with_path(abstract_params)}
    for name, want in want_flat.items():
        if name not in saved_flat:
            raise ValueError(f"checkpoint step {step} in {manager.directory} has no parameter "
                             f"{name}: it was saved from a different model")
        got = tuple(saved_flat[name].shape)
        if got != tuple(want.shape):
            raise ValueError(f"checkpoint step {step} in {manager.directory}: parameter {name} "
                             f"has shape {got}, the model expects {tuple(want.shape)}")
    extra = sorted(set(saved_flat) - set(want_flat))
    if extra:
        raise ValueError(f"checkpoint step {step} in {manager.directory} has parameter "
                         f"{extra[0]} that the model does not have")


def read_assets(directory: str, step: int | None = None) -> dict[str, Any]:
    """Read the assets item (config, norm stats, tokenizer) of a checkpoint."""
    with _read_only(directory) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {directory}")
        return mngr.restore(step, args=ocp.args.Composite(assets=ocp.args.JsonRestore()))[
            "assets"]
