"""TFDS builder `rlds_events`: any RLDS/TFDS dataset on disk as event-segmented episodes.

Reads the source with `as_data_source` (ArrayRecord, no TensorFlow: a TFRecord source needs
`tfds convert_format` once, which adds ArrayRecord beside it), maps its keys with a
`KeyMapping`, segments and captions events automatically, and writes ArrayRecord with the
`metaworld_events` features (state/action dims from the source). With `beam=True` the episodes
are converted in an Apache Beam pipeline (DirectRunner here; Dataflow/Flink/Spark the same).
`build()` also stores norm stats, the tokenizer and a build report next to dataset_info.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator

import tensorflow_datasets as tfds
from etils import epath
from google.protobuf import json_format

from data_builders.common import (
    DEFAULT_EMBODIMENT,
    ConvertedEvents,
    EmbodimentFlags,
    convert,
    converter_config,
    converter_embodiment,
    note_excluded,
)
from data_builders.rlds_events.mapping import KeyMapping, SourceSpec, convert_episode
from data_builders.rlds_events.mapping import resolve_mapping as _resolve
from wallwm_jax import cli


@dataclasses.dataclass
class RldsEventsConfig(tfds.core.BuilderConfig):
    source_dir: str = ""
    mapping: KeyMapping = KeyMapping()
    val_fraction: float = 0.1  # carved from the source's only split (0: keep it whole)
    seed: int = 0


def make_config(source_dir: str, mapping: KeyMapping, *, name: str | None = None,
                val_fraction: float = 0.1, seed: int = 0) -> RldsEventsConfig:
    """Config named `<name or source name>-<digest of the settings>`, so a different mapping
    gets its own directory and "already built" means "built with these settings"."""
    source_dir = os.path.abspath(os.fspath(source_dir))
    base = name or os.path.basename(os.path.dirname(source_dir.rstrip("/"))) or "source"
    return converter_config(RldsEventsConfig, source_dir, mapping, base=base,
                            val_fraction=val_fraction, seed=seed)


def episode_id(source_split: str, index: int) -> str:
    """Key of a converted episode: its source split and index ("train_000012")."""
    return f"{source_split}_{index:06d}"


# Formats `as_data_source` reads with random access and without TensorFlow, preferred first:
# `tfds convert_format` in place adds array_record as an alternative format of a TFRecord source.
READABLE_FORMATS = ("array_record", "parquet")


def _version_dirs_below(path: epath.Path, depth: int = 2) -> list[str]:
    """TFDS version dirs (holding dataset_info.json) up to `depth` levels below `path`."""
    found, level = [], [path]
    for _ in range(depth):
        below = []
        for d in level:
            with contextlib.suppress(OSError):  # an unreadable dir only loses the hint
                below += [p for p in d.iterdir() if p.is_dir()]
        level = sorted(below)
        found += [os.fspath(p) for p in level if (p / "dataset_info.json").exists()]
    return found


def open_source(source_dir: str) -> tuple[tfds.core.DatasetBuilder, str]:
    """The source's read-only builder and the format to read it in (array_record wherever
    it is among the dataset's formats). A missing dir, a dir that is not a TFDS dataset and a
    source with no TensorFlow-free format raise, naming the dir and what to do."""
    path = epath.Path(source_dir)
    expected = ("expected a TFDS dataset version dir holding dataset_info.json, e.g. "
                "/data/bridge/1.0.0")
    if not path.exists():
        raise FileNotFoundError(f"{source_dir}: no such directory ({expected})")
    if not path.is_dir():
        raise NotADirectoryError(f"{source_dir}: not a directory ({expected})")
    if not (path / "dataset_info.json").exists():
        below = _version_dirs_below(path)
        hint = f"version dirs below it: {', '.join(below[:3])}" if below else expected
        raise FileNotFoundError(f"{source_dir}: not a TFDS dataset, it has no "
                                f"dataset_info.json ({hint})")
    try:
        source = tfds.builder_from_directory(source_dir)
    except (OSError, ValueError, json_format.Error) as err:
        raise ValueError(f"{source_dir}: not a readable TFDS dataset ({type(err).__name__}: "
                         f"{' '.join(str(err).split())})") from err
    available = {f.value for f in source.info.available_file_formats()}
    readable = [f for f in READABLE_FORMATS if f in available]
    if not readable:
        stored = ", ".join(sorted(available)) or "no file format"
        raise ValueError(
            f"{source_dir}: stored as {stored}, expected array_record (random access "
            "without TensorFlow); convert it once with `tfds convert_format "
            f"--dataset_version_dir={source_dir} --out_file_format=array_record` (needs "
            "tensorflow, apache-beam and mlcroissant installed; see docs/rlds.md)")
    return source, readable[0]


class EpisodeConverter:
    """Callable (source split, index) -> [(key, example)] or [] (the episode is excluded and
    a JSON note written to `excluded_dir`, so counts survive distributed Beam workers).
    Picklable: sources are opened lazily in each worker."""

    def __init__(self, source_dir: str, mapping: KeyMapping, spec: SourceSpec, *,
                 strict: bool, excluded_dir: str, file_format: str = "array_record"):
        self.source_dir, self.mapping, self.spec = source_dir, mapping, spec
        self.file_format = file_format
        self.strict, self.excluded_dir = strict, excluded_dir
        self._sources: dict = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sources": {}}

    def _source(self, split: str):
        if split not in self._sources:
            builder = tfds.builder_from_directory(self.source_dir)
            self._sources[split] = builder.as_data_source(split=split,
                                                          file_format=self.file_format)
        return self._sources[split]

    def __call__(self, item: tuple[str, int]) -> list[tuple[str, dict]]:
        split, index = item
        key = episode_id(split, index)
        try:
            try:
                raw = self._source(split)[index]
            except Exception as err:  # a corrupt record: TFDS/ArrayRecord raise several types
                raise ValueError(f"record: does not decode ({type(err).__name__}: {err})"
                                 ) from None
            example = convert_episode(raw, self.mapping, self.spec)
        except ValueError as err:
            if self.strict:
                raise ValueError(f"{self.source_dir} split {split!r} episode {index}: {err} "
                                 "(strict)") from None
            note_excluded(self.excluded_dir, key, err)
            return []
        example["episode_metadata"]["episode_id"] = key
        return [(key, example)]


class RldsEvents(ConvertedEvents):
    """Event-segmented episodes converted from an RLDS/TFDS source dataset on disk."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Key-mapped RLDS source, automatic events, PNG frames."}

    def __init__(self, *, config: RldsEventsConfig, strict: bool = False, beam: bool = False,
                 excluded_dir: str = "", **kwargs):
        source, self.source_format = open_source(config.source_dir)
        self.source_splits = {s: info.num_examples for s, info in source.info.splits.items()}
        self.spec = _resolve(config.mapping, source.info.features, source.info.name)
        self.strict, self.beam, self.excluded_dir = strict, beam, excluded_dir
        super().__init__(config=config, **kwargs)

    def _generate_examples(self, split: str, items: list[tuple[str, int]]):
        converter = EpisodeConverter(self.builder_config.source_dir, self.builder_config.mapping,
                                     self.spec, strict=self.strict,
                                     excluded_dir=self.excluded_dir,
                                     file_format=self.source_format)
        if self.beam:
            beam = tfds.core.lazy_imports.apache_beam
            return (f"Episodes_{split}" >> beam.Create(items)
                    | f"Reshuffle_{split}" >> beam.Reshuffle()  # spread episodes over workers
                    | f"Convert_{split}" >> beam.FlatMap(converter))
        return (pair for item in items for pair in converter(item))


