"""TFDS builder `metaworld_events`: scripted MetaWorld experts as event-segmented episodes.

Each example is one successful expert episode (RLDS-style `steps`, `episode_metadata`) plus its
ground-truth `events` (phase runs tiling the episode, with train-split captions). Written as
ArrayRecord so it reads without TensorFlow via `as_data_source`. `build()` also stores the
normalisation statistics and the tokenizer next to `dataset_info.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import multiprocessing
import os
import time

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath
from PIL import Image

from wallwm_jax.data import captions
from wallwm_jax.data.statistics import NORM_STATS_FILE, compute_norm_stats, save_norm_stats
from wallwm_jax.data.tokenizer import TOKENIZER_FILE, train_tokenizer
from wallwm_jax.envs.metaworld import DEMO_TASKS, MT10_TASKS, MT50_TASKS, rollout_expert

VAL_FRACTION = 0.15
MAX_STEPS = 200


@dataclasses.dataclass
class MetaworldEventsConfig(tfds.core.BuilderConfig):
    tasks: tuple[str, ...] = DEMO_TASKS
    episodes_per_task: int = 10
    image_size: int = 64
    seed: int = 0


BASE_TASKS = {"demo": DEMO_TASKS, "mt10": MT10_TASKS, "mt50": MT50_TASKS}


def make_config(config: str = "demo", *, episodes_per_task: int = 10, image_size: int = 64,
                seed: int = 0, tasks: tuple[str, ...] | None = None) -> MetaworldEventsConfig:
    """Config `config` with overrides; non-default overrides get their own config name
    (so their own directory), which keeps "already built" meaning "built with these settings"."""
    if config not in BASE_TASKS:
        raise ValueError(f"unknown config {config!r}; known: {sorted(BASE_TASKS)}")
    if episodes_per_task < 2:
        raise ValueError("episodes_per_task must be >= 2 (one or more go to the val split)")
    tasks = tuple(tasks) if tasks is not None else BASE_TASKS[config]
    name = config
    if (episodes_per_task, image_size, seed) != (10, 64, 0):
        name += f"-e{episodes_per_task}-i{image_size}-s{seed}"
    if tasks != BASE_TASKS[config]:
        name += "-t" + hashlib.sha1(",".join(tasks).encode()).hexdigest()[:8]
    return MetaworldEventsConfig(
        name=name, description=f"{config}: {', '.join(tasks)}", tasks=tasks,
        episodes_per_task=episodes_per_task, image_size=image_size, seed=seed)


def split_episodes(episodes_per_task: int) -> dict[str, range]:
    """Episode indices per split: the last ~15% of each task's episodes are validation."""
    n_val = max(1, round(VAL_FRACTION * episodes_per_task))
    return {"train": range(episodes_per_task - n_val),
            "val": range(episodes_per_task - n_val, episodes_per_task)}


