"""Orbax checkpoints: params, train state, data-iterator state and assets, saved together.

Items (openpi-style split): `params` (inference-ready weights), `train_state` (step, optimizer
state, rng), `data_iter` (Grain iterator state), `assets` (config, norm stats, tokenizer).
Orbax writes into a temporary directory and renames it when complete, so a half-written
step is never listed as a checkpoint. A finished step damaged later (a truncated or zeroed
array file, a lost manifest, an empty iterator JSON) is found by `verify_step`;
`restore_latest` then sets it aside as `<step>.corrupt` (never deletes it) and resumes from
the previous intact step.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

ITEMS = ("params", "train_state", "data_iter", "assets")
ARRAY_ITEMS = ("params", "train_state")
CORRUPT_SUFFIX = ".corrupt"
# Orbax writes a step into `<step>.orbax-checkpoint-tmp[...]` and renames it when complete.
TMP_DIR_SUFFIX = ".orbax-checkpoint-tmp"


# Orbax (on CPU and TPU) splits each replicated array among its replicas before the
# device-to-host copy ("replica-parallel"); every distinct slice shape is an XLA program that the
# first save of a process compiles while the loop waits (216 programs, ~6 s for `tiny` on 8 CPU
# devices). Splitting pays off only for large arrays: below this size per slice, one replica
# copies the whole array.
MIN_REPLICA_SLICE_BYTES = 8 << 20


_array_handler_registered = False


def _register_array_handler() -> None:
    """jax.Array's Orbax handler with the replica-parallel floor above (once per process)."""
    global _array_handler_registered
    if _array_handler_registered:
        return
    with _without_absl_notices("overriding"):  # Orbax warns of the replacement we asked for
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(
                min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES), override=True)
    _array_handler_registered = True


def _handlers() -> dict[str, Any]:
    """Explicit handlers, so metadata (saved shapes) can be read before restoring."""
    _register_array_handler()
    return {"params": ocp.StandardCheckpointHandler(),
            "train_state": ocp.StandardCheckpointHandler(),
            "data_iter": grain.checkpoint.CheckpointHandler(),
            "assets": ocp.JsonCheckpointHandler()}


class _DropNotices(logging.Filter):
    """Drops the absl records whose message contains one of `phrases`."""

    def __init__(self, *phrases: str) -> None:
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p in message for p in self.phrases)


@contextlib.contextmanager
def _without_absl_notices(*phrases: str) -> Iterator[None]:
    """Silence Orbax's notices about what we asked for, only around one call."""
    absl_logger = logging.getLogger("absl")
    notices = _DropNotices(*phrases)
    absl_logger.addFilter(notices)
    try:
        yield
    finally:
        absl_logger.removeFilter(notices)


def _read_only(directory: str) -> ocp.CheckpointManager:
    handlers = _handlers()
    with _without_absl_notices("read_only", "read only"):  # Orbax says so three times
        return ocp.CheckpointManager(epath.Path(directory), item_handlers=handlers,
                                     options=ocp.CheckpointManagerOptions(read_only=True))


