"""Action error by event cluster: is a model worse on the kinds of event the data has few of?

Cluster-balanced sampling (docs/data.md) is meant to help exactly there, so the balance study
reads this metric next to closed-loop success. The clusters are the train split's (the stored
event index, `data.num_clusters`); a held-out event has no cluster of its own (each split's
index is clustered separately), so it takes the cluster most train events of its (task,
phase) fall in. The rare clusters are the smallest third by train event count.
"""

from __future__ import annotations

import collections
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wallwm_jax.data.event_index import EventIndex, load_event_index, load_for_training
from wallwm_jax.data.pipeline import to_event_batch
from wallwm_jax.data.sampler import make_sampler
from wallwm_jax.evaluation.offline import action_sq_errors
from wallwm_jax.models import wallwm


def cluster_of_event_type(train: EventIndex) -> dict[tuple[str, str], int]:
    """(task, phase) -> the train cluster most of its events are in (ties: the lower id)."""
    counts: dict[tuple[str, str], collections.Counter] = collections.defaultdict(
        collections.Counter)
    for task, phase, c in zip(train.task, train.phase, train.cluster, strict=True):
        counts[(str(task), str(phase))][int(c)] += 1
    return {key: min(cnt, key=lambda c: (-cnt[c], c)) for key, cnt in counts.items()}


def rare_clusters(cluster: np.ndarray, fraction: float = 1 / 3) -> list[int]:
    """The ceil(fraction * k) clusters with the fewest train events (ties: the lower id)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    sizes = np.bincount(np.asarray(cluster, np.int64))
    present = [c for c in range(len(sizes)) if sizes[c] > 0]
    present.sort(key=lambda c: (sizes[c], c))
    return sorted(present[:max(1, math.ceil(fraction * len(present)))])


class ClusterEvaluator:
    """Per-sample action error on a held-out split, grouped by the train cluster of each
    event: every event is sampled at its first and its middle step (the rest of the event
    in event mode; Tmax steps in unified and chunk mode), in normalised action units like
    `val/action_mse`, normalised as training normalises them (`sampler.make_sampler`: the
    position targets' statistics when `data.action_target_gain` > 0). Built once (samples
    and the compiled step), called with params; metrics keyed '<prefix>/...' (default: the
    split's name)."""

    def __init__(self, config: ml_collections.ConfigDict, *, split: str = "val",
                 fraction: float = 1 / 3, seed: int = 4321, prefix: str | None = None,
                 norm_stats: dict[str, Any] | None = None):
        if jax.process_count() > 1:
            raise ValueError("config.eval.by_cluster runs in one process; it is an offline "
                             "study metric (set it in single-host runs)")
        data_cfg, self.split, self.seed = config.data, split, seed
        self.prefix = prefix or split
        directory = data_cfg.data_dir
        train = load_for_training(directory, "train", int(data_cfg.num_clusters))
        self.rare = rare_clusters(train.cluster, fraction)
        by_type = cluster_of_event_type(train)
        held = load_event_index(directory, split)
        # The model's tokenizer and norm stats, built as the training pipeline builds them
        # (`norm_stats`: the run's, so the position targets' are not computed again).
        self.sampler = sampler = make_sampler(data_cfg, directory, split, seed=seed, index=held,
                                              norm_stats=norm_stats)
        source = sampler.source
        samples, clusters, episodes = [], [], {}
        for row in range(len(held)):
            key = (str(held.task[row]), str(held.phase[row]))
            if key not in by_type:  # an event type the train split never shows
                continue
            start, end = int(held.start[row]), int(held.end[row])
            e = int(held.episode[row])
            if e not in episodes:
                episodes[e] = source[e]
            ep = episodes[e]
            for t in sorted({start, (start + end - 1) // 2}):
                samples.append(sampler.make_sample(ep, int(held.event[row]), t))
                clusters.append(by_type[key])
        if not samples:
            raise ValueError(f"{directory} split '{split}' has no events of a type the train "
                             f"split shows")
        self.cluster = np.asarray(clusters, np.int64)
        self.batch_size = int(config.batch_size)
        self._batches = []
        for lo in range(0, len(samples), self.batch_size):
            chunk = samples[lo:lo + self.batch_size]
            chunk += [chunk[-1]] * (self.batch_size - len(chunk))  # pad; cut after
            self._batches.append(to_event_batch(
                {k: np.stack([s[k] for s in chunk]) for k in chunk[0]}))
        model_cfg = config.model

        def errors(params: Any, batch: Any, rng: jax.Array) -> jax.Array:
            out = wallwm.sample_actions(model_cfg, params, batch.obs, rng,
                                        action_events=batch.action_events)
            err, steps = action_sq_errors(out["actions"], batch)
            return err / jnp.maximum(steps, 1.0)

        self._errors = jax.jit(errors)

    def __call__(self, params: Any, step: int | None = None) -> dict[str, float]:
        """'<prefix>/action_mse_rare' and '_common' (sample means over the events of the rare
        and the other clusters) and '<prefix>/action_mse_cluster<c>' for every cluster."""
        errs = [np.asarray(jax.device_get(self._errors(params, b, jax.random.PRNGKey(
            self.seed + i)))) for i, b in enumerate(self._batches)]
        err = np.concatenate(errs)[:len(self.cluster)]
        rare = np.isin(self.cluster, self.rare)
        out = {}
        if rare.any():
            out[f"{self.prefix}/action_mse_rare"] = float(err[rare].mean())
        if (~rare).any():
            out[f"{self.prefix}/action_mse_common"] = float(err[~rare].mean())
        for c in np.unique(self.cluster):
            out[f"{self.prefix}/action_mse_cluster{c}"] = float(err[self.cluster == c].mean())
        return out
