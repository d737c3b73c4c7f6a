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
import json
import multiprocessing
import os
import shutil
import time

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath
from PIL import Image

from wallwm_jax.data import captions, event_index
from wallwm_jax.data.episodes import event_features, validate_episode
from wallwm_jax.data.statistics import NORM_STATS_FILE, compute_norm_stats, save_norm_stats
from wallwm_jax.data.tasks import STATE_LAYOUT_FILE, state_dim, state_record
from wallwm_jax.data.tokenizer import TOKENIZER_FILE, train_tokenizer
from wallwm_jax.envs.metaworld import (
    DEMO_TASKS,
    EXTRA_CAMERAS,
    MT10_TASKS,
    MT50_TASKS,
    rollout_expert,
)

VAL_FRACTION = 0.15
REPORT_FILE = "build_report.json"
PARAPHRASES_FILE = "paraphrases.json"
MAX_STEPS = 200


@dataclasses.dataclass
class MetaworldEventsConfig(tfds.core.BuilderConfig):
    tasks: tuple[str, ...] = DEMO_TASKS
    episodes_per_task: int = 10
    image_size: int = 64
    seed: int = 0
    cameras: tuple[str, ...] = ()  # extra cameras, stored as steps/observation/image_<name>
    keep_failures: bool = False  # keep failed expert episodes (episode_metadata/success False)
    # Privileged simulator state: steps/observation/state is 10-D (hand xyz, gripper, object
    # xyz, goal xyz) instead of the 4-D agent state; recorded in STATE_LAYOUT_FILE.
    privileged_state: bool = False
    # DART-style noise injection: executed actions = expert + N(0, action_noise^2); the
    # recorded actions stay the expert's (labels for the states a deviation leads to).
    action_noise: float = 0.0
    # Scene camera placement, as MetaWorldTask takes it: "ours" (corner2 where MetaWorld puts
    # it, upright) or "lerobot" (the view the mt50_lerobot evaluation suite renders).
    camera_setup: str = "ours"


BASE_TASKS = {"demo": DEMO_TASKS, "mt10": MT10_TASKS, "mt50": MT50_TASKS}


def make_config(config: str = "demo", *, episodes_per_task: int = 10, image_size: int = 64,
                seed: int = 0, tasks: tuple[str, ...] | None = None,
                cameras: tuple[str, ...] = (),
                keep_failures: bool = False,
                privileged_state: bool = False,
                action_noise: float = 0.0,
                camera_setup: str = "ours") -> MetaworldEventsConfig:
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
    unknown = [c for c in cameras if c not in EXTRA_CAMERAS]
    if unknown:
        raise ValueError(f"unknown camera(s) {unknown}; extra cameras: {sorted(EXTRA_CAMERAS)}")
    if cameras:
        name += "-c" + "+".join(cameras)
    if keep_failures:
        name += "-withfailures"
    description = f"{config}: {', '.join(tasks)}"
    if privileged_state:
        name += "-privstate"
        description += "; state with privileged simulator state (object and goal positions)"
    if action_noise < 0:
        raise ValueError(f"action_noise must be >= 0, got {action_noise}")
    if action_noise:
        name += f"-dart{action_noise:g}"
        description += (f"; executed actions perturbed by N(0, {action_noise:g}^2), recorded "
                        "actions the expert's")
    if camera_setup not in ("ours", "lerobot"):
        raise ValueError(f"camera_setup must be 'ours' or 'lerobot', got {camera_setup!r}")
    if camera_setup != "ours":
        name += f"-view{camera_setup}"
        description += f"; scene camera as the {camera_setup} setup places it"
    return MetaworldEventsConfig(
        name=name, description=description, tasks=tasks, camera_setup=camera_setup,
        episodes_per_task=episodes_per_task, image_size=image_size, seed=seed,
        cameras=tuple(cameras), keep_failures=keep_failures,
        privileged_state=bool(privileged_state), action_noise=float(action_noise))


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


