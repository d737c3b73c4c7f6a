"""TFDS builder `lerobot_events`: a LeRobot dataset (v3.0 layout on disk) as event-segmented
episodes, the same output as `rlds_events` (key mapping, automatic segmenter and captions,
PNG frames, norm stats, tokenizer, event index and a build report next to dataset_info.json).
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from data_builders.common import (
    DEFAULT_EMBODIMENT,
    ConvertedEvents,
    EmbodimentFlags,
    convert,
    converter_config,
    converter_embodiment,
    note_excluded,
)
from data_builders.lerobot_events.source import LeRobotSource, read_info, resolve
from data_builders.rlds_events import KeyMapping, convert_episode

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
    source_dir = os.path.abspath(os.fspath(source_dir))
    base = name or os.path.basename(source_dir.rstrip("/")) or "lerobot"
    return converter_config(LerobotEventsConfig, source_dir, mapping, base=base,
                            val_fraction=val_fraction, seed=seed)


class LerobotEvents(ConvertedEvents):
    """Event-segmented episodes converted from a LeRobot v3 dataset on disk."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Key-mapped LeRobot v3 source, automatic events, PNG frames."}

    def __init__(self, *, config: LerobotEventsConfig, strict: bool = False,
                 excluded_dir: str = "", **kwargs):
        info = read_info(config.source_dir)
        self.spec = resolve(config.mapping, info, os.path.basename(config.source_dir))
        self.source_splits = {"train": int(info["total_episodes"])}
        self.strict, self.excluded_dir, self.beam = strict, excluded_dir, False
        super().__init__(config=config, **kwargs)

    def _generate_examples(self, split: str, items: list[tuple[str, int]]):
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
                note_excluded(self.excluded_dir, key, err)
                continue
            example["episode_metadata"]["episode_id"] = key
            yield key, example


def feature_names(info: dict, key: str) -> tuple[str, ...]:
    """The per-dimension names info.json gives a vector feature (a list, or a dict holding
    one list, as some LeRobot datasets write {"motors": [...]}), or () when it gives none."""
    names = info["features"].get(key, {}).get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    return tuple(str(n) for n in names) if isinstance(names, list | tuple) else ()


def build(source_dir: str, data_dir: str, mapping: KeyMapping = DEFAULT_MAPPING, *,
          name: str | None = None, val_fraction: float = 0.1, seed: int = 0,
          strict: bool = False, embodiment: EmbodimentFlags = DEFAULT_EMBODIMENT) -> str:
    """Convert (or reuse) `source_dir` into `<data_dir>/lerobot_events/<config>/1.0.0`, with
    norm stats, tokenizer, event index, build report and embodiment.json (names and control
    rate from info.json, the rest from `embodiment`); return that dir."""
    cfg = make_config(source_dir, mapping, name=name, val_fraction=val_fraction, seed=seed)
    excluded_dir = os.path.join(data_dir, "lerobot_events", ".excluded", cfg.name)
    builder = LerobotEvents(data_dir=data_dir, config=cfg, strict=strict,
                            excluded_dir=excluded_dir)
    info = read_info(cfg.source_dir)
    spec = builder.spec
    state_names = feature_names(info, mapping.state_key)
    action_names = feature_names(info, mapping.action_key)
    flags = dataclasses.replace(
        embodiment,
        state_names=embodiment.state_names or (
            state_names if len(state_names) == spec.state_dim else ()),
        action_names=embodiment.action_names or (
            action_names if len(action_names) == spec.action_dim else ()))
    emb = converter_embodiment(flags, spec, mapping,
                               default_name=info.get("robot_type") or cfg.name,
                               default_hz=info.get("fps"))
    return convert(builder, embodiment=emb)
