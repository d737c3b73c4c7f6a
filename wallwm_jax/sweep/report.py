"""Sweep report: `results.csv` / `results.md` (one row per trial, plus mean ± std over seeds)
and the plots `plots/curves.png`, `plots/success.png` (or `plots/final.png` without
closed-loop results), all re-rendered from the trial directories alone. The rows and their
statistics are `table`'s, the figures `plots`'.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import Any

from wallwm_jax.evaluation.stats import wilson_interval
from wallwm_jax.sweep.hyper import format_value, short_keys
from wallwm_jax.sweep.plots import plot_curves, plot_summary
from wallwm_jax.sweep.runner import read_json
from wallwm_jax.sweep.table import (
    LABEL_PREFIXES,
    TRAIN_TERMS,
    aggregate,
    mean_std,
    metric_columns,
    seed_key,
    success_by_setting,
    t_interval,
    trial_row,
)

# Re-exported: callers import the report's arithmetic from here.
__all__ = ["TRAIN_TERMS", "aggregate", "mean_std", "metric_columns", "plot_curves",
           "plot_summary", "seed_key", "success_by_setting", "t_interval", "trial_row",
           "write_report"]


def _success_markdown(table: dict[str, Any]) -> list[str]:
    md = []
    for suite, by in table.items():
        settings = list(by)
        splits = ", ".join(dict.fromkeys(s for e in by.values() for s in e["splits"]))
        md += ["", f"## Closed-loop success on {suite} ({splits} scenes)", "",
               "| setting | seeds | mean ± std over seeds | t 95% of the mean | pooled | "
               "privileged inputs |", "|---|---|---|---|---|---|"]
        for name, e in by.items():
            lo, hi = e["t95"]
            t95 = (f"[{max(lo, 0.0):.0%}, {min(hi, 1.0):.0%}]"  # a rate: clipped to [0, 1]
                   if math.isfinite(lo) else "")
            wlo, whi = wilson_interval(e["successes"], e["n"])
            md.append(f"| {name} | {len(e['rates'])} | {e['mean']:.0%} ± {e['std']:.0%} | "
                      f"{t95} | {e['successes']}/{e['n']} [{wlo:.2f}, {whi:.2f}] | "
                      f"{', '.join(e['privileged'])} |")
        tasks = sorted({t for e in by.values() for t in e["tasks"]})
        if tasks:
            md += ["", f"Per task on {suite}, pooled over seeds (successes/episodes):", "",
                   "| task | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
            for task in tasks:
                cells = [by[s]["tasks"].get(task) for s in settings]
                md.append(f"| {task} | " + " | ".join(
                    f"{k}/{n}" if n else "" for k, n in (c or (0, 0) for c in cells)) + " |")
    return md


def _label_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per suite, the scene split(s) and privileged inputs (PRIVILEGED_INPUTS keys) behind
    the closed-loop columns, by trial where the trials differ."""
    names = {"split": "scenes", "privileged": "privileged inputs"}
    suites = dict.fromkeys(k.split("/", 1)[1] for r in rows for k in r
                           if k.startswith("split/"))
    out = []
    for suite in suites:
        parts = []
        for what, name in names.items():
            values: dict[str, list[str]] = {}
            for r in rows:
                if f"{what}/{suite}" in r:
                    values.setdefault(r[f"{what}/{suite}"], []).append(r["trial"])
            parts.append(f"{name}: " + (next(iter(values)) if len(values) == 1 else "; ".join(
                f"{v} ({', '.join(trials)})" for v, trials in values.items())))
        out.append(f"- `cl/{suite}`: " + ", ".join(parts))
    return [*out, ""] if out else []


def _fmt(value: Any, n_all: int | None = None) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple) and len(value) == 3:
        mean, std, n = value
        return f"{mean:.4g} ± {std:.2g}" + ("" if n == n_all else f" (n={n})")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _md_table(header: Sequence[str], body: Sequence[Sequence[Any]],
              n_col: int | None = None) -> str:
    """A markdown table; with `n_col`, "(n=k)" shows only where k differs from that column."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in body:
        n_all = r[n_col] if n_col is not None else None
        lines.append("| " + " | ".join(_fmt(v, n_all).replace("|", "/") for v in r) + " |")
    return "\n".join(lines)


def _success_cell(row: dict[str, Any], col: str) -> str:
    n = row.get(f"{col}/n")
    if n is None:
        return _fmt(row.get(col))
    s = row[f"{col}/successes"]
    lo, hi = wilson_interval(int(s), int(n))
    return f"{s / n:.0%} ({s}/{n}, [{lo:.2f}, {hi:.2f}])"


def write_report(workdir: str) -> dict[str, Any]:
    """Re-render results.csv, results.md and the plots from `workdir`; return the tables."""
    info = read_json(os.path.join(workdir, "sweep.json"))
    trials_root = os.path.join(workdir, "trials")
    names = info.get("names") or sorted(os.listdir(trials_root))
    names = [n for n in names if os.path.isdir(os.path.join(trials_root, n))]
    keys = info.get("keys") or list(dict.fromkeys(
        k for n in names
        for k in read_json(os.path.join(trials_root, n, "trial.json")).get("overrides", {})))
    rows = [trial_row(os.path.join(trials_root, n), keys) for n in names]
    short = short_keys(keys)
    cols = metric_columns(rows, keys)
    labels = list(dict.fromkeys(k for r in rows for k in r if k.startswith(LABEL_PREFIXES)))
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ["trial", *keys, "status", *cols, *labels, "error"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    # markdown: the headline columns (results.csv has every one)
    shown = [c for c in cols if not c.endswith(("/n", "/successes"))
             and not c.startswith(("eval/loss/", "eval/action_mse_cluster"))
             and c != "eval/world_mse"]
    body = [[r["trial"], *[format_value(r.get(k)) for k in keys], r["status"],
             *[_success_cell(r, c) if c.startswith("cl/") else r.get(c) for c in shown]]
            for r in rows]
    md = [f"# Sweep {info.get('sweep', workdir)}", "",
          f"{len(rows)} trials: " + ", ".join(
              f"{sum(r['status'] == s for r in rows)} {s}"
              for s in dict.fromkeys(r["status"] for r in rows)), "",
          *_label_lines(rows),
          _md_table(["trial", *[short[k] for k in keys], "status", *shown], body)]
    agg = aggregate(rows, keys)
    if agg:
        others = [k for k in keys if k != seed_key(keys)]
        agg_cols = [c for c in shown if any(c in a for a in agg) and c != "steps"]
        md += ["", f"## Mean ± std over {short[seed_key(keys)]}", "",
               _md_table([*[short[k] for k in others], "n", *agg_cols],
                         [[*[format_value(a.get(k)) for k in others], a["n"],
                           *[a.get(c) for c in agg_cols]] for a in agg], n_col=len(others))]
    suites = list(dict.fromkeys(
        s for n in names
        for s in read_json(os.path.join(trials_root, n, "trial.json")).get("suites", [])))
    by_setting = success_by_setting(trials_root, rows, keys, suites)
    md += _success_markdown(by_setting)
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        md += ["", "## Failed trials", ""]
        md += [f"- `{r['trial']}`: {r.get('error', '')} (log: trials/{r['trial']}/log.txt)"
               for r in failed]
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    plots = os.path.join(workdir, "plots")
    os.makedirs(plots, exist_ok=True)
    plot_curves(trials_root, rows, keys, os.path.join(plots, "curves.png"))
    figure = plot_summary(rows, keys, plots)
    return {"rows": rows, "aggregate": agg, "keys": keys, "markdown": "\n".join(md),
            "figure": figure, "success": by_setting}
