"""The event index of a dataset split: one row per event, its embedding and k-means cluster.

Built with the dataset (the builders, or `python -m wallwm_jax.data.event_index DIR`) and
stored next to it (`event_index_<split>.npz` + `.json`, written by process 0 through
etils.epath), it feeds cluster-balanced sampling. Training only reads it: a missing or stale
index (see `dataset_fingerprint`) is an error that prints the command that builds it.
Rows are in (episode, event) order, the order of `scan_events`. How an event becomes the
vector k-means clusters (caption text + resampled behaviour) is `event_embedding`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
from absl import flags
from etils import epath

from wallwm_jax import cli
from wallwm_jax.data import statistics
from wallwm_jax.data.episodes import EpisodeSource, open_dataset
from wallwm_jax.data.event_embedding import behaviour_descriptor, embed_events

INDEX_FORMAT = 2
DEFAULT_CLUSTERS = 16
_ARRAY_COLUMNS = ("episode", "event", "start", "end", "phase", "caption", "task", "cluster",
                  "embeddings")


@dataclasses.dataclass(frozen=True)
class EventIndex:
    """One row per event of `split` of a dataset: where it is and, when built by
    `build_event_index`, its caption, embedding and cluster (None from `scan_events`)."""

    episode: np.ndarray  # int64 [N]
    event: np.ndarray  # int64 [N], event number inside its episode
    start: np.ndarray  # int64 [N]
    end: np.ndarray  # int64 [N], exclusive
    phase: np.ndarray | None = None  # str [N]
    caption: np.ndarray | None = None  # str [N]
    task: np.ndarray | None = None  # str [N]
    cluster: np.ndarray | None = None  # int64 [N], in [0, num_clusters)
    embeddings: np.ndarray | None = None  # float32 [N, D], D = text_dims + traj_points * 8
    num_episodes: int = 0
    split: str = ""
    build_args: dict = dataclasses.field(default_factory=dict)
    fingerprint: dict = dataclasses.field(default_factory=dict)  # of the data it indexes

    def __len__(self) -> int:
        return len(self.episode)

    def as_event_index(self) -> EventIndex:
        """The index itself (kept for callers of the former two-type API)."""
        return self


EventIndexTable = EventIndex  # the former name of the stored index


def scan_events(source: EpisodeSource) -> EventIndex:
    """Scan every episode of `source` once and list its events (no clusters)."""
    rows = []
    for e in range(len(source)):
        ep = source[e]
        for k, (s, t) in enumerate(zip(ep["events/start"], ep["events/end"], strict=True)):
            rows.append((e, k, int(s), int(t)))
    if not rows:
        raise ValueError(f"dataset {source.dataset_dir} has no events to sample from")
    cols = np.asarray(rows, dtype=np.int64).T
    return EventIndex(*cols, num_episodes=len(source))


def dataset_fingerprint(dataset_dir: str, split: str) -> dict[str, Any]:
    """What an index is valid for: the split, its episode count and a hash of the dataset's
    identity and shard layout in `dataset_info.json` (read in O(1), no episode is opened)."""
    info = json.loads((epath.Path(dataset_dir) / "dataset_info.json").read_text())
    entry = next((x for x in info.get("splits", []) if x.get("name") == split), None)
    if entry is None:
        raise ValueError(f"{dataset_dir} has no split '{split}' in dataset_info.json")
    ident = {k: info.get(k) for k in ("name", "configName", "version")}
    digest = hashlib.sha256(json.dumps({**ident, "split": entry}, sort_keys=True).encode())
    return {"split": split, "num_episodes": sum(int(n) for n in entry.get("shardLengths", [])),
            "dataset_info": digest.hexdigest()[:16]}


def build_command(dataset_dir: str, split: str, num_clusters: int | None = None) -> str:
    """The command line that (re)builds the index of `split`."""
    k = "" if num_clusters is None else f" --clusters {num_clusters}"
    return f"python -m wallwm_jax.data.event_index {dataset_dir} --split {split}{k}"


# ----------------------------------------------------------------------------- reading


def read_episodes_without_images(dataset_dir: str, split: str = "train") -> Iterator[dict]:
    """Validated flat episodes of `split`; frames stay PNG (`LazyFrames`) and are never
    decoded here, since the index needs only actions, states and event fields."""
    source = open_dataset(dataset_dir, split)
    for index in range(len(source)):
        yield source[index]


def build_event_index(dataset_dir: str, split: str = "train", *, num_clusters: int = 16,
                      text_dims: int = 16, traj_points: int = 8, text_weight: float = 0.5,
                      norm_mode: str = "mean_std", seed: int = 0) -> EventIndex:
    """Scan `split` once (no image decoding), embed every event and cluster with k-means."""
    from sklearn.cluster import KMeans

    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"text_weight must be in [0, 1], got {text_weight}")
    if text_dims < 1:
        raise ValueError(f"text_dims must be >= 1, got {text_dims}")
    dataset_dir = os.fspath(dataset_dir)
    norm_stats = statistics.load_norm_stats(dataset_dir)
    rows, behaviour, num_episodes = [], [], 0
    for e, ep in enumerate(read_episodes_without_images(dataset_dir, split)):
        num_episodes += 1
        for k, (s, t) in enumerate(zip(ep["events/start"], ep["events/end"], strict=True)):
            rows.append((e, k, int(s), int(t), ep["events/phase"][k], ep["events/caption"][k],
                         ep["episode_metadata/task"]))
            behaviour.append(behaviour_descriptor(ep["steps/action"][s:t],
                                                  ep["steps/observation/state"][s:t],
                                                  norm_stats, traj_points, norm_mode))
    if not rows:
        raise ValueError(f"{dataset_dir} split '{split}' has no events to index")
    if not 1 <= num_clusters <= len(rows):
        raise ValueError(f"num_clusters={num_clusters} must be in [1, {len(rows)}] "
                         f"(the number of events in split '{split}')")
    episode, event, start, end, phase, caption, task = zip(*rows, strict=True)
    embeddings = embed_events(list(caption), np.stack(behaviour), text_dims=text_dims,
                              text_weight=text_weight, seed=seed)
    kmeans = KMeans(n_clusters=num_clusters, n_init=10, random_state=seed)
    cluster = kmeans.fit_predict(embeddings.astype(np.float64))
    fingerprint = dataset_fingerprint(dataset_dir, split)
    args = dict(num_clusters=num_clusters, text_dims=text_dims, traj_points=traj_points,
                text_weight=text_weight, norm_mode=norm_mode, seed=seed)
    return EventIndex(
        episode=np.asarray(episode, np.int64), event=np.asarray(event, np.int64),
        start=np.asarray(start, np.int64), end=np.asarray(end, np.int64),
        phase=np.asarray(phase, str), caption=np.asarray(caption, str),
        task=np.asarray(task, str), cluster=np.asarray(cluster, np.int64),
        embeddings=embeddings, num_episodes=num_episodes, split=split, build_args=args,
        fingerprint=fingerprint)


# ----------------------------------------------------------------------------- storage


def index_paths(dataset_dir: str, split: str) -> tuple[str, str]:
    """(arrays .npz, build-arguments .json) of the stored index of `split`."""
    base = os.path.join(os.fspath(dataset_dir), f"event_index_{split}")
    return f"{base}.npz", f"{base}.json"


def _write(path: epath.Path, data: bytes) -> None:
    """Whole-file write through etils.epath (local disk, gs://, ...): to a name unique to
    this writer, then renamed, so a reader never sees half a file."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    tmp.replace(path)


def save(table: EventIndex, path: str) -> str:
    """Store `table` next to its dataset (`path` = the dataset dir) or at `path` (.npz).
    Only JAX process 0 writes (the others return the path at once). Returns the .npz path."""
    path = os.fspath(path)
    npz_path = path if path.endswith(".npz") else index_paths(path, table.split)[0]
    json_path = npz_path[:-len(".npz")] + ".json"
    if _process_index() != 0:
        return npz_path
    meta = {"format": INDEX_FORMAT, "split": table.split, "num_episodes": table.num_episodes,
            "num_events": len(table), "embedding_dim": int(table.embeddings.shape[1]),
            "build_args": table.build_args, "fingerprint": table.fingerprint}
    buf = io.BytesIO()
    np.savez(buf, **{name: getattr(table, name) for name in _ARRAY_COLUMNS})
    _write(epath.Path(npz_path), buf.getvalue())
    _write(epath.Path(json_path), json.dumps(meta, indent=1).encode())
    return npz_path


def _process_index() -> int:
    import jax  # only to know which process writes

    return jax.process_index()


def build_all(dataset_dir: str, *, num_clusters: int = DEFAULT_CLUSTERS,
              splits: tuple[str, ...] | None = None) -> dict[str, str]:
    """Build and store the index of every split (k capped at the split's event count), as
    the dataset builders do when a dataset is built or converted. Returns {split: path}."""
    info = json.loads((epath.Path(dataset_dir) / "dataset_info.json").read_text())
    names = splits or tuple(x["name"] for x in info.get("splits", []))
    out = {}
    for split in names:
        source = open_dataset(dataset_dir, split)
        if len(source) == 0:
            continue  # an empty split has nothing to sample
        events = len(scan_events(source))
        table = build_event_index(dataset_dir, split, num_clusters=min(num_clusters, events))
        out[split] = save(table, dataset_dir)
    return out


def ensure_built(dataset_dir: str, *, num_clusters: int = DEFAULT_CLUSTERS) -> dict[str, str]:
    """`build_all` for the splits whose index is missing or stale (the builders call this
    last, so a reused dataset gets its index too). Returns {split: path} of those built."""
    info = json.loads((epath.Path(dataset_dir) / "dataset_info.json").read_text())
    todo = []
    for split in (x["name"] for x in info.get("splits", [])):
        try:
            current = load_event_index(dataset_dir, split, check_dataset=False)
            if current.fingerprint == dataset_fingerprint(dataset_dir, split):
                continue
        except (FileNotFoundError, ValueError):
            pass
        todo.append(split)
    return build_all(dataset_dir, num_clusters=num_clusters, splits=tuple(todo)) if todo else {}


def load_for_training(dataset_dir: str, split: str, num_clusters: int) -> EventIndex:
    """The stored index of `split`, checked against the dataset (fingerprint) and against
    `data.num_clusters` without scanning the episodes; never builds or writes anything."""
    npz_path, _ = index_paths(dataset_dir, split)
    try:
        table = load_event_index(dataset_dir, split, check_dataset=False)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no event index for split '{split}' of {dataset_dir} ({npz_path}); training "
            f"reads it and never builds it. Build it with "
            f"`{build_command(dataset_dir, split, num_clusters)}`") from None
    now = dataset_fingerprint(dataset_dir, split)
    want_k = min(int(num_clusters), len(table))
    if table.fingerprint != now:
        raise ValueError(f"stale event index {npz_path}: built for {table.fingerprint}, the "
                         f"dataset is now {now}; rebuild it with "
                         f"`{build_command(dataset_dir, split, want_k)}`")
    have_k = table.build_args.get("num_clusters")
    if have_k != want_k:
        raise ValueError(f"data.num_clusters={num_clusters} but the event index {npz_path} "
                         f"has {have_k} clusters: rebuild it with "
                         f"`{build_command(dataset_dir, split, want_k)}` or set "
                         f"--config.data.num_clusters={have_k}")
    return table


