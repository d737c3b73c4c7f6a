"""Grain input pipeline: event-dataset episodes -> `EventBatch`es, sharded per JAX process.

Sampling is index-based: global sample `i` is a pure function of `(seed, i)`, so a restart, an
epoch boundary or a different number of workers never changes which samples a step sees.
Process `p` of `P` reads the rows `[p * B/P, (p+1) * B/P)` of every global batch of B samples,
so the hosts' shares are disjoint, cover the batch, and assemble in global order.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags
from PIL import Image

from wallwm_jax.data import statistics
from wallwm_jax.data.augment import augment_frame, check_augment
from wallwm_jax.data.batches import EventBatch, Observation
from wallwm_jax.data.episodes import EpisodeSource, open_dataset
from wallwm_jax.data.event_index import EventIndex, load_for_training, scan_events
from wallwm_jax.data.tasks import STATE_LAYOUT_FILE
from wallwm_jax.data.tokenizer import Tokenizer
from wallwm_jax.data.transforms import ModelIO, bin_to_steps, duration_bin, position_targets

__all__ = ["EventSampler", "InputPipeline", "make_pipeline", "to_event_batch", "duration_bin",
           "bin_to_steps"]

_MAX_SAMPLES = 2**40  # effectively infinite; sampling is with replacement


class EventSampler:
    """Map a global sample index to one training example (a dict of arrays) in the layout of
    `data.layout` (event / unified / chunk).

    Picklable, so Grain worker processes can run it; decoded episodes are kept in a small
    per-process LRU cache because consecutive samples often hit the same episode.
    """

    def __init__(self, source: EpisodeSource, index: EventIndex, tokenizer_path: str,
                 norm_stats: dict[str, dict[str, np.ndarray]],
                 data_cfg: ml_collections.ConfigDict, *, seed: int,
                 event_probs: np.ndarray | None = None, cache_size: int = 64,
                 augment: bool = False, cluster: np.ndarray | None = None):
        self.source = source
        self.index = index
        self.tokenizer_path = tokenizer_path
        self.norm_stats = norm_stats
        self.cfg = data_cfg
        self.seed = seed
        self.event_probs = event_probs
        self._cdf = None if event_probs is None else np.cumsum(event_probs)
        self.cluster = np.full(len(index), -1, np.int32) if cluster is None else cluster
        self.cache_size = cache_size
        self.augment = augment
        self._tokenizer: Tokenizer | None = None
        self._io: ModelIO | None = None
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tokenizer"] = None
        state["_io"] = None
        state["_cache"] = OrderedDict()
        return state

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(self.tokenizer_path)
        return self._tokenizer

    @property
    def io(self) -> ModelIO:
        """The preprocessing shared with the policy (wallwm_jax.data.transforms)."""
        if self._io is None:
            self._io = ModelIO(self.cfg, self.norm_stats, self.tokenizer)
        return self._io

    def _episode(self, e: int) -> dict[str, Any]:
        if e in self._cache:
            self._cache.move_to_end(e)
            return self._cache[e]
        ep = self.source[e]
        self._cache[e] = ep
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return ep

    def draw(self, i: int) -> tuple[int, int, np.random.Generator]:
        """(event row, step t, the sample's generator) of global sample i: a pure function
        of (seed, i). Rows follow `event_probs` (inverse CDF) or are uniform."""
        rng = np.random.default_rng([self.seed, int(i)])
        n = len(self.index)
        if self._cdf is None:
            row = int(rng.integers(n))
        else:  # inverse CDF: O(log N) per draw, for millions of events
            row = min(int(np.searchsorted(self._cdf, rng.random() * self._cdf[-1], "right")),
                      n - 1)
        t = int(rng.integers(int(self.index.start[row]), int(self.index.end[row])))
        return row, t, rng

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        row, t, rng = self.draw(i)
        e, k = int(self.index.episode[row]), int(self.index.event[row])
        sample = self.make_sample(self._episode(e), k, t)
        if self.augment:
            frames = sample["image"] if sample["image"].ndim == 4 else sample["image"][None]
            frames = np.stack([augment_frame(f, rng, self.cfg.augment) for f in frames])
            sample["image"] = frames if sample["image"].ndim == 4 else frames[0]
        sample["cluster"] = np.int32(self.cluster[row])  # for realised-frequency reporting
        return sample

    def make_sample(self, ep: dict[str, Any], k: int, t: int) -> dict[str, np.ndarray]:
        """The observation at step t inside event k -> up to Tmax actions, by layout.

        event: the rest of event k, its caption in slot 0. unified: Tmax steps from t
        crossing event boundaries, caption slot c for event k + c when the chunk reaches it
        (steps past the K-th event are masked). chunk: Tmax steps, no caption. The world
        target is always the last frame of event k.
        """
        cfg = self.cfg
        tmax, layout, num_slots = cfg.max_event_len, cfg.layout, cfg.max_captions
        cameras = [self._camera(ep, name) for name in cfg.cameras]
        images = cameras[0]  # the world target is the first camera's frame
        starts, ends = np.asarray(ep["events/start"]), np.asarray(ep["events/end"])
        episode_len = len(ep["steps/action"])
        stop = min(int(ends[k]) if layout == "event" else episode_len, t + tmax)
        rel = np.searchsorted(ends, np.arange(t, stop), side="right") - k  # event - k per step
        n = int(np.sum(rel < num_slots)) if layout == "unified" else stop - t
        rel = rel[:n] if layout == "unified" else np.zeros(n, np.int64)

        io = self.io
        chunk = np.zeros((tmax, ep["steps/action"].shape[-1]), np.float32)
        chunk[:n] = io.normalize_actions(io.model_actions(
            ep["steps/action"][t:t + n], ep["steps/observation/state"][t:t + n]))
        mask = np.arange(tmax) < n
        action_events = np.full((tmax,), rel[-1] if n else 0, np.int32)  # pad: stay monotone
        action_events[:n] = rel
        texts, durations = [], np.zeros((num_slots,), np.int32)
        for c in range(num_slots):
            if c > 0 and not np.any(rel == c):
                break
            texts.append(ep["events/caption"][k + c])
            length = int(ends[k] - t) if c == 0 else int(ends[k + c] - starts[k + c])
            durations[c] = io.duration_bin(length)
        end_frame = Image.fromarray(images[int(ends[k]) - 1]).resize(
            (cfg.world_size, cfg.world_size), Image.BILINEAR)
        inputs = io.inputs({name: frames[t] for name, frames in zip(cfg.cameras, cameras,
                                                                     strict=True)},
                           ep["steps/observation/state"][t],
                           ep["episode_metadata/instruction"], texts, num_slots)
        return {
            **inputs,
            "actions": chunk,
            "action_mask": mask,
            "action_events": action_events,
            "duration_bin": durations,
            "end_image": np.asarray(end_frame, np.uint8),
        }

    def _camera(self, ep: dict[str, Any], name: str) -> np.ndarray:
        """Frames [T, H, W, 3] of camera feature `steps/observation/<name>`, shape-checked."""
        key = f"steps/observation/{name}"
        if key not in ep:
            raise ValueError(f"{self.source.dataset_dir}: data.cameras names '{name}' but the "
                             f"episodes have no field '{key}' (cameras in the data: "
                             f"{sorted(k.split('/')[-1] for k in ep if 'observation/image' in k)})")
        frames = ep[key]
        if frames.shape[1:] != (self.cfg.image_size, self.cfg.image_size, 3):
            raise ValueError(f"{self.source.dataset_dir}: field '{key}' has frames of shape "
                             f"{frames.shape[1:]}, expected "
                             f"{(self.cfg.image_size, self.cfg.image_size, 3)} from "
                             f"data.image_size")
        return frames


def check_layout(data_cfg: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the field when data.layout and data.max_captions disagree."""
    want = {"event": "== 1", "unified": ">= 2", "chunk": "== 0"}
    layout, slots = data_cfg.get("layout"), data_cfg.get("max_captions")
    if layout not in want:
        raise ValueError(f"data.layout='{layout}' must be one of {sorted(want)}")
    ok = {"event": slots == 1, "unified": slots is not None and slots >= 2,
          "chunk": slots == 0}[layout]
    if not ok:
        raise ValueError(f"data.max_captions={slots} does not fit data.layout='{layout}' "
                         f"(expected {want[layout]})")


def to_event_batch(batch: dict[str, np.ndarray]) -> EventBatch:
    """Wrap a dict of stacked sample arrays as the `EventBatch` the model consumes."""
    obs = Observation(image=batch["image"], state=batch["state"],
                      instruction=batch["instruction"], caption=batch["caption"])
    return EventBatch(obs=obs, actions=batch["actions"], action_mask=batch["action_mask"],
                      action_events=batch["action_events"], duration_bin=batch["duration_bin"],
                      end_image=batch["end_image"])


@dataclasses.dataclass
class InputPipeline:
    """The per-host iterator plus what the rest of the stack needs to know about the data."""

    iterator: grain.DatasetIterator
    sampler: EventSampler  # the primary dataset's (its norm stats and tokenizer travel)
    dataset_dir: str
    per_host_batch: int
    samplers: list[EventSampler] = dataclasses.field(default_factory=list)  # one per dataset

    _counts: np.ndarray | None = None  # running counts of the clusters drawn so far
    _target: tuple[np.ndarray, float] | None = None  # target frequencies and exp(H), once

    def observe(self, batch: dict[str, np.ndarray]) -> None:
        """Add the clusters of a drawn batch (primary dataset; only its `cluster` and
        `dataset` fields are read) to the running counts behind `sampling_metrics`."""
        if self.sampler.event_probs is None:
            return
        if self._counts is None:
            self._counts = np.zeros(int(self.sampler.cluster.max()) + 1)
        ids = np.asarray(batch["cluster"])
        if "dataset" in batch:
            ids = ids[np.asarray(batch["dataset"]) == 0]
        ids = ids[(ids >= 0) & (ids < len(self._counts))]
        np.add.at(self._counts, ids, 1)  # O(batch), not O(clusters)

    def sampling_metrics(self) -> dict[str, float]:
        """`data/cluster_kl` (realised vs target cluster frequencies over the batches
        observed so far) and `data/effective_clusters` exp(H) of the target."""
        from wallwm_jax.data import balance

        if self.sampler.event_probs is None or self._counts is None:
            return {}
        if self._target is None:  # over every event: once, not at every log step
            target = np.bincount(self.sampler.cluster, weights=self.sampler.event_probs,
                                 minlength=len(self._counts))
            h = -np.sum(target[target > 0] * np.log(target[target > 0]))
            self._target = (target, float(np.exp(h)))
        target, effective = self._target
        return {"data/cluster_kl": balance.frequency_kl(self._counts, target),
                "data/effective_clusters": effective}

    def cluster_report(self) -> dict[str, Any] | None:
        """Cluster sizes, target frequencies and exp(H) of the primary dataset's balanced
        sampling (None when sampling is uniform)."""
        from wallwm_jax.data import balance

        if self.sampler.event_probs is None:
            return None
        return balance.cluster_report(self.sampler.cluster, self.sampler.event_probs)

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self.iterator)


