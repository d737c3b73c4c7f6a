"""Look at an event dataset: a printed summary and PNG pictures (film strip of an episode,
events/durations histograms, cluster sizes, 2-D PCA of the event embeddings).

  python -m wallwm_jax.data.inspect <dataset_dir> [--out DIR] [--split train] [--episode 0]
"""

from __future__ import annotations

import os
import textwrap
from collections import Counter

import numpy as np
from absl import flags

from wallwm_jax import cli
from wallwm_jax.data import event_index as event_index_lib
from wallwm_jax.data.episodes import open_dataset

_STRIP_FRAMES = 12  # frames in a film strip (at least one per event)
_INDEX_CLUSTERS = 4  # k when inspect has to build a missing event index


def dataset_summary(dataset_dir: str, split: str = "train") -> dict:
    """Episode/step/event counts, event-duration stats, tasks, phases, success rate of `split`."""
    per_episode, durations, tasks, phases, success = [], [], Counter(), Counter(), []
    steps = 0
    for ep in event_index_lib.read_episodes_without_images(dataset_dir, split):
        steps += len(ep["steps/action"])
        per_episode.append(len(ep["events/start"]))
        durations += (ep["events/end"] - ep["events/start"]).tolist()
        tasks[ep["episode_metadata/task"]] += 1
        phases.update(ep["events/phase"])
        if ep["episode_metadata/success"] is not None:
            success.append(ep["episode_metadata/success"])
    if not per_episode:
        raise ValueError(f"{dataset_dir} split '{split}' has no episodes")
    n, d = np.asarray(per_episode), np.asarray(durations)
    return {
        "split": split, "episodes": len(n), "steps": steps, "events": int(n.sum()),
        "events_per_episode": {"mean": float(n.mean()), "min": int(n.min()), "max": int(n.max())},
        "event_duration": {"mean": float(d.mean()), "median": float(np.median(d)),
                           "min": int(d.min()), "max": int(d.max())},
        "tasks": dict(sorted(tasks.items())), "phases": dict(sorted(phases.items())),
        "success_rate": float(np.mean(success)) if success else None,
        "events_per_episode_all": n.tolist(), "event_durations_all": d.tolist(),
    }


def format_dataset_summary(s: dict) -> str:
    """The summary as readable lines."""
    e, d = s["events_per_episode"], s["event_duration"]
    success = "n/a" if s["success_rate"] is None else f"{s['success_rate']:.1%}"
    return "\n".join([
        f"split {s['split']}: {s['episodes']} episodes, {s['steps']} steps, {s['events']} events",
        f"events per episode: mean {e['mean']:.2f}, min {e['min']}, max {e['max']}",
        f"event duration (steps): mean {d['mean']:.1f}, median {d['median']:.1f}, "
        f"min {d['min']}, max {d['max']}",
        "tasks: " + ", ".join(f"{k} {v}" for k, v in s["tasks"].items()),
        "phases: " + ", ".join(f"{k} {v}" for k, v in s["phases"].items()),
        f"success rate: {success}"])


def film_strip_steps(starts: np.ndarray, ends: np.ndarray, frames: int) -> list[int]:
    """Steps to show: about `frames` spread over the episode by duration, >= 1 per event."""
    durations = ends - starts
    share = np.maximum(1, np.round(frames * durations / durations.sum())).astype(int)
    steps = []
    for s, t, m in zip(starts, ends, share, strict=True):
        steps += sorted(set(np.linspace(s, t - 1, min(m, t - s)).round().astype(int).tolist()))
    return steps


