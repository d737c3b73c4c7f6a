"""Damage in a finished checkpoint step, found without the model: every item present, the
array databases' manifests, B-tree nodes and data files complete, the JSON files parsed, every
array chunk decodable. `checkpoint.restore_latest` uses it to tell damage from a checkpoint
that does not fit the model, and sets damaged steps aside (never deletes them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from wallwm_jax import bundle

ITEMS = ("params", "train_state", "data_iter", "assets")
ARRAY_ITEMS = ("params", "train_state")
CORRUPT_SUFFIX = ".corrupt"
PERMISSION_DENIED = "permission denied"


@dataclasses.dataclass(frozen=True)
class Damage:
    """One damaged file of a checkpoint step: which step, item and file, and what is wrong."""

    step: int
    item: str
    file: str
    problem: str

    def __str__(self) -> str:
        return f"step {self.step}, item {self.item}: {self.file}: {self.problem}"

    @property
    def denied(self) -> bool:
        """The file is there but this process may not read it (not damage to set aside)."""
        return self.problem == PERMISSION_DENIED


class DamagedCheckpointError(ValueError):
    """A checkpoint step that cannot be read; the message names the step, item and file."""

    def __init__(self, message: str, damage: list[Damage]) -> None:
        super().__init__(message)
        self.damage = damage


def verify_step(directory: str, step: int, *, decode: bool = True,
                items: tuple[str, ...] = ITEMS) -> list[Damage]:
    """Check every file of a finished step without the model: the items are there, the array
    databases' manifests, tree nodes and data files are complete, the JSON items parse and
    (`decode`) every array chunk decodes. Returns the damage found (empty: intact).

    Without `decode` it reads only the small files (done before every restore); with it, the
    whole step, as a restore does (done when a restore has failed, to tell damage from a
    mismatch between the checkpoint and the model). `items` limits the check to those items.
    """
    step_dir = os.path.join(directory, str(step))
    denied = _unreadable(step_dir)
    item = os.path.relpath(denied, step_dir).split(os.sep)[0] if denied else None
    if denied is not None and (item in items or item not in ITEMS):
        # Checked first: an unreadable directory looks missing below.
        return [Damage(step, item if item in ITEMS else "", denied, PERMISSION_DENIED)]
    found: list[Damage] = []
    for item in items:
        item_dir = os.path.join(step_dir, item)
        if not os.path.isdir(item_dir):
            found.append(Damage(step, item, item_dir, "missing"))
        elif item in ARRAY_ITEMS:
            found += [Damage(step, item, f, p) for f, p in _verify_arrays(item_dir, decode)]
        elif item == "assets":
            found += [Damage(step, item, f, p) for f, p in _verify_assets(item_dir)]
        else:
            found += [Damage(step, item, f, p) for f, p in _verify_json(item_dir)]
    return [dataclasses.replace(d, problem=" ".join(d.problem.split())[:300]) for d in found]


def _unreadable(step_dir: str) -> str | None:
    """The first directory or file under `step_dir` this process may not list or read."""
    pending = [step_dir]
    while pending:
        directory = pending.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except PermissionError:
            return directory
        except OSError:  # gone or not a directory: the checks below say so
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
                continue
            try:
                with open(entry.path, "rb"):
                    pass
            except PermissionError:
                return entry.path
            except OSError:
                continue
    return None


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


def _verify_assets(item_dir: str) -> list[tuple[str, str]]:
    """The asset files (bundle.ASSET_FILES) are there, the JSON ones parse, none is empty."""
    problems = []
    for name in bundle.ASSET_FILES:
        path = os.path.join(item_dir, name)
        if not os.path.isfile(path):
            problems.append((path, "missing"))
        elif os.path.getsize(path) == 0:
            problems.append((path, "empty"))
        elif name.endswith(".json"):
            try:
                with open(path, "rb") as f:
                    json.loads(f.read())
            except (OSError, ValueError) as err:
                problems.append((path, f"not valid JSON: {err}"))
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
