"""One training example from one event: `EventSampler` turns (episode, event, step) into model
inputs and targets with the model's tokenizer and norm stats; `make_sampler` builds it for a
dataset the same way for training and for both offline evaluators."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import ml_collections
import numpy as np

from wallwm_jax.data import statistics
from wallwm_jax.data.augment import augment_frame
from wallwm_jax.data.checks import dataset_embodiment
from wallwm_jax.data.embodiment import EMBODIMENTS_FILE, Embodiment, read_embodiments
from wallwm_jax.data.episodes import EpisodeSource, open_dataset
from wallwm_jax.data.event_index import EventIndex, load_for_training, scan_events
from wallwm_jax.data.step_records import resize_rgb
from wallwm_jax.data.tokenizer import Tokenizer
from wallwm_jax.data.transforms import ModelIO, position_targets


class EventSampler:
    """Map a global sample index to one training example (a dict of arrays) in the layout of
    `data.layout` (event / unified / chunk).

    Picklable, so Grain worker processes can run it; episodes are kept in a small
    per-process LRU cache because consecutive samples often hit the same episode, with what
    their samples derive from them once, and decoded frames up to `frame_cache_bytes` per
    process (a small dataset is then decoded once, not once per sample). Grain's read threads
    call one sampler at once: a lock guards the cache and the frame count, never a read.
    """

    def __init__(self, source: EpisodeSource, index: EventIndex, tokenizer_path: str,
                 norm_stats: dict[str, dict[str, np.ndarray]],
                 data_cfg: ml_collections.ConfigDict, *, seed: int,
                 event_probs: np.ndarray | None = None, cache_size: int = 64,
                 augment: bool = False, cluster: np.ndarray | None = None,
                 embodiment: Embodiment | None = None,
                 widths: tuple[int, int] | None = None,
                 frame_cache_bytes: int = 256 << 20):
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
        self.frame_cache_bytes = frame_cache_bytes
        self._frame_bytes = 0  # decoded frames held by the cached episodes
        self.augment = augment
        self.embodiment = embodiment  # what the dataset's numbers mean (embodiment.json)
        self.widths = widths  # the model's (state_dim, action_dim) in masked mode, else None
        self._tokenizer: Tokenizer | None = None
        self._io: ModelIO | None = None
        self._plan: tuple | None = None  # the config fields make_sample reads, as plain values
        # episode -> (its flat dict, what its samples derive from it once)
        self._cache: OrderedDict[int, tuple[dict, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tokenizer"] = None
        state["_io"] = None
        state["_plan"] = None
        state["_cache"] = OrderedDict()
        state["_frame_bytes"] = 0
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(self.tokenizer_path)
        return self._tokenizer

    @property
    def io(self) -> ModelIO:
        """The preprocessing shared with the policy (wallwm_jax.data.transforms)."""
        if self._io is None:
            self._io = ModelIO(self.cfg, self.norm_stats, self.tokenizer,
                               embodiment=self.embodiment, widths=self.widths)
        return self._io

    def _episode(self, e: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Episode e and what samples derive from it once (`derived`), LRU-cached together
        (without a cache, `derived` is None: nothing is kept)."""
        with self._lock:
            entry = self._cache.get(e)
            if entry is not None:
                self._cache.move_to_end(e)
                return entry
        if not self.cache_size:
            return self.source[e], None
        loaded = (self.source[e], {"frames": {}, "cached": True})  # read outside the lock
        with self._lock:
            entry = self._cache.setdefault(e, loaded)  # another thread may have read it first
            self._cache.move_to_end(e)
            while len(self._cache) > self.cache_size:
                _, (_, derived) = self._cache.popitem(last=False)
                derived["cached"] = False  # a thread still using it keeps no more frames in it
                self._frame_bytes -= sum(f.nbytes for f in derived["frames"].values())
        return entry

    def _frame(self, name: str, frames: Any, t: int, derived: dict | None) -> np.ndarray:
        """Frame t of camera `name`'s `frames`, decoded once while the episode is cached and
        the decoded frames fit `frame_cache_bytes` (`derived`: what the cached episode keeps;
        a copy is returned, so a sample never aliases the cache)."""
        if derived is None:
            return frames[t]
        memo = derived["frames"]
        frame = memo.get((name, t))
        if frame is None:
            frame = np.asarray(frames[t])  # decoded outside the lock
            with self._lock:
                if (not derived["cached"] or (name, t) in memo
                        or self._frame_bytes + frame.nbytes > self.frame_cache_bytes):
                    return frame
                memo[(name, t)] = frame
                self._frame_bytes += frame.nbytes
        return frame.copy()

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
        ep, derived = self._episode(e)
        sample = self.make_sample(ep, k, t, derived)
        if self.augment:
            frames = sample["image"] if sample["image"].ndim == 4 else sample["image"][None]
            frames = np.stack([augment_frame(f, rng, self.cfg.augment) for f in frames])
            sample["image"] = frames if sample["image"].ndim == 4 else frames[0]
        sample["cluster"] = np.int32(self.cluster[row])  # for realised-frequency reporting
        return sample

    def make_sample(self, ep: dict[str, Any], k: int, t: int,
                    derived: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """The observation at step t inside event k -> up to Tmax actions, by layout.

        event: the rest of event k, its caption in slot 0. unified: Tmax steps from t
        crossing event boundaries, caption slot c for event k + c when the chunk reaches it
        (steps past the K-th event are masked). chunk: Tmax steps, no caption. The world
        target is always the last frame of event k. `derived` (kept with the cached episode)
        holds what every sample of the episode shares, computed once: its normalised action
        targets and the low-resolution end frame of each event; None (no cache: nothing is
        kept) computes only this sample's steps.
        """
        if self._plan is None:  # ConfigDict lookups cost microseconds each: read them once
            cfg = self.cfg
            self._plan = (int(cfg.max_event_len), cfg.layout, int(cfg.max_captions),
                          int(cfg.world_size), tuple(cfg.cameras),
                          (int(cfg.image_size), int(cfg.image_size), 3))
        tmax, layout, num_slots, world, names, frame_shape = self._plan
        io = self.io
        cameras = [self._camera(ep, name, frame_shape) if here else None
                   for name, here in zip(names, io.present, strict=True)]
        images = cameras[0]  # the world target is the first camera's frame
        starts, ends = np.asarray(ep["events/start"]), np.asarray(ep["events/end"])
        episode_len = len(ep["steps/action"])
        stop = min(int(ends[k]) if layout == "event" else episode_len, t + tmax)
        if layout == "unified":  # event - k of each step; steps past the K-th event masked
            rel = np.searchsorted(ends, np.arange(t, stop), side="right") - k
            n = int(np.sum(rel < num_slots))
            rel = rel[:n]
        else:  # every step is event k's (event) or none has a caption (chunk): slot 0
            n = stop - t

        if derived is None:  # nothing is kept: this sample's steps only (elementwise, so
            # the same numbers as the whole episode's)
            window = io.normalize_actions(io.model_actions(
                ep["steps/action"][t:t + n], ep["steps/observation/state"][t:t + n]))
        else:
            if "actions" not in derived:  # the episode's targets, normalised in one pass
                derived["actions"] = io.normalize_actions(io.model_actions(
                    ep["steps/action"], ep["steps/observation/state"]))
            window = derived["actions"][t:t + n]
        chunk = np.zeros((tmax, window.shape[-1]), np.float32)
        chunk[:n] = window
        mask = np.arange(tmax) < n
        if layout == "unified":
            action_events = np.full((tmax,), rel[-1] if n else 0, np.int32)  # pad: monotone
            action_events[:n] = rel
        else:
            action_events = np.zeros((tmax,), np.int32)
        texts, durations = [], np.zeros((num_slots,), np.int32)
        for c in range(num_slots):
            if c > 0 and (layout != "unified" or not np.any(rel == c)):
                break
            texts.append(ep["events/caption"][k + c])
            length = int(ends[k] - t) if c == 0 else int(ends[k + c] - starts[k + c])
            durations[c] = io.duration_bin(length)
        ends_seen = {} if derived is None else derived.setdefault("end_image", {})
        if k not in ends_seen:  # decoded and resized once per event, not once per sample
            # (or read already resized, when the step store holds end frames at `world`)
            stored = getattr(images, "end_frame", None)
            frame = None if stored is None else stored(k, world)
            if frame is None:
                frame = resize_rgb(images[int(ends[k]) - 1], world)
            ends_seen[k] = frame
        end_image = ends_seen[k] if derived is None else ends_seen[k].copy()
        inputs = io.inputs({name: self._frame(name, frames, t, derived)
                            for name, frames in zip(names, cameras, strict=True)
                            if frames is not None},
                           ep["steps/observation/state"][t],
                           ep["episode_metadata/instruction"], texts, num_slots)
        return {
            **inputs,
            "actions": chunk,
            "action_mask": mask,
            "action_events": action_events,
            "duration_bin": durations,
            "end_image": end_image,
        }

    def _camera(self, ep: dict[str, Any], name: str,
                frame_shape: tuple[int, int, int] | None = None) -> np.ndarray:
        """Frames [T, H, W, 3] of camera feature `steps/observation/<name>`, shape-checked
        against `frame_shape` (default: from data.image_size)."""
        key = f"steps/observation/{name}"
        if key not in ep:
            raise ValueError(f"{self.source.dataset_dir}: data.cameras names '{name}' but the "
                             f"episodes have no field '{key}' (cameras in the data: "
                             f"{sorted(k.split('/')[-1] for k in ep if 'observation/image' in k)})")
        frames = ep[key]
        want = frame_shape or (self.cfg.image_size, self.cfg.image_size, 3)
        if tuple(frames.shape[1:]) != want:
            raise ValueError(f"{self.source.dataset_dir}: field '{key}' has frames of shape "
                             f"{frames.shape[1:]}, expected {want} from data.image_size")
        return frames


def target_action_stats(dataset_dir: str, gain: float, max_episodes: int = 1000,
                        hand: tuple[int, int] = (0, 3)) -> dict[str, np.ndarray]:
    """Normalisation statistics of the position targets (`transforms.position_targets`) of
    the train split's steps, from up to `max_episodes` episodes spread over it: what
    `data.action_target_gain` trains on, so train, val and exports share them."""
    source = open_dataset(dataset_dir, "train")
    picks = np.unique(np.linspace(0, len(source) - 1, min(len(source), max_episodes)
                                  ).astype(int))
    targets = [position_targets(np.asarray(ep["steps/action"], np.float32),
                                np.asarray(ep["steps/observation/state"], np.float32), gain,
                                hand)
               for ep in (source[int(i)] for i in picks)]
    stats = statistics.compute_norm_stats({"action": np.concatenate(targets)})["action"]
    return {name: np.asarray(v, np.float32) for name, v in stats.items()}


def model_norm_stats(data_cfg: ml_collections.ConfigDict, dataset_dir: str,
                     embodiment: Embodiment | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The statistics the model normalises `dataset_dir` with: `data.norm_stats` when set
    (fine-tuning reads new data with an export's: a norm_stats.json, or an export's
    embodiments.json, whose entry for this dataset's embodiment is used, and the dataset's own
    for a robot the export does not know), else the dataset's own, with the action statistics
    of the position targets when `data.action_target_gain` > 0 and the embodiment has them."""
    given = data_cfg.get("norm_stats") or ""
    if given.endswith(EMBODIMENTS_FILE):
        known = read_embodiments(given)
        name = embodiment.name if embodiment is not None else ""
        if name in known:
            return known[name][1]
        given = ""  # a new robot: its own statistics
    stats = statistics.load_norm_stats(given or dataset_dir)
    hand = (0, 3) if embodiment is None else embodiment.hand_position
    if data_cfg.get("action_target_gain") and not given and hand is not None:
        stats = {**stats, "action": target_action_stats(
            dataset_dir, float(data_cfg.action_target_gain), hand=tuple(hand))}
    return stats


def model_tokenizer_path(data_cfg: ml_collections.ConfigDict, dataset_dir: str) -> str:
    """The tokenizer the model reads `dataset_dir` with: `data.tokenizer`, else the dataset's."""
    return data_cfg.get("tokenizer") or f"{dataset_dir}/tokenizer.model"


def make_sampler(data_cfg: ml_collections.ConfigDict, dataset_dir: str, split: str, *,
                 seed: int, index: EventIndex | None = None, augment: bool = False,
                 balanced: bool = False,
                 norm_stats: dict[str, dict[str, np.ndarray]] | None = None,
                 tokenizer_path: str | None = None,
                 widths: tuple[int, int] | None = None) -> EventSampler:
    """The `EventSampler` of one dataset split, with the model's tokenizer and norm stats
    (`norm_stats` when the caller has them already, e.g. a run's; else `model_norm_stats`).

    Events come from `index` (default: every event of the split, drawn uniformly); with
    `balanced`, from the event index stored with the dataset, drawn cluster-balanced with
    `data.balance_alpha`. `tokenizer_path` (a mixture's one tokenizer) overrides
    `model_tokenizer_path`; `widths` (the model's state and action widths) pads this dataset's
    into them with masks (`ModelIO`).
    """
    source = open_dataset(dataset_dir, split)
    embodiment = dataset_embodiment(dataset_dir)
    probs = cluster = None
    if balanced:
        index, probs, cluster = _balanced_index(source, split, data_cfg)
    elif index is None:
        index = scan_events(source)
    return EventSampler(source, index,
                        tokenizer_path or model_tokenizer_path(data_cfg, dataset_dir),
                        model_norm_stats(data_cfg, dataset_dir, embodiment)
                        if norm_stats is None else norm_stats, data_cfg, seed=seed,
                        augment=augment, event_probs=probs, cluster=cluster,
                        embodiment=embodiment, widths=widths)


def _balanced_index(source: EpisodeSource, split: str, data_cfg: ml_collections.ConfigDict
                    ) -> tuple[EventIndex, np.ndarray, np.ndarray]:
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
