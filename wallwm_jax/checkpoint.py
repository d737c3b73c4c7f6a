"""Orbax checkpoints: params, train state, data-iterator state and assets, saved together.

Items (openpi-style split): `params` (inference-ready weights), `train_state` (step, optimizer
state, rng), `data_iter` (Grain iterator state), `assets` (config.json, norm_stats.json,
tokenizer.model: the export bundle's files, read by `bundle.read_assets`). Orbax writes into a
temporary directory and renames it when complete, so a half-written step is never listed as a
checkpoint. A finished step damaged later (a truncated or zeroed array file, a lost manifest,
an empty iterator JSON) is found by `checkpoint_damage.verify_step`; `restore_latest` then
sets it aside as `<step>.corrupt` (never deletes it) and resumes from the previous intact step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from wallwm_jax import bundle
from wallwm_jax.checkpoint_damage import (  # noqa: F401  (re-exported: the checkpoint API)
    CORRUPT_SUFFIX,
    ITEMS,
    PERMISSION_DENIED,
    Damage,
    DamagedCheckpointError,
    set_aside,
    verify_step,
)
from wallwm_jax.tree_names import flat_names

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
            "assets": AssetsHandler()}


class AssetsHandler(ocp.AsyncCheckpointHandler):
    """Writes the assets item as the export bundle's files (`bundle.ASSET_FILES`), on process
    0, inside the step's tmp directory, so they are finished exactly when the step is."""

    async def async_save(self, directory: Any, args: AssetsSave) -> list[Any]:
        async def write() -> None:
            path = directory
            if hasattr(path, "await_creation"):  # Orbax may make the directory in the background
                path = await path.await_creation()
            if jax.process_index() == 0:
                bundle.write_files(os.fspath(path), args.files)

        return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="assets_save")]

    def save(self, directory: epath.Path, args: AssetsSave) -> None:
        if jax.process_index() == 0:
            bundle.write_files(os.fspath(directory), args.files)

    def restore(self, directory: epath.Path, args: AssetsRestore | None = None
                ) -> bundle.Assets:
        return bundle.read_assets(os.fspath(directory))


@ocp.args.register_with_handler(AssetsHandler, for_save=True)
@dataclasses.dataclass
class AssetsSave(ocp.args.CheckpointArgs):
    """{file name: contents} of the assets item (`bundle.asset_files`)."""

    files: dict[str, bytes]


@ocp.args.register_with_handler(AssetsHandler, for_restore=True)
@dataclasses.dataclass
class AssetsRestore(ocp.args.CheckpointArgs):
    """Read the assets item back (`bundle.Assets`)."""


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
                tokenizer_path: str, embodiments: list[tuple[Any, dict]] | None = None
                ) -> dict[str, bytes]:
    """What must travel with the weights, as the files the assets item stores (every
    embodiment's metadata and statistics included)."""
    return bundle.asset_files(config, norm_stats, tokenizer_path, embodiments)


