"""The sweep report's plots: training curves per trial (`curves.png`) and closed-loop success
(or the final offline metric) per swept setting (`success.png` / `final.png`).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any

from wallwm_jax.evaluation.stats import wilson_interval
from wallwm_jax.sweep.hyper import format_value, short_keys
from wallwm_jax.sweep.table import TRAIN_TERMS, is_number, mean_std, metric_columns, seed_key
from wallwm_jax.train_log import read_metrics


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
    curves = {r["trial"]: [m for m in read_metrics(os.path.join(trials_root, r["trial"], "run"),
                                                   missing_ok=True) if "loss" in m]
              for r in rows}
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
                       if any(is_number(r.get(m)) for r in rows)), "loss")
        panels, ylabel = [metric], metric
    labels = list(dict.fromkeys(_group_label(r, keys) for r in rows))
    seeds = seed_key(keys) is not None
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.5, 1.1 * len(labels) + 1.5)
                                                       * len(panels), 3.4), squeeze=False)
    for ax, col in zip(axes[0], panels, strict=True):
        for x, label in enumerate(labels):
            members = [r for r in rows if _group_label(r, keys) == label and is_number(r.get(col))]
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
