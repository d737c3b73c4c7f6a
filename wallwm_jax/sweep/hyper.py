"""Sweep grammar (`h.sweep`, `h.product`, `h.zip`), stable trial names, sweep files, validation.

A sweep file defines `get_config(arg)` and `get_sweep(h)`; a trial is a dict of dotted overrides
(`{"config.seed": 0, "config.data.balance_alpha": 0.5}`), checked against the config before
anything runs.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import importlib.util
import itertools
import json
import os
import re
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import ml_collections

from wallwm_jax import config_check
from wallwm_jax.cli import UserError

Trial = dict[str, Any]

_MAX_NAME = 96


class SweepError(ValueError):
    """A user error in a sweep file or on the command line (one line, exit code 2)."""


class Hyper:
    """The `h` passed to `get_sweep(h)`: lists of trials combined by product and zip."""

    @staticmethod
    def sweep(key: str, values: Iterable[Any]) -> list[Trial]:
        """One trial per value of `key`."""
        if not isinstance(key, str) or not key:
            raise SweepError(f"h.sweep key must be a dotted name, got {key!r}")
        return [{key: v} for v in values]

    @staticmethod
    def fixed(key: str, value: Any) -> list[Trial]:
        """A single-trial list: `key` set to `value` in every trial it is combined with."""
        return [{key: value}]

    @staticmethod
    def product(sweeps: Sequence[list[Trial]]) -> list[Trial]:
        """Every combination, the first sweep varying slowest (like nested for-loops)."""
        out = []
        for combo in itertools.product(*sweeps):
            out.append(_merge(combo))
        return out

    @staticmethod
    def zip(sweeps: Sequence[list[Trial]]) -> list[Trial]:
        """Element-wise combination of sweeps of equal length."""
        lengths = [len(s) for s in sweeps]
        if len(set(lengths)) > 1:
            raise SweepError(f"h.zip needs sweeps of equal length, got lengths {lengths}")
        return [_merge(combo) for combo in zip(*sweeps, strict=True)]


def _merge(parts: Iterable[Trial]) -> Trial:
    out: Trial = {}
    for part in parts:
        for key, value in part.items():
            if key in out:
                raise SweepError(f"key {key!r} is set by two combined sweeps")
            out[key] = value
    return out


def config_key(key: str) -> str:
    """`config.data.balance_alpha` -> `data.balance_alpha` (the path inside the config)."""
    return key[len("config."):] if key.startswith("config.") else key


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each key's shortest unique dotted suffix (`config.optimizer.name` -> `name`)."""
    parts = {k: config_key(k).split(".") for k in keys}
    out = {}
    for key, p in parts.items():
        for n in range(1, len(p) + 1):
            suffix = ".".join(p[-n:])
            if all(".".join(q[-n:]) != suffix for k2, q in parts.items() if k2 != key):
                out[key] = suffix
                break
        else:
            out[key] = config_key(key)
    return out


def format_value(value: Any) -> str:
    """A short, stable text for a swept value (used in names and tables)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(format_value(v) for v in value)
    return str(value)


def trial_names(trials: Sequence[Trial]) -> list[str]:
    """Stable, filesystem-safe names from the overrides alone (`alpha=0.5,seed=1`).

    Keys are shortened to their shortest unique suffix over the whole sweep; a long name is cut
    and gets a hash of the full overrides, so it stays unique and the same on every run.
    """
    keys = list(dict.fromkeys(k for t in trials for k in t))
    short = short_keys(keys)
    names = []
    for trial in trials:
        text = ",".join(f"{short[k]}={format_value(v)}" for k, v in trial.items()) or "base"
        name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)
        digest = hashlib.sha1(json.dumps(trial, sort_keys=True, default=repr).encode())
        if len(name) > _MAX_NAME or name != text:
            name = f"{name[:_MAX_NAME - 9]}~{digest.hexdigest()[:8]}"
        names.append(name)
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SweepError(f"the sweep has duplicate trials: {sorted(dupes)}")
    return names


@dataclasses.dataclass
class SweepSpec:
    """A loaded sweep file: its base config, trials, evaluation and slurm settings."""

    path: str
    arg: str | None
    config: ml_collections.ConfigDict
    trials: list[Trial]
    names: list[str]
    eval: dict[str, Any]
    resources: dict[str, Any]

    @property
    def spec(self) -> str:
        """`path[:arg]`, as given to the trial processes."""
        return self.path if self.arg is None else f"{self.path}:{self.arg}"


def load_module(path: str) -> ModuleType:
    """Import a sweep (or config) file by path."""
    if not os.path.isfile(path):
        raise SweepError(f"sweep file {path} does not exist")
    spec = importlib.util.spec_from_file_location(
        "wallwm_sweep_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_spec(spec: str) -> tuple[str, str | None]:
    """`experiments/sweeps/balance.py:size=tiny` -> (path, "size=tiny")."""
    path, sep, arg = spec.partition(":")
    return path, (arg if sep else None)


def base_config(module: ModuleType, arg: str | None) -> ml_collections.ConfigDict:
    """The sweep file's `get_config(arg)` (no argument when `arg` is None)."""
    if not hasattr(module, "get_config"):
        raise SweepError(f"{module.__file__} has no get_config(arg)")
    return module.get_config(arg) if arg is not None else module.get_config()