def save(manager: ocp.CheckpointManager, step: int, params: Any, train_state: Any,
         data_iter: grain.DatasetIterator, assets: dict[str, bytes], *,
         force: bool = False) -> bool:
    """Start an (async) save of every item at `step`; returns whether a save was started."""
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        train_state=ocp.args.StandardSave(train_state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
        assets=AssetsSave(assets),
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


def restore_latest(manager: ocp.CheckpointManager, abstract_params: Any,
                   abstract_state: Any, data_iter: grain.DatasetIterator
                   ) -> tuple[int | None, Any, Any]:
    """Restore the newest intact step: `(step, params, train_state)`, or `(None, None, None)`
    when there is no checkpoint.

    A step whose restore fails is verified (`verify_step`); if it is damaged, the next older
    one is tried, and once one restores the damaged steps are set aside as `<step>.corrupt`
    with a warning naming the file. A failure on an intact step (another model, another
    optimizer) is raised as is, and so is a step this process may not read (nothing is
    moved). If every step is damaged nothing is moved and `DamagedCheckpointError` names the
    files.
    """
    directory = str(manager.directory)
    damaged: list[tuple[int, list[Damage]]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        damage = verify_step(directory, step, decode=False)
        if any(d.denied for d in damage):  # not damage: moving it aside would lose the step
            raise damaged_step_error(directory, step, damage)
        if damage:
            damaged.append((step, damage))
            continue
        try:
            with _quiet_asyncio():  # a failed Orbax restore logs each pending read's error
                params, state = restore(manager, step, abstract_params, abstract_state,
                                        data_iter)
        except Exception as err:
            _drop_late_reads()
            with _failed_reads_quiet():
                damage = verify_step(directory, step)
            if not damage:
                raise
            traceback.clear_frames(err.__traceback__)  # they hold the failed reads' tasks
        if damage:
            _finalize_failed_reads()
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


def restore_params(directory: str, abstract_params: Any, step: int | None = None) -> Any:
    """Restore only the `params` item (fine-tuning, export) from a checkpoint directory.

    Leaves of `abstract_params` without a sharding are restored onto this process's first
    device, so a checkpoint written on another mesh or device count loads here. (An export
    bundle is read by `bundle.load_params`; `export.load_params_from` takes either.) A damaged
    step raises `DamagedCheckpointError` naming the file and the intact steps, before Orbax
    opens anything when the small files show it, else once the failed restore is verified.
    """
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_params = jax.tree.map(
        lambda x: x if getattr(x, "sharding", None) is not None
        else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local), abstract_params)
    step = resolve_step(directory, step)
    check_intact(directory, step, items=("params",))
    try:
        with _quiet_asyncio(), _read_only(directory) as mngr:  # a failed read logs each read
            check_compatible(mngr, step, abstract_params)
            return mngr.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params)))["params"]
    except Exception as err:  # noqa: BLE001  (damage or a mismatch: told apart here)
        _drop_late_reads()
        with _failed_reads_quiet():  # reads still in flight finish while we verify
            damage = verify_step(directory, step, items=("params",))
        if not damage:
            raise
        traceback.clear_frames(err.__traceback__)  # they hold the failed reads' tasks
    _finalize_failed_reads()
    raise damaged_step_error(directory, step, damage)


@contextlib.contextmanager
def _failed_reads_quiet() -> Iterator[None]:
    """Drop what the reads of a failed Orbax restore report once it has given up on them:
    asyncio's "exception was never retrieved", the unraisable errors of their coroutines
    and late completions ("Event loop is closed"), one traceback per read otherwise, and the
    RuntimeWarning of a read's coroutine that never started ("was never awaited", printed
    with the source line that collected it; timing-dependent, seen in one suite run)."""
    unraisable = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        with _quiet_asyncio(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited",
                                    category=RuntimeWarning)
            yield
    finally:
        sys.unraisablehook = unraisable


def _late_read_on_a_closed_loop(exc_type: type, exc: BaseException, tb: Any) -> bool:
    """Whether an exception is a read completing after its failed restore closed its event
    loop: TensorStore hands the result to asyncio (`call_soon_threadsafe`) from its own
    thread and prints the RuntimeError with `PyErr_Print`, i.e. through `sys.excepthook`."""
    if exc_type is not RuntimeError or str(exc) != "Event loop is closed":
        return False
    last = traceback.extract_tb(tb)[-1:] if tb is not None else []
    return bool(last) and last[0].name == "_check_closed"


def _drop_late_reads() -> None:
    """From a failed restore on, `sys.excepthook` drops `_late_read_on_a_closed_loop`'s
    exceptions (they can come at any moment until the process ends: the CLI's one error line
    was followed or preceded by their tracebacks); every other exception goes through."""
    if getattr(sys.excepthook, "_drops_late_reads", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type, exc: BaseException, tb: Any) -> None:
        if not _late_read_on_a_closed_loop(exc_type, exc, tb):
            previous(exc_type, exc, tb)

    hook._drops_late_reads = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _finalize_failed_reads() -> None:
    """Collect the tasks and coroutines a failed restore abandoned now, quietly: collected
    later (at exit, or while training runs) each would print its read's traceback."""
    with _failed_reads_quiet():
        gc.collect()


