"""What the event dataset builders share: a quiet TFDS builder, finishing a built dataset (norm
stats, tokenizer, event index) and, for the converters of datasets on disk (`rlds_events`,
`lerobot_events`), their config names, split plan, excluded episodes and build report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import time
from typing import Any, TypeVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from wallwm_jax import cli
from wallwm_jax.data import event_index
from wallwm_jax.data.embodiment import (
    ACTION_SPACES,
    Embodiment,
    check_position_targets,
    write_embodiment,
)
from wallwm_jax.data.episodes import event_features, keep_encoded_decoder
from wallwm_jax.data.statistics import NORM_STATS_FILE, compute_norm_stats, save_norm_stats
from wallwm_jax.data.tokenizer import TOKENIZER_FILE, train_tokenizer

REPORT_FILE = "build_report.json"
VAL_SPLIT = "val"
Config = TypeVar("Config", bound=tfds.core.BuilderConfig)


class EventsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder that prints no download lines and finds its own source file."""

    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and
    # prepared" for every build; nothing is downloaded here, and the build report says where
    # the dataset went.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def dataset_info_from_configs(self, **kwargs: Any) -> tfds.core.DatasetInfo:
        """TFDS's DatasetInfo for `_info`, without TFDS's look for the dataset on its public
        bucket: a dataset not built yet made TFDS leave an empty /tmp/tmp*tfds directory per
        builder (each build, each worker), whether or not its GCS access is on; ours are
        never on that bucket."""
        info = super().dataset_info_from_configs(**kwargs)
        info.initialize_from_bucket = _not_on_the_bucket
        return info

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10's own lookup imports `importlib_resources`, which it only declares as a
        # dependency for Python < 3.9. The file of the builder class itself, not of this one.
        return epath.Path(inspect.getfile(cls))


def _not_on_the_bucket() -> None:
    """What `DatasetInfo.initialize_from_bucket` does for our builders: nothing."""


def quiet_tfds() -> None:
    """For the builders' command lines: our report and progress bar say what happens, so TFDS's
    own progress bars and INFO lines go, unless `--verbosity` asks for them."""
    if not cli.verbose():
        tfds.disable_progress_bar()
        logging.getLogger("absl").addFilter(cli.drop_below(logging.ERROR, "tensorflow_datasets"))


def skip_stats() -> tfds.download.DownloadConfig:
    """Prepare without TFDS's feature statistics (`finish_dataset` stores the ones we use)."""
    return tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)


def write_json(path: str, record: Any) -> None:
    """`record` as indented JSON at `path` (etils.epath: local disk, gs://, ...), written under
    a temporary name first so a killed build never leaves half a file."""
    path = epath.Path(path)
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def finish_dataset(version_dir: str, *, train_arrays: dict[str, list[np.ndarray]] | None = None,
                   tokenizer_texts: list[str] | None = None) -> str:
    """What every built dataset carries besides its episodes, each written once: norm stats of
    the train split's states and actions (`train_arrays`, else read back), the tokenizer
    (trained on `tokenizer_texts`, else the train split's instructions and captions) and the
    event index; returns `version_dir`."""
    stats_path = os.path.join(version_dir, NORM_STATS_FILE)
    tokenizer_path = os.path.join(version_dir, TOKENIZER_FILE)
    need_stats, need_tokenizer = (not os.path.exists(stats_path),
                                  not os.path.exists(tokenizer_path))
    if (need_stats and train_arrays is None) or (need_tokenizer and tokenizer_texts is None):
        arrays, texts = read_train_split(version_dir)
        train_arrays = arrays if train_arrays is None else train_arrays
        tokenizer_texts = texts if tokenizer_texts is None else tokenizer_texts
    if need_stats:
        save_norm_stats(stats_path, compute_norm_stats(
            {k: np.concatenate(v) for k, v in train_arrays.items()}))
    if need_tokenizer:
        train_tokenizer(tokenizer_texts, tokenizer_path)
    # The event index (clusters for balanced sampling) is built with the data, never by
    # training; a reused dataset without one (or with a stale one) gets it here.
    event_index.ensure_built(version_dir)
    return version_dir


