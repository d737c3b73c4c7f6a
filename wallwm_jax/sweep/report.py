"""Sweep report: `results.csv` / `results.md` (one row per trial, plus mean ± std over seeds)
and the plots `plots/curves.png`, `plots/success.png` (or `plots/final.png` without
closed-loop results), all re-rendered from the trial directories alone.
"""

from __future__ import annotations

import csv
import math
import os
import textwrap
from collections.abc import Sequence
from typing import Any

from wallwm_jax.evaluation.stats import wilson_interval
from wallwm_jax.sweep.hyper import config_key, format_value, short_keys
from wallwm_jax.sweep.runner import read_json, read_status

TRAIN_TERMS = ("loss", "loss/action", "loss/caption", "loss/duration", "loss/world")


def _metrics(run_dir: str) -> list[dict[str, float]]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    import json

    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut by a crash
                continue
    return rows


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
    metrics = _metrics(os.path.join(trial_dir, "run"))
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


def _is_number(v: Any) -> bool:
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
    cols = list(dict.fromkeys(k for r in rows for k in r if k not in skip))
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
            values = [m[col] for m in members if _is_number(m.get(col))]
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
    trials: per-seed rates, their mean with a t interval, the pooled successes/n, and the
    pooled successes/n per task. {suite: {setting: {...}}}."""
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
                                  {"rates": [], "successes": 0, "n": 0, "tasks": {}})
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


def _success_markdown(table: dict[str, Any]) -> list[str]:
    md = []
    for suite, by in table.items():
        settings = list(by)
        md += ["", f"## Closed-loop success on {suite}", "",
               "| setting | seeds | mean ± std over seeds | t 95% of the mean | pooled |",
               "|---|---|---|---|---|"]
        for name, e in by.items():
            lo, hi = e["t95"]
            t95 = (f"[{max(lo, 0.0):.0%}, {min(hi, 1.0):.0%}]"  # a rate: clipped to [0, 1]
                   if math.isfinite(lo) else "")
            wlo, whi = wilson_interval(e["successes"], e["n"])
            md.append(f"| {name} | {len(e['rates'])} | {e['mean']:.0%} ± {e['std']:.0%} | "
                      f"{t95} | {e['successes']}/{e['n']} [{wlo:.2f}, {whi:.2f}] |")
        tasks = sorted({t for e in by.values() for t in e["tasks"]})
        if tasks:
            md += ["", f"Per task on {suite}, pooled over seeds (successes/episodes):", "",
                   "| task | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
            for task in tasks:
                cells = [by[s]["tasks"].get(task) for s in settings]
                md.append(f"| {task} | " + " | ".join(
                    f"{k}/{n}" if n else "" for k, n in (c or (0, 0) for c in cells)) + " |")
    return md


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
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, ["trial", *keys, "status", *cols, "error"])
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


# ---------------------------------------------------------------------------------- plots


def _group_label(row: dict[str, Any], keys: Sequence[str]) -> str:
    seed = seed_key(keys)
    short = short_keys(keys)
    parts = [f"{short[k]}={format_value(row.get(k))}" for k in keys if k != seed]
    return "\n".join(parts) or "all"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(trials_root: str, rows: Sequence[dict[str, Any]], keys: Sequence[str],
                path: str) -> None:
    """Training loss terms vs step, one line per trial (one colour per setting, seeds share
    it), from each trial's metrics.jsonl."""
    plt = _pyplot()
    curves = {r["trial"]: [m for m in _metrics(os.path.join(trials_root, r["trial"], "run"))
                           if "loss" in m] for r in rows}
    terms = [t for t in TRAIN_TERMS if any(t in m for c in curves.values() for m in c)] or ["loss"]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3.0), squeeze=False)
    labels = list(dict.fromkeys(_group_label(r, keys) for r in rows))
    colours = {g: plt.cm.tab10(i % 10) for i, g in enumerate(labels)}
    for ax, term in zip(axes[0], terms, strict=True):
        seen = set()
        for row in rows:
            pts = [(m["step"], m[term]) for m in curves[row["trial"]] if term in m]
            if not pts:
                continue
            label = _group_label(row, keys)
            ax.plot(*zip(*pts, strict=True), color=colours[label], lw=1.2, alpha=0.8,
                    label=None if label in seen else label.replace("\n", ", "))
            seen.add(label)
        ax.set_title(term, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    ncol = min(len(names), 3) or 1
    rows = -(-len(names) // ncol)
    fig.set_size_inches(3.2 * len(terms), 3.0 + 0.22 * rows)
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, min(0.5, 0.22 * rows / (3.0 + 0.22 * rows) + 0.02), 1, 1))
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_summary(rows: Sequence[dict[str, Any]], keys: Sequence[str], plots_dir: str) -> str:
    """Closed-loop success per swept setting (`success.png`): Wilson 95% intervals per trial,
    or mean ± std over seeds with the seeds as dots. Without closed-loop results, the final
    offline metric (`final.png`). Returns the figure's path."""
    plt = _pyplot()
    suites = [c for c in metric_columns(rows, keys)
              if c.startswith("cl/") and c.count("/") == 1 and c != "cl/overall"]
    if len(suites) > 1:
        suites.append("cl/overall")
    closed_loop = bool(suites)
    if closed_loop:
        panels, ylabel = suites, "closed-loop success"
    else:
        metric = next((m for m in ("eval/action_mse", "eval/loss", "loss")
                       if any(_is_number(r.get(m)) for r in rows)), "loss")
        panels, ylabel = [metric], metric
    labels = list(dict.fromkeys(_group_label(r, keys) for r in rows))
    seeds = seed_key(keys) is not None
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.5, 1.1 * len(labels) + 1.5)
                                                       * len(panels), 3.4), squeeze=False)
    for ax, col in zip(axes[0], panels, strict=True):
        for x, label in enumerate(labels):
            members = [r for r in rows if _group_label(r, keys) == label and _is_number(r.get(col))]
            if not members:
                continue
            values = [r[col] for r in members]
            if seeds:
                mean, std, n = mean_std(values)
                ax.errorbar([x], [mean], yerr=[[std], [std]], fmt="o", color="C0", capsize=4)
                ax.scatter([x] * n, values, s=12, color="C1", alpha=0.7, zorder=3)
                if closed_loop:  # all seeds' episodes pooled: Wilson 95%, in grey
                    k = sum(int(r[f"{col}/successes"]) for r in members)
                    m = sum(int(r[f"{col}/n"]) for r in members)
                    lo, hi = wilson_interval(k, m)
                    ax.errorbar([x + 0.12], [k / m], yerr=[[k / m - lo], [hi - k / m]],
                                fmt="s", ms=3, color="0.6", capsize=3)
            elif closed_loop:
                s = sum(int(r[f"{col}/successes"]) for r in members)
                n = sum(int(r[f"{col}/n"]) for r in members)
                lo, hi = wilson_interval(s, n)
                ax.errorbar([x], [s / n], yerr=[[s / n - lo], [hi - s / n]], fmt="o",
                            color="C0", capsize=4)
            else:
                ax.plot([x], values[:1], "o", color="C0")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        if closed_loop:
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(col.removeprefix("cl/"), fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    note = ("mean ± std over seeds (dots: seeds" + ("; grey: all episodes pooled, Wilson 95%)"
                                                     if closed_loop else ")") if seeds else
            "Wilson 95% intervals" if closed_loop else "one trial per setting")
    # Wrapped to the figure's width (~14 characters of 8-pt text per inch): a narrow figure
    # of two settings cut the one-line note off at both edges.
    note = textwrap.fill(note, width=max(30, int(fig.get_size_inches()[0] * 14)))
    fig.suptitle(note, fontsize=8, y=0.02, va="bottom")
    fig.tight_layout(rect=(0, 0.05 * (note.count("\n") + 1), 1, 1))
    path = os.path.join(plots_dir, "success.png" if closed_loop else "final.png")
    stale = os.path.join(plots_dir, "final.png" if closed_loop else "success.png")
    if os.path.exists(stale):  # from an earlier report of the same sweep
        os.remove(stale)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