def load_event_index(dataset_dir: str, split: str = "train", *,
                     check_dataset: bool = True) -> EventIndex:
    """Read the stored index of `split`; with `check_dataset`, scan the split (no image decode)
    and raise ValueError naming the file when its rows are not the dataset's events."""
    npz_path, json_path = index_paths(dataset_dir, split)
    for path in (npz_path, json_path):
        if not epath.Path(path).exists():
            raise FileNotFoundError(
                f"event index not found: expected {path}; build it with "
                f"`python -m wallwm_jax.data.event_index {dataset_dir} --split {split}`")
    meta = json.loads(epath.Path(json_path).read_text())
    with np.load(io.BytesIO(epath.Path(npz_path).read_bytes()), allow_pickle=False) as z:
        missing = [name for name in _ARRAY_COLUMNS if name not in z]
        if missing:
            raise ValueError(f"{npz_path}: column '{missing[0]}' missing; rebuild the index")
        cols = {name: z[name] for name in _ARRAY_COLUMNS}
    if meta.get("format") != INDEX_FORMAT or meta.get("split") != split \
            or meta.get("num_events") != len(cols["episode"]):
        raise ValueError(f"{json_path} does not describe {npz_path} (format "
                         f"{meta.get('format')}, split {meta.get('split')!r}, "
                         f"{meta.get('num_events')} events vs {len(cols['episode'])} rows); "
                         f"rebuild it with `{build_command(dataset_dir, split)}`")
    table = EventIndex(**cols, num_episodes=int(meta["num_episodes"]), split=split,
                       build_args=meta["build_args"], fingerprint=meta.get("fingerprint", {}))
    if check_dataset:
        _check_matches_dataset(table, dataset_dir, npz_path)
    return table


