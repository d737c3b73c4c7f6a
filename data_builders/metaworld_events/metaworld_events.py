"""TFDS builder `metaworld_events`: scripted MetaWorld experts as event-segmented episodes.

Each example is one successful expert episode (RLDS-style `steps`, `episode_metadata`) plus its
ground-truth `events` (phase runs tiling the episode, with train-split captions). Written as
ArrayRecord so it reads without TensorFlow via `as_data_source`. `build()` also stores the
normalisation statistics and the tokenizer next to `dataset_info.json`. One rollout (cached,
checked, encoded) is `rollouts`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import shutil
import time

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from data_builders.common import (
    REPORT_FILE,
    EventsBuilder,
    finish_dataset,
    skip_stats,
    write_json,
)
from data_builders.metaworld_events.rollouts import (
    RolloutJob,
    check_rollout,
    episode_example,
    rollout_job,
)
from wallwm_jax.data import captions
from wallwm_jax.data.embodiment import Embodiment, embodiment_path, write_embodiment
from wallwm_jax.data.episodes import event_features
from wallwm_jax.data.step_store import write_step_store
from wallwm_jax.data.tasks import STATE_LAYOUT_FILE, state_dim, state_names, state_record
from wallwm_jax.envs.metaworld import DEMO_TASKS, EXTRA_CAMERAS, MT10_TASKS, MT50_TASKS

VAL_FRACTION = 0.15
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


class MetaworldEvents(EventsBuilder):
    """Event-segmented MetaWorld scripted-expert episodes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Scripted experts, ground-truth phase events, PNG frames."}
    BUILDER_CONFIGS = [make_config("demo"), make_config("mt10"), make_config("mt50")]
    DEFAULT_CONFIG_NAME = "demo"

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
        jobs = [RolloutJob(task, i, episode_seed(cfg.seed, task, i), cfg.image_size, MAX_STEPS,
                           cfg.cameras, cfg.privileged_state, cfg.action_noise,
                           cfg.camera_setup, self.cache_dir)
                for task in cfg.tasks for i in indices]
        bar = tqdm.tqdm(total=len(jobs), desc=f"metaworld_events/{cfg.name} {split} rollouts",
                        unit="ep")
        if self.num_workers > 1:
            # spawn: forked children would inherit GL/JAX state from the parent.
            pool = multiprocessing.get_context("spawn").Pool(self.num_workers)
            results = pool.imap(rollout_job, jobs)  # ordered, so output is deterministic
        else:
            pool, results = None, map(rollout_job, jobs)
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
          camera_setup: str = "ours", step_store: bool = False,
          end_frame_size: int = 0) -> str:
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
    `mt50_lerobot` evaluation suite does (config name `-viewlerobot`). `step_store=True` also
    writes the step store (`wallwm_jax.data.step_store`: raw frames addressable per step, read
    without parsing the episode; about 1.5x the TFDS bytes more), to a new or an existing
    build; the TFDS records are the same either way. `end_frame_size > 0` (with `step_store`)
    also stores each event's end frame at that side, the world size of the models that will
    read it (`data.world_size`, 16 in the recipes): the sampler reads it instead of resizing a
    frame. With
    `num_workers > 1` rollouts run in spawned processes (results kept in job order, so the
    output does not depend on it); call from under `if __name__ == "__main__":` in scripts.
    """
    if end_frame_size and not step_store:
        raise ValueError("end_frame_size writes the step store's end frames: it needs "
                         "step_store=True")
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
        builder.download_and_prepare(file_format="array_record", download_config=skip_stats())
        report = build_report(builder, time.perf_counter() - t0, reused_rollouts=cached)
        write_json(os.path.join(version_dir, REPORT_FILE), report)
        print(format_report(report))
        shutil.rmtree(cache_dir, ignore_errors=True)
    layout_path = os.path.join(version_dir, STATE_LAYOUT_FILE)
    if not os.path.exists(layout_path):
        write_json(layout_path, state_record(cfg.privileged_state))
    if not os.path.exists(embodiment_path(version_dir)):
        write_embodiment(version_dir, metaworld_embodiment(cfg))
    if step_store:
        write_step_store(version_dir, end_frame_size or ())
    paraphrase_path = os.path.join(version_dir, PARAPHRASES_FILE)
    if not os.path.exists(paraphrase_path):
        write_json(paraphrase_path, paraphrase_record(cfg.tasks))
    # Norm stats from the train episodes this process built (none when the dataset was
    # built before: finish_dataset reads them back); the tokenizer learns every train-split
    # paraphrase of the tasks, not only those the episodes happen to use.
    arrays = builder.norm_arrays if builder.norm_arrays["state"] else None
    return finish_dataset(version_dir, train_arrays=arrays,
                          tokenizer_texts=captions.train_texts(cfg.tasks))


# MetaWorld's Sawyer: mocap xyz deltas and a gripper command (+1 closes), one action per
# 5 simulator steps of 2.5 ms.
METAWORLD_CONTROL_HZ = 80.0
METAWORLD_ACTIONS = ("hand_dx", "hand_dy", "hand_dz", "gripper")


def metaworld_embodiment(cfg: MetaworldEventsConfig) -> Embodiment:
    """The embodiment.json of a MetaWorld build: the Sawyer's delta end-effector actions, the
    hand at state dims 0-2 (position targets apply), its cameras at the build's size."""
    size = (cfg.image_size, cfg.image_size)
    return Embodiment(
        name="metaworld_sawyer", state_names=tuple(state_names(cfg.privileged_state)),
        action_names=METAWORLD_ACTIONS, action_space="delta_ee",
        control_hz=METAWORLD_CONTROL_HZ,
        cameras={"image": size, **{f"image_{c}": size for c in cfg.cameras}},
        gripper_index=3, gripper_convention="close_high", hand_position=(0, 3))


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