class MixtureSampler:
    """Samples from several datasets' `EventSampler`s with fixed weights; the dataset of
    sample i is drawn from (seed, i), so mixing stays index-based and resumable."""

    def __init__(self, samplers: list[EventSampler], weights: np.ndarray, *, seed: int):
        self.samplers, self.seed = samplers, seed
        self.weights = np.asarray(weights, np.float64) / np.sum(weights)
        self._cdf = np.cumsum(self.weights)

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        u = np.random.default_rng([self.seed, int(i), 1]).random()
        d = min(int(np.searchsorted(self._cdf, u, "right")), len(self.samplers) - 1)
        sample = self.samplers[d](i)
        sample["dataset"] = np.int32(d)
        return sample


@dataclasses.dataclass(frozen=True)
class HostRows:
    """n-th sample this host reads -> global sample index: contiguous blocks per batch."""

    per_host: int
    global_batch: int
    process_index: int

    def __call__(self, n: int) -> int:
        step, j = divmod(int(n), self.per_host)
        return step * self.global_batch + self.process_index * self.per_host + j


def mixture_entries(data_cfg: ml_collections.ConfigDict) -> list[tuple[str, float]]:
    """`data.mixture` as [(dataset dir, weight)], or [(data.data_dir, 1.0)] when empty."""
    entries = [(str(d), float(w)) for d, w in (data_cfg.get("mixture") or ())]
    return entries or [(data_cfg.data_dir, 1.0)]