def _check_matches_dataset(table: EventIndex, dataset_dir: str, npz_path: str) -> None:
    rows, num_episodes = [], 0
    for e, ep in enumerate(read_episodes_without_images(dataset_dir, table.split)):
        num_episodes += 1
        rows += [(e, k, int(s), int(t)) for k, (s, t) in
                 enumerate(zip(ep["events/start"], ep["events/end"], strict=True))]
    stale = (f"stale event index {npz_path}: it has {table.num_episodes} episodes / "
             f"{len(table)} events, the dataset split '{table.split}' has {num_episodes} "
             f"episodes / {len(rows)} events")
    if num_episodes != table.num_episodes or len(rows) != len(table):
        raise ValueError(f"{stale}; rebuild it with `{build_command(dataset_dir, table.split)}`")
    stored = np.stack([table.episode, table.event, table.start, table.end], axis=1)
    diff = np.flatnonzero((stored != np.asarray(rows, np.int64)).any(axis=1))
    if diff.size:
        r = int(diff[0])
        raise ValueError(f"{stale}, but row {r} is (episode, event, start, end) = "
                         f"{tuple(stored[r].tolist())} in the index and {rows[r]} in the "
                         f"dataset; rebuild it with `{build_command(dataset_dir, table.split)}`")


# ----------------------------------------------------------------------------- summary