def episode_example(task: str, index: int, rollout: dict,
                    cameras: tuple[str, ...] = ()) -> dict:
    """Feature dict of one rollout (images already PNG-encoded so TFDS needs no TensorFlow)."""
    t = len(rollout["actions"])
    events = rollout["events"]
    observation = {"image": [_png(im) for im in rollout["images"]],
                   "state": rollout["states"].astype(np.float32),
                   **{f"image_{c}": [_png(im) for im in rollout[f"images_{c}"]]
                      for c in cameras}}
    return {
        "steps": {
            "observation": observation,
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


def check_rollout(rollout: dict, image_size: int, cameras: tuple[str, ...]) -> None:
    """Raise ValueError naming the field when a rollout breaks the episode contract
    (shapes, NaN/Inf, events that do not tile the episode, wrong-size frames)."""
    t = len(rollout["actions"])
    events = rollout["events"]
    flat = {
        "steps/observation/image": rollout["images"],
        "steps/observation/state": rollout["states"], "steps/action": rollout["actions"],
        "steps/is_first": np.arange(t) == 0, "steps/is_last": np.arange(t) == t - 1,
        "episode_metadata/task": "", "episode_metadata/instruction": "",
        "episode_metadata/success": bool(rollout["success"]),
        "events/start": np.array([s for s, _, _ in events], np.int32),
        "events/end": np.array([e for _, e, _ in events], np.int32),
        "events/caption": [p for _, _, p in events], "events/phase": [p for _, _, p in events],
    }
    validate_episode(flat, image_shape=(image_size, image_size, 3))
    for c in cameras:
        frames = rollout[f"images_{c}"]
        if frames.shape != (t, image_size, image_size, 3):
            raise ValueError(f"field 'steps/observation/image_{c}': shape {frames.shape}, "
                             f"expected {(t, image_size, image_size, 3)}")


def _rollout_job(job: tuple) -> tuple[str, int, dict]:
    """One expert rollout, read from / written to the rollout cache (`cache_dir`) so an
    interrupted build restarts from the episodes it already simulated."""
    (task, index, seed, image_size, cameras, privileged_state, action_noise, camera_setup,
     cache_dir) = job
    path = os.path.join(cache_dir, f"{task}_{index:06d}.npz") if cache_dir else None
    if path and os.path.exists(path):
        with np.load(path, allow_pickle=False) as f:
            rollout = {k: f[k] for k in f.files}
        rollout["events"] = [(int(s), int(e), str(p)) for s, e, p in zip(
            rollout.pop("event_start"), rollout.pop("event_end"), rollout.pop("event_phase"),
            strict=True)]
        rollout["success"] = bool(rollout["success"])
        rollout["phases"] = list(rollout["phases"])
        return task, index, rollout
    rollout = rollout_expert(task, seed=seed, image_size=image_size, max_steps=MAX_STEPS,
                             extra_cameras=cameras, privileged_state=privileged_state,
                             action_noise=action_noise, camera_setup=camera_setup)
    if path:
        arrays = {k: v for k, v in rollout.items() if k not in ("events",)}
        arrays["phases"] = np.asarray(rollout["phases"], str)
        arrays["event_start"] = np.asarray([s for s, _, _ in rollout["events"]], np.int64)
        arrays["event_end"] = np.asarray([e for _, e, _ in rollout["events"]], np.int64)
        arrays["event_phase"] = np.asarray([p for _, _, p in rollout["events"]], str)
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a killed build never leaves a half-written episode
    return task, index, rollout


class MetaworldEvents(tfds.core.GeneratorBasedBuilder):
    """Event-segmented MetaWorld scripted-expert episodes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Scripted experts, ground-truth phase events, PNG frames."}
    BUILDER_CONFIGS = [make_config("demo"), make_config("mt10"), make_config("mt50")]
    DEFAULT_CONFIG_NAME = "demo"

    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and
    # prepared" for every build; nothing is downloaded here, and the build report says where
    # the dataset went.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10's own lookup imports `importlib_resources`, which it only declares as a
        # dependency for Python < 3.9.
        return epath.Path(__file__)

    def __init__(self, *, num_workers: int = 1, strict: bool = False,
                 cache_dir: str | None = None, **kwargs):
        self.num_workers = num_workers
        self.strict = strict
        self.cache_dir = cache_dir
        self.report = {"episodes": 0, "steps": 0, "rollouts": 0, "success_by_task": {},
                       "excluded": {}, "events_per_episode": [], "event_durations": []}
        self.norm_arrays: dict[str, list[np.ndarray]] = {"state": [], "action": []}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        cameras = ["image", *(f"image_{c}" for c in self.builder_config.cameras)]
        return self.dataset_info_from_configs(
            features=event_features({name: (size, size, 3) for name in cameras},
                                    state_dim(self.builder_config.privileged_state), 4),
            homepage="https://github.com/Farama-Foundation/Metaworld",
        )

    def _exclude(self, reason: str) -> None:
        self.report["excluded"][reason] = self.report["excluded"].get(reason, 0) + 1

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, indices)
                for split, indices in split_episodes(self.builder_config.episodes_per_task).items()}

    def _generate_examples(self, split: str, indices: range):
        cfg = self.builder_config
        jobs = [(task, i, episode_seed(cfg.seed, task, i), cfg.image_size, cfg.cameras,
                 cfg.privileged_state, cfg.action_noise, cfg.camera_setup, self.cache_dir)
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
                if not rollout["success"] and not cfg.keep_failures:
                    self._exclude("expert failed")
                    continue
                try:
                    check_rollout(rollout, cfg.image_size, cfg.cameras)
                except ValueError as err:
                    if self.strict:
                        raise ValueError(f"metaworld_events/{cfg.name} {split} episode "
                                         f"{task}_{index:06d}: {err} (--strict)") from None
                    self._exclude(f"invalid {str(err).split(':')[0]}")
                    continue
                self.report["episodes"] += 1
                self.report["steps"] += len(rollout["actions"])
                self.report["events_per_episode"].append(len(rollout["events"]))
                self.report["event_durations"] += [e - s for s, e, _ in rollout["events"]]
                if split == "train":
                    self.norm_arrays["state"].append(rollout["states"])
                    self.norm_arrays["action"].append(rollout["actions"])
                kept += 1
                yield f"{task}_{index:06d}", episode_example(task, index, rollout, cfg.cameras)
            if not kept:
                raise RuntimeError(f"no successful expert episode among the {len(jobs)} "
                                   f"rollouts of split {split!r}; nothing to write")
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()


def build(data_dir: str, *, config: str = "demo", episodes_per_task: int = 10,
          image_size: int = 64, seed: int = 0, num_workers: int = 1,
          tasks: tuple[str, ...] | None = None, cameras: tuple[str, ...] = (),
          keep_failures: bool = False, strict: bool = False,
          privileged_state: bool = False, action_noise: float = 0.0,
          camera_setup: str = "ours") -> str:
    """Build (or reuse) the dataset; write norm stats, tokenizer and build report; return the
    version dir.

    Resumable twice over: a finished build is reused, and every simulated rollout is cached
    (`<data_dir>/metaworld_events/.rollouts/<config>/`, atomic writes) until the build
    finishes, so a build interrupted mid-way restarts without re-simulating what it had.
    TFDS writes into a temporary directory renamed only when every split is written, so an
    interrupted build never looks finished. Invalid episodes are excluded and counted
    (`strict=True` raises instead, naming the episode and field); failed expert episodes are
    excluded unless `keep_failures` (then kept with `episode_metadata/success` False).
    `privileged_state=True` stores privileged simulator state (object and goal positions
    after the 4-D agent state) and gets its own config name (`-privstate`); the state layout
    of every build is written to `state_layout.json` beside dataset_info.json.
    `action_noise > 0` perturbs the executed actions (DART) and keeps the expert's as labels
    (config name `-dart<noise>`). `camera_setup="lerobot"` renders the scene camera as the
    `mt50_lerobot` evaluation suite does (config name `-viewlerobot`). With
    `num_workers > 1` rollouts run in spawned processes (results kept in job order, so the
    output does not depend on it); call from under `if __name__ == "__main__":` in scripts.
    """
    cfg = make_config(config, episodes_per_task=episodes_per_task, image_size=image_size,
                      seed=seed, tasks=tasks, cameras=cameras, keep_failures=keep_failures,
                      privileged_state=privileged_state, action_noise=action_noise,
                      camera_setup=camera_setup)
    builtin = {c.name for c in MetaworldEvents.BUILDER_CONFIGS}
    cache_dir = os.path.join(data_dir, "metaworld_events", ".rollouts", cfg.name)
    builder = MetaworldEvents(data_dir=data_dir, config=cfg.name if cfg.name in builtin else cfg,
                              num_workers=num_workers, strict=strict, cache_dir=cache_dir)
    version_dir = os.fspath(builder.data_dir)
    if not builder.is_prepared():
        os.makedirs(cache_dir, exist_ok=True)
        cached = len(os.listdir(cache_dir))
        if cached:
            print(f"metaworld_events/{cfg.name}: resuming, {cached} rollouts already simulated")
        t0 = time.perf_counter()
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(
                compute_stats=tfds.download.ComputeStatsMode.SKIP))
        report = build_report(builder, time.perf_counter() - t0, reused_rollouts=cached)
        with open(os.path.join(version_dir, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=1)
        print(format_report(report))
        shutil.rmtree(cache_dir, ignore_errors=True)
    layout_path = os.path.join(version_dir, STATE_LAYOUT_FILE)
    if not os.path.exists(layout_path):
        with open(layout_path + ".tmp", "w") as f:
            json.dump(state_record(cfg.privileged_state), f, indent=1)
        os.replace(layout_path + ".tmp", layout_path)
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
    paraphrase_path = os.path.join(version_dir, PARAPHRASES_FILE)
    if not os.path.exists(paraphrase_path):
        with open(paraphrase_path + ".tmp", "w") as f:
            json.dump(paraphrase_record(cfg.tasks), f, indent=1)
        os.replace(paraphrase_path + ".tmp", paraphrase_path)
    # The event index (clusters for balanced sampling) is built with the data, never by
    # training; a reused dataset without one (or with a stale one) gets it here.
    event_index.ensure_built(version_dir)
    return version_dir


def paraphrase_record(tasks: tuple[str, ...]) -> dict:
    """The fixed train / held-out split of every instruction and caption paraphrase of
    `tasks`, stored with the dataset (held-out wording never appears in its episodes)."""
    out = {}
    for task in tasks:
        out[task] = {split: {
            "instruction": [captions.instruction(task, variant=v, split=split)
                            for v in range(captions.num_variants(split))],
            "captions": {phase: [captions.template_caption(task, phase, variant=v, split=split)
                                 for v in range(captions.num_variants(split))]
                         for phase in captions.PHASE_TEMPLATES},
        } for split in captions.SPLITS}
    return out


def _read_train_arrays(version_dir: str) -> dict[str, list[np.ndarray]]:
    source = tfds.builder_from_directory(version_dir).as_data_source(split="train")
    arrays = {"state": [], "action": []}
    for i in range(len(source)):
        ep = source[i]
        arrays["state"].append(np.stack(ep["steps"]["observation"]["state"]))
        arrays["action"].append(np.stack(ep["steps"]["action"]))
    return arrays


def build_report(builder: MetaworldEvents, seconds: float, *, reused_rollouts: int = 0) -> dict:
    """What a build produced: episodes, steps, events per episode, event durations, expert
    success per task, exclusions by reason, time and episodes/min."""
    r = builder.report
    per_ep, dur = np.asarray(r["events_per_episode"]), np.asarray(r["event_durations"])

    def stats(x: np.ndarray) -> dict[str, float]:
        if not len(x):
            return {}
        return {"mean": float(x.mean()), "median": float(np.median(x)), "min": int(x.min()),
                "max": int(x.max())}

    ok = sum(a for a, _ in r["success_by_task"].values())
    return {
        "config": builder.builder_config.name, "dir": os.fspath(builder.data_dir),
        "episodes": r["episodes"], "steps": r["steps"], "rollouts": r["rollouts"],
        "events_per_episode": stats(per_ep), "event_duration_steps": stats(dur),
        "expert_success_rate": ok / max(r["rollouts"], 1),
        "expert_success_by_task": {t: [a, n] for t, (a, n) in r["success_by_task"].items()},
        "excluded": dict(r["excluded"]), "seconds": seconds,
        "episodes_per_min": 60.0 * r["rollouts"] / max(seconds, 1e-9),
        "reused_rollouts": reused_rollouts, "workers": builder.num_workers,
    }


def format_report(report: dict) -> str:
    """Human-readable build report (what `build` prints)."""
    e, d = report["events_per_episode"], report["event_duration_steps"]
    lines = [
        f"metaworld_events/{report['config']}: {report['episodes']} episodes, "
        f"{report['steps']} steps in {report['seconds']:.1f}s "
        f"({report['episodes_per_min']:.1f} rollouts/min, {report['workers']} workers) -> "
        f"{report['dir']}",
        f"  events per episode: mean {e.get('mean', 0):.2f} (min {e.get('min', 0)}, max "
        f"{e.get('max', 0)}); event duration: mean {d.get('mean', 0):.1f}, median "
        f"{d.get('median', 0):.0f} (min {d.get('min', 0)}, max {d.get('max', 0)}) steps",
        f"  expert success {100 * report['expert_success_rate']:.0f}% of {report['rollouts']} "
        "rollouts: " + ", ".join(f"{t} {a}/{n}" for t, (a, n) in
                                 report["expert_success_by_task"].items()),
        "  excluded: " + (", ".join(f"{n} {why}" for why, n in report["excluded"].items())
                          or "none"),
    ]
    return "\n".join(lines)