def target_action_stats(dataset_dir: str, gain: float, max_episodes: int = 1000
                        ) -> dict[str, np.ndarray]:
    """Normalisation statistics of the position targets (`transforms.position_targets`) of
    the train split's steps, from up to `max_episodes` episodes spread over it: what
    `data.action_target_gain` trains on, so train, val and exports share them."""
    source = open_dataset(dataset_dir, "train")
    picks = np.unique(np.linspace(0, len(source) - 1, min(len(source), max_episodes)
                                  ).astype(int))
    targets = [position_targets(np.asarray(ep["steps/action"], np.float32),
                                np.asarray(ep["steps/observation/state"], np.float32), gain)
               for ep in (source[int(i)] for i in picks)]
    stats = statistics.compute_norm_stats({"action": np.concatenate(targets)})["action"]
    return {name: np.asarray(v, np.float32) for name, v in stats.items()}


def check_data_config(data_cfg: ml_collections.ConfigDict) -> None:
    """Reject bad data settings when the config is read, naming the field."""
    check_layout(data_cfg)
    alpha = data_cfg.get("balance_alpha")
    if alpha is not None and (not np.isfinite(alpha) or alpha < 0):
        raise ValueError(f"data.balance_alpha={alpha} must be a finite number >= 0 (or None "
                         f"for uniform event sampling)")
    gain = data_cfg.get("action_target_gain", 0.0) or 0.0
    if not np.isfinite(gain) or gain < 0:
        raise ValueError(f"data.action_target_gain={gain} must be a finite number >= 0 (0: the "
                         f"model predicts the recorded actions; g > 0: position targets of a "
                         f"gain-g controller on the hand at state dims 0-2)")
    if data_cfg.get("num_clusters", 1) < 1:
        raise ValueError(f"data.num_clusters={data_cfg.num_clusters} must be >= 1")
    weights = [w for _, w in mixture_entries(data_cfg)]
    for j, w in enumerate(weights):
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"data.mixture[{j}] weight {w} must be a finite number >= 0")
    if sum(weights) <= 0:
        raise ValueError(f"data.mixture weights {weights} are all zero")
    if data_cfg.augment.enabled:
        check_augment(data_cfg.augment)