def make_manager(directory: str, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """A CheckpointManager that keeps the latest `cfg.keep` saves (async when configured)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep,
        keep_period=cfg.get("keep_period") or None,
        enable_async_checkpointing=cfg.async_save,
        # The step's directories are made by the save thread, not while the loop waits.
        async_options=ocp.AsyncOptions(create_directories_asynchronously=True),
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


@dataclasses.dataclass(frozen=True)
class Damage:
    """One damaged file of a checkpoint step: which step, item and file, and what is wrong."""

    step: int
    item: str
    file: str
    problem: str

    def __str__(self) -> str:
        return f"step {self.step}, item {self.item}: {self.file}: {self.problem}"


class DamagedCheckpointError(ValueError):
    """A checkpoint step that cannot be read; the message names the step, item and file."""

    def __init__(self, message: str, damage: list[Damage]) -> None:
        super().__init__(message)
        self.damage = damage


def verify_step(directory: str, step: int, *, decode: bool = True) -> list[Damage]:
    """Check every file of a finished step without the model: the items are there, the array
    databases' manifests, tree nodes and data files are complete, the JSON items parse and
    (`decode`) every array chunk decodes. Returns the damage found (empty: intact).

    Without `decode` it reads only the small files (done before every restore); with it, the
    whole step, as a restore does (done when a restore has failed, to tell damage from a
    mismatch between the checkpoint and the model).
    """
    step_dir = os.path.join(directory, str(step))
    found: list[Damage] = []
    for item in ITEMS:
        item_dir = os.path.join(step_dir, item)
        if not os.path.isdir(item_dir):
            found.append(Damage(step, item, item_dir, "missing"))
        elif item in ARRAY_ITEMS:
            found += [Damage(step, item, f, p) for f, p in _verify_arrays(item_dir, decode)]
        else:
            found += [Damage(step, item, f, p) for f, p in _verify_json(item_dir)]
    return found


def _verify_json(item_dir: str) -> list[tuple[str, str]]:
    """Every JSON file of a data_iter/assets item parses (Orbax's `metadata`, Grain's
    `process_<i>-of-<n>.json`)."""
    problems = []
    names = [n for n in sorted(os.listdir(item_dir))
             if n.endswith(".json") or n == "metadata"]
    if not names:
        problems.append((item_dir, "no JSON file in the item"))
    for name in names:
        path = os.path.join(item_dir, name)
        try:
            with open(path, "rb") as f:
                json.loads(f.read())
        except (OSError, ValueError) as err:
            size = os.path.getsize(path) if os.path.exists(path) else 0
            problems.append((path, f"not valid JSON ({size} bytes): {err}"))
    return problems


_LOCATION = re.compile(r"(?:btreenode|value):(?P<prefix>[^:]*):(?P<file>[^:]+):(?P<offset>\d+)"
                       r":(?P<length>\d+)$")
_FAILED_KEY = re.compile(r'Error reading "(?P<key>[^"]+)"')


def _verify_arrays(item_dir: str, decode: bool) -> list[tuple[str, str]]:
    """An OCDBT array item (how Orbax stores params/train_state): manifest present, every
    B-tree node and referenced data file long enough, every array chunk decodes."""
    import tensorstore as ts

    manifest = os.path.join(item_dir, "manifest.ocdbt")
    if not os.path.isfile(manifest):
        return [(manifest, "missing (the array database's manifest)")]
    for name in ("_METADATA",):
        path = os.path.join(item_dir, name)
        if os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    json.loads(f.read())
            except (OSError, ValueError) as err:
                return [(path, f"not valid JSON: {err}")]
    base = f"file://{os.path.abspath(item_dir)}/"
    key_files: dict[str, str] = {}
    problems: list[tuple[str, str]] = []

    def located(location: str) -> str | None:
        """The data file a location points into; a problem if it is too short."""
        m = _LOCATION.match(location)
        if m is None:
            return None
        path = os.path.join(item_dir, m["prefix"], m["file"])
        need = int(m["offset"]) + int(m["length"])
        size = os.path.getsize(path) if os.path.exists(path) else -1
        if size < 0:
            problems.append((path, "missing data file"))
        elif size < need:
            problems.append((path, f"truncated: {size} bytes, the manifest references bytes "
                                   f"up to {need}"))
        return path

    try:
        kvstore = ts.KvStore.open(base).result()
        dump = ts.ocdbt.dump(kvstore).result()
        pending = [v["root"]["location"] for v in dump.get("versions", [])[-1:]]
        while pending:
            node = pending.pop()
            node_file = located(node)
            if problems:
                return problems
            try:
                entries = ts.ocdbt.dump(kvstore, node).result().get("entries", [])
            except Exception as err:  # noqa: BLE001  (any decode failure is damage)
                return [(node_file or manifest, f"unreadable B-tree node: {err}")]
            for entry in entries:
                for value in entry.values():
                    if isinstance(value, str) and value.startswith("btreenode:"):
                        pending.append(value)
                    elif isinstance(value, str) and value.startswith("value:"):
                        path = located(value)
                        key = entry.get("key", b"")
                        key = key.decode() if isinstance(key, bytes) else str(key)
                        if path is not None:
                            key_files[key] = path
    except Exception as err:  # noqa: BLE001
        return problems or [(manifest, f"unreadable array database: {err}")]
    if problems or not decode:
        return problems
    arrays = sorted({k.rsplit("/", 1)[0] for k in key_files.keys() | _inline_keys(kvstore)
                     if k.endswith("/.zarray")})
    for name in arrays:
        try:
            spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": base,
                                                  "path": name + "/"}}
            ts.open(spec, open=True).result().read().result()
        except Exception as err:  # noqa: BLE001
            m = _FAILED_KEY.search(str(err))
            path = key_files.get(m["key"], manifest) if m else manifest
            problems.append((path, f"array {name} does not decode: "
                                   f"{str(err).splitlines()[0][:200]}"))
    return problems


def _inline_keys(base_kvstore: Any) -> set[str]:
    """Every key of the OCDBT database on `base_kvstore` (the item directory)."""
    import tensorstore as ts

    db = ts.KvStore.open({"driver": "ocdbt", "base": base_kvstore.spec().to_json()}).result()
    return {k.decode() for k in db.list().result()}


def set_aside(directory: str, step: int) -> str:
    """Rename a damaged step to `<step>.corrupt` (`.corrupt-2`, ... if taken); never delete."""
    src = os.path.join(directory, str(step))
    dst, n = src + CORRUPT_SUFFIX, 1
    while os.path.exists(dst):
        n += 1
        dst = f"{src}{CORRUPT_SUFFIX}-{n}"
    os.rename(src, dst)
    return dst


def restore_latest(manager: ocp.CheckpointManager, abstract_params: Any,
                   abstract_state: Any, data_iter: grain.DatasetIterator
                   ) -> tuple[int | None, Any, Any]:
    """Restore the newest intact step: `(step, params, train_state)`, or `(None, None, None)`
    when there is no checkpoint.

    A step whose restore fails is verified (`verify_step`); if it is damaged, the next older
    one is tried, and once one restores the damaged steps are set aside as `<step>.corrupt`
    with a warning naming the file. A failure on an intact step (another model, another
    optimizer) is raised as is. If every step is damaged nothing is moved and
    `DamagedCheckpointError` names the files.
    """
    directory = str(manager.directory)
    damaged: list[tuple[int, list[Damage]]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        damage = verify_step(directory, step, decode=False)
        if damage:
            damaged.append((step, damage))
            continue
        try:
            with _quiet_asyncio():  # a failed Orbax restore logs each pending read's error
                params, state = restore(manager, step, abstract_params, abstract_state,
                                        data_iter)
        except Exception:
            damage = verify_step(directory, step)
            if not damage:
                raise
            damaged.append((step, damage))
            continue
        if damaged:
            _set_aside_all(manager, damaged)
        return step, params, state
    if damaged:
        raise DamagedCheckpointError(
            f"every checkpoint in {directory} is damaged and none was moved: "
            + "; ".join(str(d[0]) for _, d in damaged)
            + f". Move them aside (e.g. to <step>{CORRUPT_SUFFIX}) to start the run over.",
            [d for _, ds in damaged for d in ds])
    return None, None, None


@contextlib.contextmanager
def _quiet_asyncio() -> Iterator[None]:
    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _set_aside_all(manager: ocp.CheckpointManager, damaged: list[tuple[int, list[Damage]]]
                   ) -> None:
    """Process 0 renames the damaged steps; every process then re-reads the step list."""
    directory = str(manager.directory)
    if jax.process_index() == 0:
        for step, damage in damaged:
            moved = set_aside(directory, step)
            print(f"warning: checkpoint step {step} is damaged ({damage[0].item}: "
                  f"{damage[0].file}: {damage[0].problem}); moved it to {moved}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("wallwm_jax.checkpoint.set_aside")
    manager.reload()


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
        try:
            with _quiet_asyncio():
                out = mngr.restore(step, args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(abstract_params)))
        except Exception as err:
            damage = verify_step(directory, step)
            if not damage:
                raise
            others = [s for s in mngr.all_steps() if s != step]
            raise DamagedCheckpointError(
                f"checkpoint step {step} is damaged: {damage[0].file}: {damage[0].problem}"
                + (f" (other steps: {others})" if others else ""), damage) from err
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