def check_intact(directory: str, step: int, items: tuple[str, ...] = ITEMS) -> None:
    """Raise `DamagedCheckpointError` (one line: the file, the problem, the intact steps) if
    the small files of `step` (of `items`) show damage: a missing item or manifest, a truncated
    or missing data file, JSON that does not parse, a file this process may not read."""
    damage = verify_step(directory, step, decode=False, items=items)
    if damage:
        raise damaged_step_error(directory, step, damage)


def damaged_step_error(directory: str, step: int, damage: list[Damage]
                       ) -> DamagedCheckpointError:
    """The one-line error for a damaged step: its first damaged file and the steps of
    `directory` that are intact (their small files checked), to pick with `--step`."""
    intact = [s for s in finished_steps(directory)
              if s != step and not verify_step(directory, s, decode=False)]
    first = damage[0]
    more = f" (and {len(damage) - 1} more file(s))" if len(damage) > 1 else ""
    steps = f"intact steps: {intact}" if intact else "no intact step"
    what = "cannot be read" if first.denied else "is damaged"
    return DamagedCheckpointError(f"checkpoint step {step} in {directory} {what}: {first.file}: "
                                  f"{first.problem}{more}; {steps}", damage)


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_params: Any) -> None:
    """Compare saved parameter shapes with the model's and name the first mismatch."""
    meta = manager.item_metadata(step)
    saved = meta["params"] if meta is not None and "params" in meta else None
    if saved is None:
        return
    _compare_shapes(saved, abstract_params, f"checkpoint step {step} in {manager.directory}")


def _compare_shapes(saved: Any, abstract_params: Any, where: str) -> None:
    saved_flat, want_flat = flat_names(saved), flat_names(abstract_params)
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


def finished_steps(directory: str) -> list[int]:
    """The finished steps of a checkpoint directory, ascending. Orbax renames a step's tmp
    directory to its plain number when the save completes, so a numbered directory is a
    finished save (damaged ones are renamed `<step>.corrupt`)."""
    if not os.path.isdir(directory):
        return []
    try:
        names = os.listdir(directory)
    except PermissionError:
        raise PermissionError(f"{directory}: {PERMISSION_DENIED} (cannot list the "
                              f"checkpoint steps)") from None
    return sorted(int(n) for n in names
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def resolve_step(directory: str, step: int | None = None) -> int:
    """`step`, or the latest finished step of `directory`; FileNotFoundError names the
    directory when there is none (or `step` is not among them)."""
    steps = finished_steps(directory)
    if not steps:
        aside = sorted(n for n in os.listdir(directory) if CORRUPT_SUFFIX in n) \
            if os.path.isdir(directory) else []
        raise FileNotFoundError(f"no finished checkpoint in {directory}"
                                + (f" (set aside as damaged: {aside})" if aside else ""))
    if step is None:
        return steps[-1]
    if step not in steps:
        raise FileNotFoundError(f"no finished checkpoint step {step} in {directory} "
                                f"(finished steps: {steps})")
    return step


def assets_dir(directory: str, step: int | None = None) -> str:
    """The assets item of a checkpoint step (latest when `step` is None): the bundle's
    asset files, readable with `bundle.read_assets`."""
    return os.path.join(directory, str(resolve_step(directory, step)), "assets")


def read_assets(directory: str, step: int | None = None) -> bundle.Assets:
    """Config, norm stats and tokenizer of a checkpoint step (latest when `step` is None);
    a damaged step raises `DamagedCheckpointError` (see `check_intact`)."""
    step = resolve_step(directory, step)
    check_intact(directory, step)
    return bundle.read_assets(assets_dir(directory, step))