def summarize(table: EventIndex) -> dict:
    """Events, cluster sizes, effective clusters exp(H) and phase purity of the clusters."""
    from wallwm_jax.data.balance import cluster_report, event_sampling_probabilities

    report = cluster_report(table.cluster, event_sampling_probabilities(table.cluster, 1.0))
    balanced = cluster_report(table.cluster, event_sampling_probabilities(table.cluster, 0.0))
    purity = {}
    for c in report["clusters"]:
        phases = Counter(table.phase[table.cluster == c].tolist())
        phase, count = phases.most_common(1)[0]
        purity[int(c)] = {"majority_phase": phase, "fraction": count / sum(phases.values())}
    majority = sum(p["fraction"] * n for p, n in zip(purity.values(), report["sizes"],
                                                     strict=True))
    return {"events": len(table), "episodes": table.num_episodes,
            "clusters": len(report["clusters"]), "sizes": dict(zip(
                report["clusters"], report["sizes"], strict=True)),
            "effective_clusters_data": report["effective_clusters_data"],
            "effective_clusters_balanced": balanced["effective_clusters"],
            "phase_purity": majority / len(table), "cluster_phases": purity,
            "embedding_dim": int(table.embeddings.shape[1])}


def format_summary(summary: dict) -> str:
    """The summary as a few readable lines."""
    lines = [f"events {summary['events']} in {summary['episodes']} episodes, "
             f"embedding dim {summary['embedding_dim']}, {summary['clusters']} clusters",
             f"effective clusters exp(H): {summary['effective_clusters_data']:.2f} as in the "
             f"data (alpha=1), {summary['effective_clusters_balanced']:.2f} balanced (alpha=0)",
             f"phase purity (events in their cluster's majority phase): "
             f"{summary['phase_purity']:.3f}"]
    for c, n in summary["sizes"].items():
        p = summary["cluster_phases"][c]
        lines.append(f"  cluster {c:3d}: {n:6d} events, {p['fraction']:.0%} "
                     f"{p['majority_phase']}")
    return "\n".join(lines)


def build_and_save(dataset_dir: str, split: str = "train", *,
                   clusters: int = DEFAULT_CLUSTERS, text_dims: int = 16, traj_points: int = 8,
                   text_weight: float = 0.5, seed: int = 0) -> dict:
    """Build and store the event index of one split; print and return its summary."""
    table = build_event_index(dataset_dir, split, num_clusters=clusters, text_dims=text_dims,
                              traj_points=traj_points, text_weight=text_weight, seed=seed)
    path = save(table, dataset_dir)
    summary = summarize(table)
    print(format_summary(summary))
    print(f"wrote {path}")
    return summary


def define_flags() -> None:
    """The CLI's flags (defined only when run as a program, so importers keep theirs)."""
    flags.DEFINE_string("split", "train", "Dataset split.")
    flags.DEFINE_integer("clusters", DEFAULT_CLUSTERS, "k-means clusters (data.num_clusters).")
    flags.DEFINE_integer("text_dims", 16, "TruncatedSVD dimensions of the caption TF-IDF.")
    flags.DEFINE_integer("traj_points", 8, "Steps each event's trajectory is resampled to.")
    flags.DEFINE_float("text_weight", 0.5, "Weight w of the text block in the embedding.")
    flags.DEFINE_integer("seed", 0, "k-means seed.")


def main(argv: list[str]) -> None:
    """CLI: `python -m wallwm_jax.data.event_index DATASET_DIR [--clusters K]`."""
    (dataset_dir,) = cli.positional(argv, "DATASET_DIR")
    fl = flags.FLAGS
    build_and_save(dataset_dir, fl.split, clusters=fl.clusters, text_dims=fl.text_dims,
                   traj_points=fl.traj_points, text_weight=fl.text_weight,
                   seed=fl.seed)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