def dataset_state_record(dataset_dir: str) -> dict | None:
    """The dataset's state layout record (`state_layout.json`, written by the MetaWorld
    builder), or None for a dataset without one (agent state of whatever width it stores)."""
    import json

    from etils import epath

    path = epath.Path(dataset_dir) / STATE_LAYOUT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def check_state_layout(dataset_dir: str, data_cfg: ml_collections.ConfigDict) -> None:
    """Raise ValueError when `data.privileged_state` disagrees with what the dataset stores
    (privileged simulator state must be asked for on both sides, never picked up by chance)."""
    want = bool(data_cfg.get("privileged_state", False))
    record = dataset_state_record(dataset_dir)
    has = bool(record and record.get("privileged_state"))
    if want != has:
        raise ValueError(
            f"{dataset_dir}: data.privileged_state={want} but the dataset stores "
            + (f"privileged simulator state ({record['state_dim']}-D: {record['source']})"
               if has else "no privileged simulator state (" + (
                   f"{record['state_dim']}-D agent state" if record else
                   f"no {STATE_LAYOUT_FILE}") + ")")
            + "; build the dataset with --privileged_state or set "
            f"--config.data.privileged_state={has}")


def _balanced_index(source: EpisodeSource, split: str, data_cfg: ml_collections.ConfigDict):
    """(EventIndex, per-event probabilities, cluster ids) from the event index stored with
    the dataset, balanced with `data.balance_alpha`. Read only: a missing or stale index, or
    one with another k than `data.num_clusters`, raises with the command that builds it."""
    from wallwm_jax.data import balance

    table = load_for_training(source.dataset_dir, split, int(data_cfg.num_clusters))
    if table.num_episodes != len(source):
        raise ValueError(f"the event index of {source.dataset_dir} has {table.num_episodes} "
                         f"episodes, the dataset {len(source)}; rebuild it")
    probs = balance.event_sampling_probabilities(table.cluster, data_cfg.balance_alpha)
    return table, probs, np.asarray(table.cluster, np.int32)


