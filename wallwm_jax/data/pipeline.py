"""Grain input pipeline: event-dataset episodes -> `EventBatch`es, sharded per JAX process.

Sampling is index-based: global sample `i` is a pure function of `(seed, i)`, so a restart, an
epoch boundary or a different number of workers never changes which samples a step sees.
Process `p` of `P` reads the rows `[p * B/P, (p+1) * B/P)` of every global batch of B samples,
so the hosts' shares are disjoint, cover the batch, and assemble in global order.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from wallwm_jax.data import balance
from wallwm_jax.data.augment import placement
from wallwm_jax.data.batches import EventBatch, Observation, uses_masks
from wallwm_jax.data.checks import (
    check_data_config,
    check_state_layout,
    dataset_spec,
    mixture_entries,
)
from wallwm_jax.data.embodiment import Embodiment
from wallwm_jax.data.event_index import (  # noqa: F401  (scan_events re-exported)
    read_episodes_without_images,
    scan_events,
)
from wallwm_jax.data.sampler import EventSampler, make_sampler, model_tokenizer_path
from wallwm_jax.data.tokenizer import train_tokenizer
from wallwm_jax.data.transforms import bin_to_steps, duration_bin  # noqa: F401  (re-exported)

__all__ = ["EventSampler", "InputPipeline", "make_pipeline", "to_event_batch", "duration_bin",
           "bin_to_steps"]

_MAX_SAMPLES = 2**40  # effectively infinite; sampling is with replacement


def to_event_batch(batch: dict[str, np.ndarray] | EventBatch) -> EventBatch:
    """Wrap a dict of stacked sample arrays as the `EventBatch` the model consumes (an
    `EventBatch` is returned as it is)."""
    if isinstance(batch, EventBatch):
        return batch
    masks = {k: batch[k] for k in ("state_mask", "action_dim_mask", "camera_mask") if k in batch}
    obs = Observation(image=batch["image"], state=batch["state"],
                      instruction=batch["instruction"], caption=batch["caption"], **masks)
    return EventBatch(obs=obs, actions=batch["actions"], action_mask=batch["action_mask"],
                      action_events=batch["action_events"], duration_bin=batch["duration_bin"],
                      end_image=batch["end_image"])


@dataclasses.dataclass
class InputPipeline:
    """The per-host iterator of `EventBatch`es, plus what the rest of the stack needs to know
    about the data: the model's norm stats and tokenizer, and the clusters drawn so far."""

    iterator: grain.DatasetIterator
    sampler: EventSampler  # the primary dataset's (its norm stats and tokenizer travel)
    dataset_dir: str
    per_host_batch: int
    samplers: list[EventSampler] = dataclasses.field(default_factory=list)  # one per dataset

    _counts: np.ndarray | None = None  # running counts of the clusters drawn so far
    _target: tuple[np.ndarray, float] | None = None  # target frequencies and exp(H), once
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def norm_stats(self) -> dict[str, dict[str, np.ndarray]]:
        """The statistics the model normalises with (they travel with checkpoints)."""
        return self.sampler.norm_stats

    @property
    def embodiments(self) -> list[tuple[Embodiment, dict[str, dict[str, np.ndarray]]]]:
        """(embodiment, the statistics it is normalised with) of every dataset, in mixture
        order (they travel with checkpoints and exports: `bundle.asset_files`)."""
        return [(s.embodiment, s.norm_stats) for s in self.samplers or [self.sampler]]

    @property
    def tokenizer_path(self) -> str:
        """The SentencePiece model the text is tokenised with (travels with checkpoints)."""
        return self.sampler.tokenizer_path

    @property
    def vocab_size(self) -> int:
        return self.sampler.tokenizer.vocab_size

    def __iter__(self) -> InputPipeline:
        return self

    def __next__(self) -> EventBatch:
        """The next host batch; its clusters are counted (`sampling_metrics`) as drawn."""
        host = next(self.iterator)
        self._observe(host)
        return to_event_batch(host)

    def get_state(self) -> Any:
        """The Grain iterator state after the batches drawn so far (saved with checkpoints)."""
        return self.iterator.get_state()

    def _observe(self, host: dict[str, np.ndarray]) -> None:
        """Add the primary dataset's clusters of a drawn batch to the running counts."""
        if self.sampler.event_probs is None:
            return
        ids = np.asarray(host["cluster"])
        if "dataset" in host:
            ids = ids[np.asarray(host["dataset"]) == 0]
        with self._lock:
            if self._counts is None:
                self._counts = np.zeros(int(self.sampler.cluster.max()) + 1)
            ids = ids[(ids >= 0) & (ids < len(self._counts))]
            np.add.at(self._counts, ids, 1)  # O(batch), not O(clusters)

    def sampling_metrics(self) -> dict[str, float]:
        """`data/cluster_kl` (realised vs target cluster frequencies over the batches drawn so
        far, the prefetched ones included) and `data/effective_clusters` exp(H) of the target."""
        if self.sampler.event_probs is None or self._counts is None:
            return {}
        with self._lock:
            counts = self._counts.copy()
        if self._target is None:  # over every event: once, not at every log step
            target = np.bincount(self.sampler.cluster, weights=self.sampler.event_probs,
                                 minlength=len(counts))
            h = -np.sum(target[target > 0] * np.log(target[target > 0]))
            self._target = (target, float(np.exp(h)))
        target, effective = self._target
        return {"data/cluster_kl": balance.frequency_kl(counts, target),
                "data/effective_clusters": effective}

    def cluster_report(self) -> dict[str, Any] | None:
        """Cluster sizes, target frequencies and exp(H) of the primary dataset's balanced
        sampling (None when sampling is uniform)."""
        if self.sampler.event_probs is None:
            return None
        return balance.cluster_report(self.sampler.cluster, self.sampler.event_probs)


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


