"""Per-dimension normalisation statistics, computed when a dataset is built and stored with it."""

from __future__ import annotations

import json
import os

import numpy as np

NORM_STATS_FILE = "norm_stats.json"
STAT_NAMES = ("mean", "std", "q01", "q99", "min", "max")
_EPS = 1e-6


def compute_norm_stats(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
    """Statistics of each `arrays[key]` float[N, D] over N, per dimension, as JSON-able lists."""
    stats = {}
    for key, x in arrays.items():
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"norm stats of {key!r} need a non-empty [N, D] array, "
                             f"got shape {x.shape}")
        stats[key] = {
            "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "q01": np.quantile(x, 0.01, axis=0).tolist(),
            "q99": np.quantile(x, 0.99, axis=0).tolist(),
            "min": x.min(0).tolist(), "max": x.max(0).tolist(),
        }
    return stats


def save_norm_stats(path: str, stats: dict) -> None:
    """Write `stats` as JSON to `path` (a file, or a directory that gets norm_stats.json)."""
    if os.path.isdir(path):
        path = os.path.join(path, NORM_STATS_FILE)
    tmp = f"{path}.tmp"
    plain = {key: {name: np.asarray(v).tolist() for name, v in group.items()}
             for key, group in stats.items()}
    with open(tmp, "w") as f:
        json.dump(plain, f, indent=1)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written file


def load_norm_stats(dataset_dir: str) -> dict[str, dict[str, np.ndarray]]:
    """Read `<dataset_dir>/norm_stats.json` (or the file itself) as float32 arrays."""
    path = dataset_dir if dataset_dir.endswith(".json") else os.path.join(
        dataset_dir, NORM_STATS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"normalisation statistics not found: expected {path}; they are written by the "
            "dataset builder (data_builders/metaworld_events build()) next to dataset_info.json")
    with open(path) as f:
        raw = json.load(f)
    return {key: {name: np.asarray(v, np.float32) for name, v in s.items()}
            for key, s in raw.items()}


def normalize(x: np.ndarray, stats: dict[str, np.ndarray], mode: str = "mean_std") -> np.ndarray:
    """x float[..., D] -> normalised; "quantile" maps q01..q99 to -1..1 and clips."""
    if mode == "mean_std":
        return (x - stats["mean"]) / (stats["std"] + _EPS)
    if mode == "quantile":
        lo, hi = stats["q01"], stats["q99"]
        return np.clip(2.0 * (x - lo) / (hi - lo + _EPS) - 1.0, -1.0, 1.0)
    raise ValueError(f"unknown normalisation mode {mode!r}; use 'mean_std' or 'quantile'")


def unnormalize(x: np.ndarray, stats: dict[str, np.ndarray], mode: str = "mean_std") -> np.ndarray:
    """Inverse of `normalize` (exact inside q01..q99 for "quantile")."""
    if mode == "mean_std":
        return x * (stats["std"] + _EPS) + stats["mean"]
    if mode == "quantile":
        lo, hi = stats["q01"], stats["q99"]
        return (x + 1.0) / 2.0 * (hi - lo + _EPS) + lo
    raise ValueError(f"unknown normalisation mode {mode!r}; use 'mean_std' or 'quantile'")