def load_sweep(spec: str, config: ml_collections.ConfigDict | None = None, *,
               check_data: bool = False) -> SweepSpec:
    """Load and validate a sweep file; `config` (already overridden by the CLI) replaces
    `get_config(arg)` when given. `check_data` also checks each trial's dataset exists."""
    path, arg = split_spec(spec)
    module = load_module(path)
    if config is None:
        config = base_config(module, arg)
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"{path} has no get_sweep(h)")
    trials = list(module.get_sweep(Hyper()))
    if not trials:
        raise SweepError(f"{path}: get_sweep(h) returned an empty sweep (no trials)")
    for trial in trials:
        if not isinstance(trial, dict):
            raise SweepError(f"{path}: a trial must be a dict of overrides, got {trial!r}")
    validate(config, trials, check_data=check_data)
    names = trial_names(trials)
    settings = module.get_eval() if hasattr(module, "get_eval") else {}
    if isinstance(settings, (str, list, tuple)):
        settings = {"suites": settings}
    resources = module.get_resources() if hasattr(module, "get_resources") else {}
    return SweepSpec(os.path.abspath(path), arg, config, trials, names, dict(settings),
                     dict(resources))


def all_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted leaf and sub-dict path of `config`."""
    out = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, ml_collections.ConfigDict):
            out.extend(all_paths(value, path + "."))
    return out


def validate(config: ml_collections.ConfigDict, trials: Sequence[Trial], *,
             check_data: bool = False) -> None:
    """Every swept key exists, every value fits its field's type and every trial's whole
    config passes `config_check.validate`; raise SweepError naming the first key/value or
    trial that does not (with close matches for a misspelt key)."""
    paths = all_paths(config)
    for trial in trials:
        for key, value in trial.items():
            path = config_key(key)
            if path not in paths:
                close = difflib.get_close_matches(path, paths, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join('config.' + c for c in close)}?" if close \
                    else ""
                raise SweepError(f"swept field {key!r} is not in the config{hint}")
            try:
                apply_overrides(config.copy_and_resolve_references(), {key: value})
            except (TypeError, ValueError, KeyError) as e:
                current = _get(config, path)
                raise SweepError(
                    f"swept value {value!r} for {key!r} does not fit the field "
                    f"({type(current).__name__} {current!r}): {e}") from None
    # Every trial's fields first, then (slower, the same for most trials) its datasets.
    configs = [apply_overrides(copy.deepcopy(config), dict(t)) for t in trials]  # keeps refs
    checks = [functools.partial(config_check.validate, check_data=False)]
    if check_data:
        checks.append(config_check.check_datasets)
    for check in checks:
        for trial, trial_config in zip(trials, configs, strict=True):
            try:
                check(trial_config)
            except UserError as e:
                values = ", ".join(f"{k}={format_value(v)}" for k, v in trial.items())
                raise SweepError(f"trial {values}: {e}") from None


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
    node = config
    for part in path.split("."):
        node = node[part]
    return node


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]
                    ) -> ml_collections.ConfigDict:
    """Set each dotted override in place (a list for a tuple field becomes a tuple: JSON
    round trips) and return the config."""
    for key, value in overrides.items():
        *parents, leaf = config_key(key).split(".")
        node = config
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"{key} is not in the config")
        current = node[leaf]
        if isinstance(value, list) and isinstance(current, tuple):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        if isinstance(current, ml_collections.ConfigDict) and not isinstance(
                value, (dict, ml_collections.ConfigDict)):
            raise TypeError(f"{key} is a group of fields, not a value")
        if isinstance(value, bool) != isinstance(current, bool) and current is not None \
                and value is not None:
            raise TypeError(f"{key} is {type(current).__name__}, got {type(value).__name__}")
        setattr(node, leaf, value)
    return config
