"""Orbax checkpoints: params, train state, data-iterator state and assets, saved together.

Items (openpi-style split): `params` (inference-ready weights), `train_state` (step, optimizer
state, rng), `data_iter` (Grain iterator state), `assets` (config, norm stats, tokenizer).
Orbax writes into a temporary directory and renames it when complete, so a half-written
step is never listed as a checkpoint.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

ITEMS = ("params", "train_state", "data_iter", "assets")
# Orbax writes a step into `<step>.orbax-checkpoint-tmp[...]` and renames it when complete.
TMP_DIR_SUFFIX = ".orbax-checkpoint-tmp"


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
    remove_unfinished_saves(directory)
    return ocp.CheckpointManager(epath.Path(directory), options=options,
                                 item_handlers=_handlers())


def remove_unfinished_saves(directory: str) -> list[str]:
    """Delete the tmp dirs of saves that never finished (a process killed mid-save).

    Orbax never lists them as checkpoints, but also leaves them behind by default (its own
    `cleanup_tmp_directories` runs in the background and is awaited only by the next save).
    Done on process 0 before any save starts; returns the names removed.
    """
    path = epath.Path(directory)
    if jax.process_index() != 0 or not path.exists():
        return []
    removed = [p.name for p in path.iterdir() if TMP_DIR_SUFFIX in p.name]
    for name in removed:
        (path / name).rmtree()
    return removed


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


def is_export_bundle(directory: str) -> bool:
    """Whether `directory` is an export bundle (`model.safetensors` + `config.json`, see
    export.py)."""
    return (os.path.isfile(os.path.join(directory, "config.json"))
            and os.path.isfile(os.path.join(directory, "model.safetensors")))


def restore_params(directory: str, abstract_params: Any, step: int | None = None) -> Any:
    """Restore only the `params` item (fine-tuning, export) from a checkpoint directory.

    `directory` may also be an export bundle (then `step` must be None). Leaves of
    `abstract_params` without a sharding are restored onto this process's first device, so a
    checkpoint written on another mesh or device count loads here.
    """
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_params = jax.tree.map(
        lambda x: x if getattr(x, "sharding", None) is not None
        else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local), abstract_params)
    if is_export_bundle(directory):
        if step is not None:
            raise ValueError(f"{directory} is an export bundle: it has no steps (got {step})")
        from wallwm_jax.export import load_params  # safetensors; names a mis-shaped tensor

        return load_params(directory, abstract_params)
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
    _compare_shapes(saved, abstract_params, f"checkpoint step {step} in {manager.directory}")


def _compare_shapes(saved: Any, abstract_params: Any, where: str) -> None:
    saved_flat = {jax.tree_util.keystr(k): v for k, v in
                  jax.tree_util.tree_leaves_with_path(saved)}
    want_flat = {jax.tree_util.keystr(k): v for k, v in
                 jax.tree_util.tree_leaves_with_path(abstract_params)}
    for name, want in want_flat.items():
        if name not in saved_flat:
            raise ValueError(f"{where} has no parameter {name}: it was saved from a "
                             f"different model")
        got = tuple(saved_flat[name].shape)
        if got != tuple(want.shape):
            raise ValueError(f"{where}: parameter {name} has shape {got}, the model expects "
                             f"{tuple(want.shape)}")
    extra = sorted(set(saved_flat) - set(want_flat))
    if extra:
        raise ValueError(f"{where} has parameter {extra[0]} that the model does not have")


def read_assets(directory: str, step: int | None = None) -> dict[str, Any]:
    """Read the assets item (config, norm stats, tokenizer) of a checkpoint."""
    with _read_only(directory) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {directory}")
        return mngr.restore(step, args=ocp.args.Composite(assets=ocp.args.JsonRestore()))[
            "assets"]


def config_from_json(data: dict[str, Any]) -> ml_collections.ConfigDict:
    """Rebuild a config saved as JSON (assets, export bundles): JSON arrays become tuples
    again, as the configs in experiments/ write them, so a loaded config equals the saved one."""

    def tuples(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: tuples(v) for k, v in x.items()}
        if isinstance(x, list):
            return tuple(tuples(v) for v in x)
        return x

    return ml_collections.ConfigDict(tuples(data))
