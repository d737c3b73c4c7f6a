"""TFDS builder `lerobot_events`: a LeRobot dataset (v3.0 layout on disk) as event-segmented
episodes, the same output as `rlds_events` (key mapping, automatic segmenter and captions,
PNG frames, norm stats, tokenizer, event index and a build report next to dataset_info.json).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import tensorflow_datasets as tfds
from etils import epath

from data_builders.lerobot_events.source import LeRobotSource, read_info, resolve
from data_builders.rlds_events.mapping import KeyMapping, convert_episode
from data_builders.rlds_events.rlds_events import (
    REPORT_FILE,
    build_report,
    finish_dataset,
    format_report,
    plan_splits,
)
from wallwm_jax.data.episodes import event_features

DEFAULT_MAPPING = KeyMapping(image_keys=("observation.images.top",),
                             state_key="observation.state", action_key="action",
                             instruction_key="task")


@dataclasses.dataclass
class LerobotEventsConfig(tfds.core.BuilderConfig):
    source_dir: str = ""
    mapping: KeyMapping = DEFAULT_MAPPING
    val_fraction: float = 0.1
    seed: int = 0


def make_config(source_dir: str, mapping: KeyMapping, *, name: str | None = None,
                val_fraction: float = 0.1, seed: int = 0) -> LerobotEventsConfig:
    """Config named `<name or source dir name>-<digest of the settings>`."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: {val_fraction}, expected in [0, 1)")
    source_dir = os.path.abspath(os.fspath(source_dir))
    settings = json.dumps([source_dir, dataclasses.asdict(mapping), val_fraction, seed],
                          sort_keys=True)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:8]
    base = name or os.path.basename(source_dir.rstrip("/")) or "lerobot"
    return LerobotEventsConfig(name=f"{base}-{digest}", description=settings,
                               source_dir=source_dir, mapping=mapping,
                               val_fraction=val_fraction, seed=seed)


class LerobotEvents(tfds.core.GeneratorBasedBuilder):
    """Event-segmented episodes converted from a LeRobot v3 dataset on disk."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Key-mapped LeRobot v3 source, automatic events, PNG frames."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def __init__(self, *, config: LerobotEventsConfig, strict: bool = False,
                 excluded_dir: str = "", **kwargs):
        info = read_info(config.source_dir)
        self.spec = resolve(config.mapping, info, os.path.basename(config.source_dir))
        self.source_splits = {"train": int(info["total_episodes"])}
        self.strict, self.excluded_dir, self.beam = strict, excluded_dir, False
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.spec
        return self.dataset_info_from_configs(features=event_features(
            {name: shape for name, _, shape in spec.cameras}, spec.state_dim, spec.action_dim,
            extra_text_metadata=("episode_id",)))

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        plan = plan_splits(self.source_splits, cfg.val_fraction, cfg.seed)
        return {split: self._generate_examples(items) for split, items in plan.items()}

    def _generate_examples(self, items: list[tuple[str, int]]):
        cfg = self.builder_config
        keys = tuple(dict.fromkeys([p for _, p, _ in self.spec.cameras]
                                   + [self.spec.state_path, self.spec.action_path]))
        source = LeRobotSource(cfg.source_dir, keys)
        for _, index in items:
            key = f"episode_{index:06d}"
            try:
                example = convert_episode(source[index], cfg.mapping, self.spec)
            except ValueError as err:
                if self.strict:
                    raise ValueError(f"{cfg.source_dir} episode {index}: {err} (strict)"
                                     ) from None
                (epath.Path(self.excluded_dir) / f"{key}.json").write_text(
                    json.dumps({"episode": key, "error": str(err)}))
                continue
            example["episode_metadata"]["episode_id"] = key
            yield key, example


def build(source_dir: str, data_dir: str, mapping: KeyMapping = DEFAULT_MAPPING, *,
          name: str | None = None, val_fraction: float = 0.1, seed: int = 0,
          strict: bool = False) -> str:
    """Convert (or reuse) `source_dir` into `<data_dir>/lerobot_events/<config>/1.0.0`, with
    norm stats, tokenizer, event index and build report; return that dir."""
    cfg = make_config(source_dir, mapping, name=name, val_fraction=val_fraction, seed=seed)
    excluded_dir = os.path.join(data_dir, "lerobot_events", ".excluded", cfg.name)
    builder = LerobotEvents(data_dir=data_dir, config=cfg, strict=strict,
                            excluded_dir=excluded_dir)
    version_dir = os.fspath(builder.data_dir)
    if not builder.is_prepared():
        notes = epath.Path(excluded_dir)
        if notes.exists():
            notes.rmtree()
        notes.mkdir(parents=True)
        t0 = time.perf_counter()
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(
                                         compute_stats=tfds.download.ComputeStatsMode.SKIP))
        report = build_report(builder, excluded_dir, time.perf_counter() - t0)
        (epath.Path(version_dir) / REPORT_FILE).write_text(json.dumps(report, indent=1))
        print(format_report(report).replace("rlds_events/", "lerobot_events/", 1))
        notes.rmtree()
    return finish_dataset(version_dir)
