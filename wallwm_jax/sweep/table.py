"""A sweep's results as data: one row per trial, read from its directory alone (overrides,
status, train and offline-eval metrics, closed-loop success), and the statistics over seeds
that the report's tables and plots show.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from wallwm_jax.sweep.hyper import config_key, format_value
from wallwm_jax.sweep.runner import read_json, read_status
from wallwm_jax.train_log import read_metrics

TRAIN_TERMS = ("loss", "loss/action", "loss/caption", "loss/duration", "loss/world")
LABEL_PREFIXES = ("split/", "privileged/")  # per-suite text columns, not metrics
PRE_SPLIT = "pre-split"  # results measured before dev/test scene splits


def eval_labels(results: dict[str, Any]) -> tuple[str, str]:
    """(scene split, privileged inputs) of one results.json, for the tables: results from
    before splits say "pre-split"; the inputs of results from before they were recorded are
    worked out from the mode, planner and state they do record."""
    from wallwm_jax.evaluation.harness import privileged_inputs

    inputs = results.get("privileged_inputs")
    if inputs is None:
        inputs = privileged_inputs(results.get("mode", ""), results.get("planner"),
                                   bool(results.get("privileged_state", False)))
    return results.get("split") or PRE_SPLIT, "+".join(inputs) or "none"


def trial_row(trial_dir: str, keys: Sequence[str]) -> dict[str, Any]:
    """One table row: overrides, status, steps, wall time, final train loss terms, the last
    offline eval metrics and closed-loop success per suite group and overall."""
    trial = read_json(os.path.join(trial_dir, "trial.json"))
    status = read_status(trial_dir)
    overrides = trial.get("overrides", {})
    row: dict[str, Any] = {"trial": os.path.basename(trial_dir)}
    for key in keys:
        row[key] = overrides.get(key)
    row["status"] = status.get("status", "pending")
    metrics = read_metrics(os.path.join(trial_dir, "run"), missing_ok=True)
    train = [r for r in metrics if "loss" in r]
    evals = [r for r in metrics if any(k.startswith("eval/") for k in r)]
    if train:
        row["steps"] = int(train[-1]["step"])
    if "train_wall_s" in status:
        row["wall_s"] = float(status["train_wall_s"]) + float(status.get("eval_wall_s", 0.0))
    for term in TRAIN_TERMS:
        if train and term in train[-1]:
            row[term] = train[-1][term]
    if evals:
        row.update({k: v for k, v in evals[-1].items() if k.startswith("eval/")})
    total_s = total_n = 0
    for suite in trial.get("suites", []):
        res = read_json(os.path.join(trial_dir, "eval", suite, "results.json"))
        summary = res.get("summary", {})
        if not summary:
            continue
        overall = summary["overall"]
        row[f"split/{suite}"], row[f"privileged/{suite}"] = eval_labels(res)
        row[f"cl/{suite}"] = overall["success"]
        row[f"cl/{suite}/successes"], row[f"cl/{suite}/n"] = overall["successes"], overall["n"]
        total_s, total_n = total_s + overall["successes"], total_n + overall["n"]
        groups = summary.get("groups", {})
        for group, g in sorted(groups.items()) if len(groups) > 1 else ():
            row[f"cl/{suite}/{group}"] = g["success"]
    if total_n and len(trial.get("suites", [])) > 1:
        row["cl/overall"] = total_s / total_n
        row["cl/overall/successes"], row["cl/overall/n"] = total_s, total_n
    if row["status"] == "failed":
        tail = (status.get("error") or "").strip().splitlines()
        row["error"] = tail[-1] if tail else f"exit {status.get('returncode')}"
    return row


def seed_key(keys: Sequence[str]) -> str | None:
    """The swept key that is the seed axis (`config.seed` or `seed`), if any."""
    for key in keys:
        if config_key(key) == "seed":
            return key
    return None


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool): a value the tables and plots can average."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


def metric_columns(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """Numeric result columns in a stable order (train, eval, closed loop)."""
    skip = set(keys) | {"trial", "status", "error"}
    cols = list(dict.fromkeys(k for r in rows for k in r
                              if k not in skip and not k.startswith(LABEL_PREFIXES)))
    order = lambda c: ({"steps": 0, "wall_s": 1}.get(c, 2 if c in TRAIN_TERMS else
                        3 if c.startswith("eval/") else 4), c)
    return sorted(cols, key=order)


def aggregate(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Mean ± std over the seed axis: one row per setting of the other swept keys, each
    metric as (mean, std, n) over the trials that have it; [] without a seed axis."""
    seed = seed_key(keys)
    if seed is None:
        return []
    others = [k for k in keys if k != seed]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(repr(row.get(k)) for k in others), []).append(row)
    out = []
    for members in groups.values():
        agg: dict[str, Any] = {k: members[0].get(k) for k in others}
        agg["n"] = len(members)
        agg["done"] = sum(m["status"] == "done" for m in members)
        for col in metric_columns(members, keys):
            if col.endswith(("/n", "/successes")):
                continue
            values = [m[col] for m in members if is_number(m.get(col))]
            if values:
                agg[col] = mean_std(values)
        out.append(agg)
    return out


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of `values` (seeds); (nan, nan) below two values."""
    from scipy import stats

    mean, std, n = mean_std(values)
    if n < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def _setting(row: dict[str, Any], others: Sequence[str]) -> str:
    return ", ".join(f"{config_key(k)}={format_value(row.get(k))}" for k in others) or "all"


def success_by_setting(trials_root: str, rows: Sequence[dict[str, Any]],
                       keys: Sequence[str], suites: Sequence[str]) -> dict[str, Any]:
    """Closed-loop success per suite and setting of the non-seed keys, over the finished
    trials: per-seed rates, their mean with a t interval, the pooled successes/n, the
    pooled successes/n per task, and the scene splits and privileged inputs of its results.
    {suite: {setting: {...}}}."""
    others = [k for k in keys if k != seed_key(keys)]
    out: dict[str, Any] = {}
    for suite in suites:
        by: dict[str, Any] = {}
        for row in rows:
            res = read_json(os.path.join(trials_root, row["trial"], "eval", suite,
                                         "results.json"))
            summary = res.get("summary")
            if not summary:
                continue
            entry = by.setdefault(_setting(row, others),
                                  {"rates": [], "successes": 0, "n": 0, "tasks": {},
                                   "splits": [], "privileged": []})
            split, privileged = eval_labels(res)
            for key, value in (("splits", split), ("privileged", privileged)):
                if value not in entry[key]:
                    entry[key].append(value)
            entry["rates"].append(summary["overall"]["success"])
            entry["successes"] += summary["overall"]["successes"]
            entry["n"] += summary["overall"]["n"]
            for task, t in summary.get("tasks", {}).items():
                k, n = entry["tasks"].get(task, (0, 0))
                entry["tasks"][task] = (k + t["successes"], n + t["n"])
        for entry in by.values():
            entry["mean"], entry["std"], _ = mean_std(entry["rates"])
            entry["t95"] = t_interval(entry["rates"])
        if by:
            out[suite] = by
    return out