def make_pipeline(data_cfg: ml_collections.ConfigDict, *, global_batch: int, seed: int,
                  split: str = "train", dataset_dir: str | None = None) -> InputPipeline:
    """Build the per-host Grain iterator of event batches for this JAX process."""
    process_count, process_index = jax.process_count(), jax.process_index()
    if global_batch % process_count:
        raise ValueError(f"batch_size={global_batch} is not divisible by the number of "
                         f"processes ({process_count})")
    per_host = global_batch // process_count
    check_data_config(data_cfg)
    entries = [(dataset_dir, 1.0)] if dataset_dir else mixture_entries(data_cfg)
    augment = split == "train" and data_cfg.augment.enabled
    balanced = split == "train" and data_cfg.get("balance_alpha") is not None
    samplers = []
    for directory, _ in entries:
        check_state_layout(directory, data_cfg)
        source = open_dataset(directory, split)
        index, probs, cluster = (_balanced_index(source, split, data_cfg) if balanced
                                 else (scan_events(source), None, None))
        # Fine-tuning reads a new dataset with the export's tokenizer and norm stats
        # (data.tokenizer / data.norm_stats), so token ids and action scales stay the model's.
        stats = statistics.load_norm_stats(data_cfg.get("norm_stats") or directory)
        if data_cfg.get("action_target_gain") and not data_cfg.get("norm_stats"):
            stats = {**stats, "action": target_action_stats(
                directory, float(data_cfg.action_target_gain))}
        samplers.append(EventSampler(
            source, index, data_cfg.get("tokenizer") or f"{directory}/tokenizer.model",
            stats, data_cfg, seed=seed, augment=augment, event_probs=probs, cluster=cluster))
    sampler = samplers[0]
    fn = sampler if len(samplers) == 1 else MixtureSampler(
        samplers, np.asarray([w for _, w in entries]), seed=seed)
    # Host p reads rows [p * per_host, (p + 1) * per_host) of every global batch, so the
    # global array assembled from the hosts' shares has rows in global sample order.
    ds = grain.MapDataset.range(_MAX_SAMPLES // process_count).map(
        HostRows(per_host, global_batch, process_index))
    ds = ds.map(fn).batch(per_host, drop_remainder=True)
    it_ds = ds.to_iter_dataset()
    if data_cfg.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # Grain workers read absl flags (e.g. under pytest)
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers))
    return InputPipeline(iter(it_ds), sampler, entries[0][0], per_host, samplers)