def read_train_split(version_dir: str) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """States/actions ([T, S], [T, A] per episode) and the instructions + captions of the
    train split (the first split if there is no "train"), frames left undecoded."""
    builder = tfds.builder_from_directory(version_dir)
    split = "train" if "train" in builder.info.splits else next(iter(builder.info.splits))
    cameras = [k for k in builder.info.features["steps"]["observation"].keys()
               if k.startswith("image")]
    source = builder.as_data_source(split=split, decoders={
        "steps": {"observation": {k: keep_encoded_decoder() for k in cameras}}})
    arrays, texts = {"state": [], "action": []}, []
    for i in range(len(source)):
        ep = source[i]
        arrays["state"].append(np.asarray(ep["steps"]["observation"]["state"], np.float32))
        arrays["action"].append(np.asarray(ep["steps"]["action"], np.float32))
        texts += [_str(ep["episode_metadata"]["instruction"]),
                  *(_str(c) for c in ep["events"]["caption"])]
    return arrays, texts


def _str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


# --- converters of a dataset on disk (rlds_events, lerobot_events) ----------------------------


def converter_config(config_type: type[Config], source_dir: str, mapping: Any, *, base: str,
                     val_fraction: float, seed: int) -> Config:
    """`config_type` (a BuilderConfig with source_dir, mapping, val_fraction and seed fields)
    named `<base>-<digest of the settings>`, so a different mapping gets its own directory and
    "already built" means "built with these settings"."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: {val_fraction}, expected in [0, 1)")
    settings = json.dumps([source_dir, dataclasses.asdict(mapping), val_fraction, seed],
                          sort_keys=True)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:8]
    return config_type(name=f"{base}-{digest}", description=settings, source_dir=source_dir,
                       mapping=mapping, val_fraction=val_fraction, seed=seed)


def plan_splits(source_splits: dict[str, int], val_fraction: float, seed: int
                ) -> dict[str, list[tuple[str, int]]]:
    """Output split -> [(source split, episode index)]: the source's splits as they are, or,
    when it has a single split, a seeded random `val_fraction` of it (>= 1 episode) as `val`."""
    if len(source_splits) != 1 or not val_fraction:
        return {s: [(s, i) for i in range(n)] for s, n in source_splits.items()}
    (split, n), = source_splits.items()
    if n < 2:
        raise ValueError(f"source split {split!r} has {n} episode(s); need >= 2 to carve a "
                         "val split (or set val_fraction=0)")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    val = set(order[:n_val].tolist())
    return {split: [(split, i) for i in range(n) if i not in val],
            VAL_SPLIT: [(split, i) for i in range(n) if i in val]}


class ConvertedEvents(EventsBuilder, skip_registration=True):
    """A converter's builder: before `super().__init__` a subclass sets `self.spec` (the
    mapping resolved against the source: cameras, state/action dims), `self.source_splits`
    ({split: episodes}), `self.beam` and `self.excluded_dir`, and it defines
    `_generate_examples(split, [(source split, index)])`."""

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.spec
        return self.dataset_info_from_configs(features=event_features(
            {name: shape for name, _, shape in spec.cameras}, spec.state_dim, spec.action_dim,
            extra_text_metadata=("episode_id",)))  # episode_id: where the episode came from

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        plan = plan_splits(self.source_splits, cfg.val_fraction, cfg.seed)
        return {split: self._generate_examples(split, items) for split, items in plan.items()}


def note_excluded(excluded_dir: str, key: str, error: Exception) -> None:
    """Record an excluded episode as `<excluded_dir>/<key>.json` (a file per episode, so counts
    survive distributed Beam workers; `build_report` adds them up)."""
    (epath.Path(excluded_dir) / f"{key}.json").write_text(
        json.dumps({"episode": key, "error": str(error)}))


def define_embodiment_flags(name_help: str, control_hz_help: str) -> None:
    """The converters' embodiment.json flags: --embodiment, --action_space, --control_hz and
    --position_targets (the defaults' wording differs per source, hence the two helps)."""
    from absl import flags

    flags.DEFINE_string("embodiment", None, f"Robot name in embodiment.json ({name_help}).")
    flags.DEFINE_enum("action_space", "delta_ee", list(ACTION_SPACES), "What the actions are.")
    flags.DEFINE_float("control_hz", None, control_hz_help)
    flags.DEFINE_bool("position_targets", False, "Actions 0-2 move the hand at "
                      "--position_slice (delta_ee only): data.action_target_gain may train "
                      "position targets.")


@dataclasses.dataclass(frozen=True)
class EmbodimentFlags:
    """What a converter cannot read from its source about the robot (its flags): the name,
    the action space kind, the control rate, and whether actions 0-2 are hand displacements
    that `data.action_target_gain` may turn into position targets (hand at the state's
    `position_slice`). Empty names/None: the source's (LeRobot info.json) or generic ones."""

    name: str = ""
    action_space: str = "delta_ee"
    control_hz: float | None = None
    position_targets: bool = False
    state_names: tuple[str, ...] = ()
    action_names: tuple[str, ...] = ()


DEFAULT_EMBODIMENT = EmbodimentFlags()


def converter_embodiment(flags: EmbodimentFlags, spec: Any, mapping: Any, *,
                         default_name: str, default_hz: float | None) -> Embodiment:
    """The embodiment.json of a converted dataset; ValueError names the flag a setting that
    means nothing for the source came from (`--position_targets` on joint actions)."""
    if flags.action_space not in ACTION_SPACES:
        raise ValueError(f"--action_space {flags.action_space!r}: expected one of "
                         f"{list(ACTION_SPACES)}")
    hand = tuple(mapping.position_slice) if flags.position_targets else None
    if hand is not None:
        check_position_targets(flags.action_space, hand, spec.state_dim, spec.action_dim,
                               "--position_targets")
    hz = flags.control_hz or default_hz
    if not hz:
        raise ValueError("--control_hz: the source does not say its control rate; give it")

    def names(given: tuple[str, ...], n: int, what: str) -> tuple[str, ...]:
        if given and len(given) != n:
            raise ValueError(f"--{what}_names: {len(given)} names for a {n}-D {what}")
        return tuple(given) or tuple(f"{what}_{i}" for i in range(n))

    return Embodiment(
        name=flags.name or default_name,
        state_names=names(flags.state_names, spec.state_dim, "state"),
        action_names=names(flags.action_names, spec.action_dim, "action"),
        action_space=flags.action_space, control_hz=float(hz),
        cameras={name: tuple(shape[:2]) for name, _, shape in spec.cameras},
        gripper_index=mapping.gripper_index % spec.action_dim,
        gripper_convention="open_high" if mapping.gripper_open_high else "close_high",
        hand_position=hand)


def convert(builder: ConvertedEvents, download_config: tfds.download.DownloadConfig | None = None,
            *, preparing: contextlib.AbstractContextManager | None = None,
            embodiment: Embodiment | None = None) -> str:
    """Prepare `builder` unless it is built (in the `preparing` context, if any), write and print
    its build report, then `finish_dataset`; returns the version dir."""
    version_dir = os.fspath(builder.data_dir)
    if not builder.is_prepared():
        notes = epath.Path(builder.excluded_dir)  # epath: Beam workers may write to gs:// etc.
        if notes.exists():
            notes.rmtree()  # notes of an interrupted build
        notes.mkdir(parents=True)
        t0 = time.perf_counter()
        with preparing or contextlib.nullcontext():
            builder.download_and_prepare(file_format="array_record",
                                         download_config=download_config or skip_stats())
        report = build_report(builder, time.perf_counter() - t0)
        write_json(os.path.join(version_dir, REPORT_FILE), report)
        print(format_report(report, builder.name))
        notes.rmtree()
    if embodiment is not None:  # every build says what its numbers mean (docs/data.md)
        write_embodiment(version_dir, embodiment)
    return finish_dataset(version_dir)


def build_report(builder: ConvertedEvents, seconds: float) -> dict:
    """What a conversion produced: episodes per split, source episodes, exclusions by key
    (and the first 100 with their errors), time and episodes/min."""
    notes = [json.loads(p.read_text())
             for p in sorted(epath.Path(builder.excluded_dir).glob("*.json"))]
    by_key: dict[str, int] = {}
    for note in notes:
        key = note["error"].split(":")[0]
        by_key[key] = by_key.get(key, 0) + 1
    splits = {s: int(info.num_examples) for s, info in builder.info.splits.items()}
    source = sum(builder.source_splits.values())
    return {"config": builder.builder_config.name, "dir": os.fspath(builder.data_dir),
            "source": builder.builder_config.source_dir, "source_episodes": source,
            "episodes": splits, "excluded": by_key, "excluded_episodes": notes[:100],
            "seconds": seconds, "episodes_per_min": 60.0 * source / max(seconds, 1e-9),
            "beam": builder.beam}


def format_report(report: dict, builder_name: str) -> str:
    """Human-readable build report of a conversion (what `convert` prints)."""
    splits = ", ".join(f"{s} {n}" for s, n in report["episodes"].items())
    excluded = ", ".join(f"{n} invalid {k}" for k, n in report["excluded"].items()) or "none"
    return (f"{builder_name}/{report['config']}: {splits} episodes from "
            f"{report['source_episodes']} source episodes in {report['seconds']:.1f}s "
            f"({report['episodes_per_min']:.0f} episodes/min{', beam' if report['beam'] else ''})"
            f" -> {report['dir']}\n  excluded: {excluded}")