def plot_film_strip(episode: dict, path: str, title: str, frames: int = _STRIP_FRAMES) -> str:
    """Frames across one episode, event boundaries as red lines, captions under each event."""
    import matplotlib.pyplot as plt

    images = episode["steps/observation/image"]
    starts, ends = episode["events/start"], episode["events/end"]
    steps = film_strip_steps(starts, ends, frames)
    h, w = images.shape[1:3]
    gap = max(1, w // 16)
    strip = np.full((h, len(steps) * (w + gap) - gap, 3), 255, np.uint8)
    for i, t in enumerate(steps):
        strip[:, i * (w + gap):i * (w + gap) + w] = images[t]
    event_of = np.searchsorted(ends, steps, side="right")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(steps)), 3.2))
    ax.imshow(strip, extent=(0, strip.shape[1], h, 0))
    for i, t in enumerate(steps):
        ax.text(i * (w + gap) + w / 2, -0.04 * h, f"t={t}", ha="center", va="bottom",
                fontsize=7)
    for k in range(len(starts)):
        cols = np.flatnonzero(event_of == k)
        x0, x1 = cols[0] * (w + gap), cols[-1] * (w + gap) + w
        if k > 0:
            ax.axvline(x0 - gap / 2, color="red", linewidth=2)
        width_chars = max(10, int(14 * len(cols)))
        ax.text((x0 + x1) / 2, h * 1.08, textwrap.fill(
            f"[{k}] {episode['events/phase'][k]}: {episode['events/caption'][k]}", width_chars),
            ha="center", va="top", fontsize=8)
    ax.set_xlim(0, strip.shape[1])
    ax.set_ylim(h * 1.75, -0.3 * h)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_histograms(summary: dict, path: str) -> str:
    """Histograms of events per episode and of event durations."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n, d = summary["events_per_episode_all"], summary["event_durations_all"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.hist(n, bins=np.arange(min(n), max(n) + 2) - 0.5, color="tab:blue", edgecolor="black")
    a.set(xlabel="events per episode", ylabel="episodes", title="events per episode")
    a.xaxis.set_major_locator(MaxNLocator(integer=True))
    a.yaxis.set_major_locator(MaxNLocator(integer=True))
    b.hist(d, bins=min(30, max(5, len(set(d)))), color="tab:orange", edgecolor="black")
    b.set(xlabel="event duration (steps)", ylabel="events", title="event durations")
    fig.tight_layout()
    return _save(fig, path)


def plot_cluster_sizes(table: event_index_lib.EventIndexTable, path: str) -> str:
    """Bars of cluster sizes, stacked by ground-truth phase (shows how pure each cluster is)."""
    import matplotlib.pyplot as plt

    clusters = np.unique(table.cluster)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(clusters) + 2), 3.2))
    bottom = np.zeros(len(clusters))
    for phase in sorted(set(table.phase.tolist())):
        counts = np.asarray([np.sum((table.cluster == c) & (table.phase == phase))
                             for c in clusters], float)
        ax.bar([str(c) for c in clusters], counts, bottom=bottom, label=phase)
        bottom += counts
    ax.set(xlabel="cluster", ylabel="events", title=f"event clusters (k={len(clusters)})")
    ax.legend(fontsize=7, title="phase", title_fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_embedding_pca(table: event_index_lib.EventIndexTable, path: str) -> str:
    """The event embeddings projected on their first two principal components, by phase."""
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    xy = PCA(n_components=2, random_state=0).fit_transform(table.embeddings.astype(np.float64))
    fig, ax = plt.subplots(figsize=(5, 4))
    for phase in sorted(set(table.phase.tolist())):
        m = table.phase == phase
        ax.scatter(xy[m, 0], xy[m, 1], s=18, label=phase, alpha=0.8)
    ax.set(xlabel="PC 1", ylabel="PC 2", title="event embeddings (PCA), coloured by phase")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def inspect_dataset(dataset_dir: str, out_dir: str, *, split: str = "train",
                    episode: int = 0) -> dict:
    """Summarise `split` and write the four pictures to `out_dir`; returns summary + paths.

    Uses the stored event index; if there is none, builds one with k=4 and stores it next to
    the dataset. A stale index raises (rebuild it with `python -m wallwm_jax.data.event_index`).
    """
    import matplotlib

    matplotlib.use("Agg")
    os.makedirs(out_dir, exist_ok=True)
    summary = dataset_summary(dataset_dir, split)
    if not 0 <= episode < summary["episodes"]:
        raise ValueError(f"--episode {episode} is out of range: split '{split}' has "
                         f"{summary['episodes']} episodes")
    ep = open_dataset(dataset_dir, split)[episode]  # decodes the frames of this episode only
    try:
        table = event_index_lib.load_event_index(dataset_dir, split)
        index_note = "loaded"
    except FileNotFoundError:
        table = event_index_lib.build_event_index(
            dataset_dir, split, num_clusters=min(_INDEX_CLUSTERS, summary["events"]))
        event_index_lib.save(table, dataset_dir)
        index_note = "built (missing) and saved"
    title = (f"{split} episode {episode}: {ep['episode_metadata/task']} - "
             f"{ep['episode_metadata/instruction']}")
    pictures = {
        "film_strip": plot_film_strip(ep, os.path.join(out_dir, f"film_strip_{split}_"
                                                                f"{episode}.png"), title),
        "histograms": plot_histograms(summary, os.path.join(out_dir, f"histograms_{split}.png")),
        "cluster_sizes": plot_cluster_sizes(table, os.path.join(out_dir,
                                                                f"cluster_sizes_{split}.png")),
        "embedding_pca": plot_embedding_pca(table, os.path.join(out_dir,
                                                                f"embedding_pca_{split}.png")),
    }
    return {"summary": summary, "event_index": event_index_lib.summarize(table),
            "event_index_path": event_index_lib.index_paths(dataset_dir, split)[0],
            "event_index_note": index_note, "pictures": pictures}


def inspect_and_print(dataset_dir: str, out_dir: str = "dataset_inspect",
                      split: str = "train", episode: int = 0) -> dict:
    """Print the dataset summary and the paths of the pictures written; return the result."""
    result = inspect_dataset(dataset_dir, out_dir, split=split, episode=episode)
    print(format_dataset_summary(result["summary"]))
    print(f"event index ({result['event_index_note']}: {result['event_index_path']}):")
    print(event_index_lib.format_summary(result["event_index"]))
    for name, path in result["pictures"].items():
        print(f"wrote {name}: {path}")
    return result


def define_flags() -> None:
    """The CLI's flags (defined only when run as a program, so importers keep theirs)."""
    flags.DEFINE_string("out", "dataset_inspect", "Picture directory.")
    flags.DEFINE_string("split", "train", "Dataset split.")
    flags.DEFINE_integer("episode", 0, "Episode drawn as a film strip.")


def main(argv: list[str]) -> None:
    """CLI: `python -m wallwm_jax.data.inspect DATASET_DIR [--out DIR]`."""
    (dataset_dir,) = cli.positional(argv, "DATASET_DIR")
    fl = flags.FLAGS
    inspect_and_print(dataset_dir, fl.out, split=fl.split, episode=fl.episode)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
