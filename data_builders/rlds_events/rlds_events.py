"""TFDS builder `rlds_events`: any RLDS/TFDS dataset on disk as event-segmented episodes.

Reads the source with `as_data_source` (ArrayRecord, no TensorFlow), maps its keys with a
`KeyMapping`, segments and captions events automatically, and writes ArrayRecord with the
`metaworld_events` features (state/action dims from the source). With `beam=True` the episodes
are converted in an Apache Beam pipeline (DirectRunner here; Dataflow/Flink/Spark the same).
`build()` also stores norm stats, the tokenizer and a build report next to dataset_info.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_builders.rlds_events.mapping import KeyMapping, SourceSpec, convert_episode
from data_builders.rlds_events.mapping import resolve_mapping as _resolve
from wallwm_jax.data import event_index
from wallwm_jax.data.episodes import event_features, keep_encoded_decoder
from wallwm_jax.data.statistics import NORM_STATS_FILE, compute_norm_stats, save_norm_stats
from wallwm_jax.data.tokenizer import TOKENIZER_FILE, train_tokenizer

REPORT_FILE = "build_report.json"
VAL_SPLIT = "val"


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
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: {val_fraction}, expected in [0, 1)")
    source_dir = os.path.abspath(os.fspath(source_dir))
    settings = json.dumps([source_dir, dataclasses.asdict(mapping), val_fraction, seed],
                          sort_keys=True)
    base = name or os.path.basename(os.path.dirname(source_dir.rstrip("/"))) or "source"
    digest = hashlib.sha1(settings.encode()).hexdigest()[:8]
    return RldsEventsConfig(name=f"{base}-{digest}", description=settings,
                            source_dir=source_dir, mapping=mapping,
                            val_fraction=val_fraction, seed=seed)


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


def episode_id(source_split: str, index: int) -> str:
    """Key of a converted episode: its source split and index ("train_000012")."""
    return f"{source_split}_{index:06d}"


class EpisodeConverter:
    """Callable (source split, index) -> [(key, example)] or [] (the episode is excluded and
    a JSON note written to `excluded_dir`, so counts survive distributed Beam workers).
    Picklable: sources are opened lazily in each worker."""

    def __init__(self, source_dir: str, mapping: KeyMapping, spec: SourceSpec, *,
                 strict: bool, excluded_dir: str):
        self.source_dir, self.mapping, self.spec = source_dir, mapping, spec
        self.strict, self.excluded_dir = strict, excluded_dir
        self._sources: dict = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sources": {}}

    def _source(self, split: str):
        if split not in self._sources:
            builder = tfds.builder_from_directory(self.source_dir)
            self._sources[split] = builder.as_data_source(split=split)
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
            path = epath.Path(self.excluded_dir) / f"{key}.json"
            path.write_text(json.dumps({"episode": key, "error": str(err)}))
            return []
        example["episode_metadata"]["episode_id"] = key
        return [(key, example)]


class RldsEvents(tfds.core.GeneratorBasedBuilder):
    """Event-segmented episodes converted from an RLDS/TFDS source dataset on disk."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Key-mapped RLDS source, automatic events, PNG frames."}

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
        # TFDS 4.9.10's own lookup imports `importlib_resources` (declared for Python < 3.9).
        return epath.Path(__file__)

    def __init__(self, *, config: RldsEventsConfig, strict: bool = False, beam: bool = False,
                 excluded_dir: str = "", **kwargs):
        source = tfds.builder_from_directory(config.source_dir)
        fmt = source.info.file_format
        if fmt is not None and fmt.value not in ("array_record", "parquet"):
            raise ValueError(
                f"{config.source_dir}: stored as {fmt.value}, expected array_record (random "
                "access without TensorFlow); convert it once with `tfds convert_format "
                f"--dataset_version_dir={config.source_dir} --out_file_format=array_record` "
                "(reading TFRecord needs TensorFlow)")
        self.source_splits = {s: info.num_examples for s, info in source.info.splits.items()}
        self.spec = _resolve(config.mapping, source.info.features, source.info.name)
        self.strict, self.beam, self.excluded_dir = strict, beam, excluded_dir
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.spec
        return self.dataset_info_from_configs(features=event_features(
            {name: shape for name, _, shape in spec.cameras}, spec.state_dim, spec.action_dim,
            extra_text_metadata=("episode_id",)))  # episode_id: source split + index

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        plan = plan_splits(self.source_splits, cfg.val_fraction, cfg.seed)
        return {split: self._generate_examples(split, items) for split, items in plan.items()}

    def _generate_examples(self, split: str, items: list[tuple[str, int]]):
        converter = EpisodeConverter(self.builder_config.source_dir, self.builder_config.mapping,
                                     self.spec, strict=self.strict,
                                     excluded_dir=self.excluded_dir)
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
    local processes); `options` go to PipelineOptions (e.g. Dataflow project/region)."""
    beam = tfds.core.lazy_imports.apache_beam
    if runner == "DirectRunner":
        options = {"direct_num_workers": workers, "direct_running_mode": running_mode,
                   **options}
    return tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP, beam_runner=runner,
        beam_options=beam.options.pipeline_options.PipelineOptions(**options))


def build(source_dir: str, data_dir: str, mapping: KeyMapping, *, name: str | None = None,
          val_fraction: float = 0.1, seed: int = 0, strict: bool = False,
          beam: bool = False, workers: int = 2,
          download_config: tfds.download.DownloadConfig | None = None) -> str:
    """Convert (or reuse) `source_dir` (a TFDS version dir) into `<data_dir>/rlds_events/
    <config>/1.0.0`; write norm stats and tokenizer (train split) and the build report there;
    return that dir.

    Bad source episodes (empty, NaN/Inf, wrong shapes, undecodable) are excluded and counted in
    build_report.json; `strict=True` raises naming the episode and key. `beam=True` converts
    in an Apache Beam pipeline (`download_config`, default: DirectRunner with `workers`).
    """
    cfg = make_config(source_dir, mapping, name=name, val_fraction=val_fraction, seed=seed)
    excluded_dir = os.path.join(data_dir, "rlds_events", ".excluded", cfg.name)
    builder = RldsEvents(data_dir=data_dir, config=cfg, strict=strict, beam=beam,
                         excluded_dir=excluded_dir)
    version_dir = os.fspath(builder.data_dir)
    if not builder.is_prepared():
        notes = epath.Path(excluded_dir)  # epath: Beam workers may write to gs:// etc.
        if notes.exists():
            notes.rmtree()  # notes of an interrupted build
        notes.mkdir(parents=True)
        if download_config is None:
            download_config = (beam_download_config(workers) if beam else
                               tfds.download.DownloadConfig(
                                   compute_stats=tfds.download.ComputeStatsMode.SKIP))
        t0 = time.perf_counter()
        with _own_temp_root() if beam else contextlib.nullcontext():
            builder.download_and_prepare(file_format="array_record",
                                         download_config=download_config)
        report = build_report(builder, excluded_dir, time.perf_counter() - t0)
        (epath.Path(version_dir) / REPORT_FILE).write_text(json.dumps(report, indent=1))
        print(format_report(report))
        notes.rmtree()
    return finish_dataset(version_dir)


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


def finish_dataset(version_dir: str) -> str:
    """What every converted dataset carries besides its episodes: norm stats and tokenizer
    (from the train split, written once) and the event index; returns `version_dir`."""
    stats_path = os.path.join(version_dir, NORM_STATS_FILE)
    tokenizer_path = os.path.join(version_dir, TOKENIZER_FILE)
    if not (os.path.exists(stats_path) and os.path.exists(tokenizer_path)):
        arrays, texts = read_train_split(version_dir)
        save_norm_stats(stats_path, compute_norm_stats(
            {k: np.concatenate(v) for k, v in arrays.items()}))
        train_tokenizer(texts, tokenizer_path)
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


def build_report(builder: RldsEvents, excluded_dir: str, seconds: float) -> dict:
    """What a conversion produced: episodes per split, source episodes, exclusions by key
    (and the first 100 with their errors), time and episodes/min."""
    notes = [json.loads(p.read_text()) for p in sorted(epath.Path(excluded_dir).glob("*.json"))]
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


def format_report(report: dict) -> str:
    """Human-readable build report (what `build` prints)."""
    splits = ", ".join(f"{s} {n}" for s, n in report["episodes"].items())
    excluded = ", ".join(f"{n} invalid {k}" for k, n in report["excluded"].items()) or "none"
    return (f"rlds_events/{report['config']}: {splits} episodes from "
            f"{report['source_episodes']} source episodes in {report['seconds']:.1f}s "
            f"({report['episodes_per_min']:.0f} episodes/min{', beam' if report['beam'] else ''})"
            f" -> {report['dir']}\n  excluded: {excluded}")