def beam_download_config(workers: int = 2, runner: str = "DirectRunner",
                         running_mode: str = "multi_processing",
                         **options) -> tfds.download.DownloadConfig:
    """DownloadConfig running the conversion with Beam `runner` (DirectRunner: `workers`
    local processes); `options` go to PipelineOptions (e.g. Dataflow project/region).

    The options are these alone (`flags=[]`: Beam would otherwise parse our command line and
    warn about every flag), and the workers log warnings and above unless `--verbosity`."""
    beam = tfds.core.lazy_imports.apache_beam
    if runner == "DirectRunner":
        options = {"direct_num_workers": workers, "direct_running_mode": running_mode,
                   **options}
    if not cli.verbose():
        options = {"default_sdk_harness_log_level": "ERROR", **options}
    return tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP, beam_runner=runner,
        beam_options=beam.options.pipeline_options.PipelineOptions(flags=[], **options))


def build(source_dir: str, data_dir: str, mapping: KeyMapping, *, name: str | None = None,
          val_fraction: float = 0.1, seed: int = 0, strict: bool = False,
          beam: bool = False, workers: int = 2,
          download_config: tfds.download.DownloadConfig | None = None,
          embodiment: EmbodimentFlags = DEFAULT_EMBODIMENT) -> str:
    """Convert (or reuse) `source_dir` (a TFDS version dir) into `<data_dir>/rlds_events/
    <config>/1.0.0`; write norm stats and tokenizer (train split) and the build report there;
    return that dir.

    Bad source episodes (empty, NaN/Inf, wrong shapes, undecodable) are excluded and counted in
    build_report.json; `strict=True` raises naming the episode and key. `beam=True` converts
    in an Apache Beam pipeline (`download_config`, default: DirectRunner with `workers`).
    embodiment.json comes from `embodiment`: RLDS sources do not say what their numbers mean
    (without `control_hz` the rate is recorded as 1 Hz).
    """
    cfg = make_config(source_dir, mapping, name=name, val_fraction=val_fraction, seed=seed)
    excluded_dir = os.path.join(data_dir, "rlds_events", ".excluded", cfg.name)
    builder = RldsEvents(data_dir=data_dir, config=cfg, strict=strict, beam=beam,
                         excluded_dir=excluded_dir)
    emb = converter_embodiment(embodiment, builder.spec, mapping, default_name=cfg.name,
                               default_hz=None if embodiment.control_hz else 1.0)
    if download_config is None and beam and not builder.is_prepared():
        download_config = beam_download_config(workers)
    return convert(builder, download_config, preparing=_own_temp_root() if beam else None,
                   embodiment=emb)


@contextlib.contextmanager
def _own_temp_root() -> Iterator[None]:
    """Python's temporary files go to a directory of our own, removed afterwards: Beam's local
    job server makes a `beam-temp*` directory under the temp root and never removes it."""
    previous, root = tempfile.tempdir, tempfile.mkdtemp(prefix="wallwm_beam_")
    tempfile.tempdir = root
    try:
        yield
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(root, ignore_errors=True)