def episode_seed(seed: int, task: str, index: int) -> int:
    """Rollout seed of episode `index` of `task`: distinct per (seed, task, index)."""
    digest = hashlib.sha1(f"{seed}/{task}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def episode_example(task: str, index: int, rollout: dict) -> dict:
    """Feature dict of one rollout (images already PNG-encoded so TFDS needs no TensorFlow)."""
    t = len(rollout["actions"])
    events = rollout["events"]
    return {
        "steps": {
            "observation": {"image": [_png(im) for im in rollout["images"]],
                            "state": rollout["states"].astype(np.float32)},
            "action": rollout["actions"].astype(np.float32),
            "is_first": np.arange(t) == 0,
            "is_last": np.arange(t) == t - 1,
        },
        "episode_metadata": {
            "task": task,
            "instruction": captions.instruction(task, variant=index),
            "success": bool(rollout["success"]),
        },
        "events": {
            "start": np.array([s for s, _, _ in events], np.int32),
            "end": np.array([e for _, e, _ in events], np.int32),
            "caption": [captions.event_caption(task, p, variant=index + k)
                        for k, (_, _, p) in enumerate(events)],
            "phase": [p for _, _, p in events],
        },
    }


def _rollout_job(job: tuple[str, int, int, int]) -> tuple[str, int, dict]:
    task, index, seed, image_size = job
    return task, index, rollout_expert(task, seed=seed, image_size=image_size,
                                       max_steps=MAX_STEPS)


class MetaworldEvents(tfds.core.GeneratorBasedBuilder):
    """Event-segmented MetaWorld scripted-expert episodes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Scripted experts, ground-truth phase events, PNG frames."}
    BUILDER_CONFIGS = [make_config("demo"), make_config("mt10"), make_config("mt50")]
    DEFAULT_CONFIG_NAME = "demo"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10's own lookup imports `importlib_resources`, which it only declares as a
        # dependency for Python < 3.9.
        return epath.Path(__file__)

    def __init__(self, *, num_workers: int = 1, **kwargs):
        self.num_workers = num_workers
        self.report = {"episodes": 0, "excluded": 0, "steps": 0, "events": 0, "rollouts": 0,
                       "success_by_task": {}}
        self.norm_arrays: dict[str, list[np.ndarray]] = {"state": [], "action": []}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "steps": tfds.features.Sequence({
                    "observation": {
                        "image": tfds.features.Image(shape=(size, size, 3), dtype=np.uint8,
                                                     encoding_format="png"),
                        "state": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                    },
                    "action": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                    "is_first": tfds.features.Tensor(shape=(), dtype=np.bool_),
                    "is_last": tfds.features.Tensor(shape=(), dtype=np.bool_),
                }),
                "episode_metadata": {
                    "task": tfds.features.Text(),
                    "instruction": tfds.features.Text(),
                    "success": tfds.features.Tensor(shape=(), dtype=np.bool_),
                },
                "events": tfds.features.Sequence({
                    "start": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "end": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "caption": tfds.features.Text(),
                    "phase": tfds.features.Text(),
                }),
            }),
            homepage="https://github.com/Farama-Foundation/Metaworld",
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, indices)
                for split, indices in split_episodes(self.builder_config.episodes_per_task).items()}

    def _generate_examples(self, split: str, indices: range):
        cfg = self.builder_config
        jobs = [(task, i, episode_seed(cfg.seed, task, i), cfg.image_size)
                for task in cfg.tasks for i in indices]
        bar = tqdm.tqdm(total=len(jobs), desc=f"metaworld_events/{cfg.name} {split} rollouts",
                        unit="ep")
        if self.num_workers > 1:
            # spawn: forked children would inherit GL/JAX state from the parent.
            pool = multiprocessing.get_context("spawn").Pool(self.num_workers)
            results = pool.imap(_rollout_job, jobs)  # ordered, so output is deterministic
        else:
            pool, results = None, map(_rollout_job, jobs)
        kept = 0
        try:
            for task, index, rollout in results:
                bar.update(1)
                self.report["rollouts"] += 1
                ok, total = self.report["success_by_task"].get(task, (0, 0))
                self.report["success_by_task"][task] = (ok + rollout["success"], total + 1)
                if not rollout["success"]:
                    self.report["excluded"] += 1
                    continue
                self.report["episodes"] += 1
                self.report["steps"] += len(rollout["actions"])
                self.report["events"] += len(rollout["events"])
                if split == "train":
                    self.norm_arrays["state"].append(rollout["states"])
                    self.norm_arrays["action"].append(rollout["actions"])
                kept += 1
                yield f"{task}_{index:06d}", episode_example(task, index, rollout)
            if not kept:
                raise RuntimeError(f"no successful expert episode among the {len(jobs)} "
                                   f"rollouts of split {split!r}; nothing to write")
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()


def build(data_dir: str, *, config: str = "demo", episodes_per_task: int = 10,
          image_size: int = 64, seed: int = 0, num_workers: int = 1,
          tasks: tuple[str, ...] | None = None) -> str:
    """Build (or reuse) the dataset; write norm stats and tokenizer; return the version dir.

    Resumable: a finished build is reused, and TFDS writes into a temporary directory that
    is renamed only when every split is written, so an interrupted build leaves nothing that
    looks finished. With `num_workers > 1` rollouts run in spawned processes (results kept
    in job order, so the output does not depend on it); call from under
    `if __name__ == "__main__":` in scripts, as multiprocessing's spawn requires.
    """
    cfg = make_config(config, episodes_per_task=episodes_per_task, image_size=image_size,
                      seed=seed, tasks=tasks)
    builtin = {c.name for c in MetaworldEvents.BUILDER_CONFIGS}
    builder = MetaworldEvents(data_dir=data_dir, config=cfg.name if cfg.name in builtin else cfg,
                              num_workers=num_workers)
    version_dir = os.fspath(builder.data_dir)
    if not builder.is_prepared():
        t0 = time.perf_counter()
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(
                compute_stats=tfds.download.ComputeStatsMode.SKIP))
        _print_report(builder, time.perf_counter() - t0)
    stats_path = os.path.join(version_dir, NORM_STATS_FILE)
    if not os.path.exists(stats_path):
        arrays = builder.norm_arrays
        if not arrays["state"]:  # built earlier by another process: recompute from disk
            arrays = _read_train_arrays(version_dir)
        save_norm_stats(stats_path, compute_norm_stats(
            {k: np.concatenate(v) for k, v in arrays.items()}))
    tokenizer_path = os.path.join(version_dir, TOKENIZER_FILE)
    if not os.path.exists(tokenizer_path):
        train_tokenizer(captions.train_texts(cfg.tasks), tokenizer_path)
    return version_dir


def _read_train_arrays(version_dir: str) -> dict[str, list[np.ndarray]]:
    source = tfds.builder_from_directory(version_dir).as_data_source(split="train")
    arrays = {"state": [], "action": []}
    for i in range(len(source)):
        ep = source[i]
        arrays["state"].append(np.stack(ep["steps"]["observation"]["state"]))
        arrays["action"].append(np.stack(ep["steps"]["action"]))
    return arrays


def _print_report(builder: MetaworldEvents, seconds: float) -> None:
    r = builder.report
    n = max(r["episodes"], 1)
    print(f"metaworld_events/{builder.builder_config.name}: {r['episodes']} episodes, "
          f"{r['steps']} steps, {r['events'] / n:.2f} events/episode, "
          f"mean event {r['steps'] / max(r['events'], 1):.1f} steps, expert success "
          f"{r['episodes']}/{r['rollouts']} ({100 * r['episodes'] / max(r['rollouts'], 1):.0f}%),"
          f" excluded {r['excluded']}, built in {seconds:.1f}s -> {builder.data_dir}")
    print("  expert success by task: " + ", ".join(
        f"{task} {ok}/{total}" for task, (ok, total) in r["success_by_task"].items()))