def mixture_texts(dataset_dirs: list[str]) -> list[str]:
    """The instructions and captions of every dataset's train split, in mixture order (what a
    mixture's one tokenizer is trained on); frames are never decoded."""
    texts: list[str] = []
    for directory in dict.fromkeys(dataset_dirs):
        for ep in read_episodes_without_images(directory, "train"):
            texts += [ep["episode_metadata/instruction"], *ep["events/caption"]]
    return texts


def run_tokenizer(data_cfg: ml_collections.ConfigDict, path: str) -> str:
    """The tokenizer a run reads every dataset with: `data.tokenizer`, the dataset's own for
    one dataset, or, for a mixture of several, one trained over all their instructions and
    captions and written to `path` (once: a resumed run finds it there)."""
    dirs = list(dict.fromkeys(d for d, _ in mixture_entries(data_cfg)))
    if data_cfg.get("tokenizer") or len(dirs) == 1:
        return model_tokenizer_path(data_cfg, dirs[0])
    if not os.path.exists(path):
        train_tokenizer(mixture_texts(dirs), path)
    return path


def model_widths(data_cfg: ml_collections.ConfigDict, dirs: list[str]) -> tuple[int, int]:
    """The widest state and action of `dirs` (a mixture's padded widths when the caller does
    not give the model's)."""
    specs = [dataset_spec(d) for d in dict.fromkeys(dirs)]
    return max(s.state_dim for s in specs), max(s.action_dim for s in specs)


def read_options(data_cfg: ml_collections.ConfigDict) -> grain.ReadOptions:
    """Grain's read-ahead for one reading process, from `data.read_threads` and
    `data.read_ahead` (batches). Grain's defaults (16 threads, 500 batches) would compute
    ~500 batches as soon as the first is asked for, whatever the run needs, and hold them."""
    return grain.ReadOptions(num_threads=int(data_cfg.get("read_threads", 2)),
                             prefetch_buffer_size=int(data_cfg.get("read_ahead", 4)))


def make_pipeline(data_cfg: ml_collections.ConfigDict, *, global_batch: int, seed: int,
                  split: str = "train", dataset_dir: str | None = None,
                  tokenizer_path: str | None = None,
                  widths: tuple[int, int] | None = None) -> InputPipeline:
    """Build the per-host Grain iterator of event batches for this JAX process.

    A mixture of several datasets (`batches.uses_masks`) is padded into `widths` (the model's
    state_dim, action_dim; default the widest dataset's) with masks, and read with one
    tokenizer, `tokenizer_path` (`run_tokenizer`; default a temporary one built here)."""
    process_count, process_index = jax.process_count(), jax.process_index()
    if global_batch % process_count:
        raise ValueError(f"batch_size={global_batch} is not divisible by the number of "
                         f"processes ({process_count})")
    per_host = global_batch // process_count
    check_data_config(data_cfg)
    entries = [(dataset_dir, 1.0)] if dataset_dir else mixture_entries(data_cfg)
    # data.augment.placement=device: frames leave as they are, the train step augments them
    augment = split == "train" and placement(data_cfg.augment) == "host"
    balanced = split == "train" and data_cfg.get("balance_alpha") is not None
    dirs = [d for d, _ in entries]
    widths = (widths or model_widths(data_cfg, dirs)) if uses_masks(data_cfg) else None
    if tokenizer_path is None and len(set(dirs)) > 1 and not data_cfg.get("tokenizer"):
        tokenizer_path = run_tokenizer(data_cfg, os.path.join(
            tempfile.mkdtemp(prefix="wallwm_tokenizer_"), "tokenizer.model"))
    samplers = []
    for j, (directory, _) in enumerate(entries):
        check_state_layout(directory, data_cfg, "data.data_dir" if len(entries) == 1 and not
                           data_cfg.get("mixture") else f"data.mixture[{j}]")
        samplers.append(make_sampler(data_cfg, directory, split, seed=seed, augment=augment,
                                     balanced=balanced, tokenizer_path=tokenizer_path,
                                     widths=widths))
    sampler = samplers[0]
    fn = sampler if len(samplers) == 1 else MixtureSampler(
        samplers, np.asarray([w for _, w in entries]), seed=seed)
    # Host p reads rows [p * per_host, (p + 1) * per_host) of every global batch, so the
    # global array assembled from the hosts' shares has rows in global sample order.
    ds = grain.MapDataset.range(_MAX_SAMPLES // process_count).map(
        HostRows(per_host, global_batch, process_index))
    ds = ds.map(fn).batch(per_host, drop_remainder=True)
    it_ds = ds.to_iter_dataset(read_options(data_cfg))
    if data_cfg.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # Grain workers read absl flags (e.g. under pytest)
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers))
    return InputPipeline(iter(it_ds), sampler, entries[0][0], per_host, samplers)
