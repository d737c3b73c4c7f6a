"""Random-access, validated episodes of an event dataset on disk (a Grain data source).

Reads a TFDS version directory (ArrayRecord) without TensorFlow and returns each episode as
one flat dict keyed by feature path, e.g. "steps/observation/image" -> uint8 [T, H, W, 3].
Camera frames stay PNG bytes until indexed (`LazyFrames`): a training sample decodes the
two frames it needs, not the episode's hundred.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


class LazyFrames:
    """Frames [T, H, W, 3] uint8 decoded on access: `frames[t]` decodes one PNG,
    `frames[a:b]` / `np.asarray(frames)` decode several. `shape` needs no decoding."""

    def __init__(self, encoded: list[bytes], frame_shape: tuple[int, ...], where: str):
        self._encoded = encoded
        self.shape = (len(encoded), *frame_shape)
        self.dtype = np.dtype(np.uint8)
        self.where = where  # "<dataset dir> split 's' episode i field 'f'", for errors
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _decode(self, t: int) -> np.ndarray:
        try:
            image = Image.open(io.BytesIO(self._encoded[t]))
            frame = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except Exception as err:  # PIL raises several types for corrupt data
            raise ValueError(f"{self.where} step {t}: frame does not decode as an image "
                             f"({type(err).__name__}: {err})") from None
        if frame.shape != self.shape[1:]:
            raise ValueError(f"{self.where} step {t}: frame has shape {frame.shape}, "
                             f"expected {self.shape[1:]}")
        return frame

    def __getitem__(self, index):
        if isinstance(index, slice):
            return np.stack([self._decode(t) for t in range(*index.indices(len(self)))] or
                            [np.zeros(self.shape[1:], np.uint8)])[:len(range(
                                *index.indices(len(self))))]
        t = int(index)
        return self._decode(t + len(self) if t < 0 else t)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self[:]
        return frames if dtype is None else frames.astype(dtype)

# Flat feature path -> (numpy dtype or str, per-step trailing shape or None for [E] events).
STEP_FEATURES = {
    "steps/observation/image": np.uint8,
    "steps/observation/state": np.float32,
    "steps/action": np.float32,
    "steps/is_first": np.bool_,
    "steps/is_last": np.bool_,
}
EVENT_FEATURES = {
    "events/start": np.int32,
    "events/end": np.int32,
    "events/caption": str,
    "events/phase": str,
}
METADATA_FEATURES = ("episode_metadata/task", "episode_metadata/instruction",
                     "episode_metadata/success")
FEATURE_NAMES = (*STEP_FEATURES, *METADATA_FEATURES, *EVENT_FEATURES)


def event_features(cameras: dict[str, tuple[int, int, int]], state_dim: int, action_dim: int,
                   extra_text_metadata: tuple[str, ...] = ()):
    """The TFDS feature spec of an event dataset (what every builder writes and this module
    reads): PNG camera features `cameras` (name -> frame shape), state/action widths, and
    optional extra text fields under `episode_metadata`."""
    import tensorflow_datasets as tfds

    features = tfds.features
    return features.FeaturesDict({
        "steps": features.Sequence({
            "observation": {
                **{name: features.Image(shape=shape, dtype=np.uint8, encoding_format="png")
                   for name, shape in cameras.items()},
                "state": features.Tensor(shape=(state_dim,), dtype=np.float32),
            },
            "action": features.Tensor(shape=(action_dim,), dtype=np.float32),
            "is_first": features.Tensor(shape=(), dtype=np.bool_),
            "is_last": features.Tensor(shape=(), dtype=np.bool_),
        }),
        "episode_metadata": {
            "task": features.Text(),
            "instruction": features.Text(),
            "success": features.Tensor(shape=(), dtype=np.bool_),
            **{name: features.Text() for name in extra_text_metadata},
        },
        "events": features.Sequence({
            "start": features.Tensor(shape=(), dtype=np.int32),
            "end": features.Tensor(shape=(), dtype=np.int32),
            "caption": features.Text(),
            "phase": features.Text(),
        }),
    })


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def to_flat_episode(raw: dict, *, image_shapes: dict[str, tuple[int, ...]] | None = None,
                    where: str = "") -> dict:
    """Nested TFDS example (lists per step) -> flat dict of stacked numpy arrays / str.

    Camera features given in `image_shapes` (flat name -> frame shape) arrive as PNG bytes
    and become `LazyFrames`; other cameras (`steps/observation/image_<name>`) are kept too.
    """
    flat = _flatten(raw)
    image_shapes = image_shapes or {}
    episode = {}
    for name in flat:
        if name.startswith("steps/observation/image"):
            if name in image_shapes:
                episode[name] = LazyFrames(list(flat[name]), image_shapes[name],
                                           f"{where} field '{name}'")
            else:
                episode[name] = np.asarray(np.stack(flat[name]) if len(flat[name]) else
                                           flat[name], dtype=np.uint8)
    for name, dtype in STEP_FEATURES.items():
        if name in episode:
            continue
        episode[name] = np.asarray(np.stack(flat[name]) if len(flat[name]) else flat[name],
                                   dtype=dtype)
    for name, dtype in EVENT_FEATURES.items():
        values = flat[name]
        episode[name] = ([_text(v) for v in values] if dtype is str
                         else np.asarray(values, dtype=dtype).reshape(-1))
    episode["episode_metadata/task"] = _text(flat["episode_metadata/task"])
    episode["episode_metadata/instruction"] = _text(flat["episode_metadata/instruction"])
    episode["episode_metadata/success"] = bool(flat["episode_metadata/success"])
    return episode


def validate_episode(episode: dict, *, image_shape: tuple[int, int, int] | None = None) -> None:
    """Raise ValueError("field '<name>': ...") at the first field that breaks the contract.

    Contract: T >= 1 steps with images [T,H,W,3], states [T,S] and actions [T,A] finite (S, A
    from the dataset); events tile [0, T) in order with none empty; one caption and phase
    per event.
    """
    missing = [name for name in FEATURE_NAMES if name not in episode]
    if missing:
        raise ValueError(f"field '{missing[0]}': missing from the episode")
    images = episode["steps/observation/image"]
    t = len(episode["steps/action"])
    if t == 0:
        raise ValueError("field 'steps/action': episode has no steps")
    # State/action widths S, A come from the dataset; they must be [T, S] / [T, A].
    dims = {name: tuple(episode[name].shape[1:2]) if np.ndim(episode[name]) == 2 else ("[S]",)
            for name in ("steps/observation/state", "steps/action")}
    expected = {"steps/observation/image": (t, *(image_shape or images.shape[1:])),
                "steps/observation/state": (t, *dims["steps/observation/state"]),
                "steps/action": (t, *dims["steps/action"]),
                "steps/is_first": (t,), "steps/is_last": (t,)}
    for name, shape in expected.items():
        if tuple(episode[name].shape) != tuple(shape):
            raise ValueError(f"field '{name}': shape {tuple(episode[name].shape)}, "
                             f"expected {tuple(shape)}")
    for name in ("steps/observation/state", "steps/action"):
        bad = ~np.isfinite(episode[name])
        if bad.any():
            step = int(np.argwhere(bad)[0][0])
            raise ValueError(f"field '{name}': non-finite value (NaN/Inf) at step {step}")
    start, end = episode["events/start"], episode["events/end"]
    n = len(start)
    for name in ("events/end", "events/caption", "events/phase"):
        if len(episode[name]) != n:
            raise ValueError(f"field '{name}': {len(episode[name])} entries for {n} events")
    if n == 0:
        raise ValueError("field 'events/start': episode has no events")
    if start[0] != 0:
        raise ValueError(f"field 'events/start': first event starts at {start[0]}, not 0")
    if end[-1] != t:
        raise ValueError(f"field 'events/end': last event ends at {end[-1]}, not T={t}")
    for k in range(n):
        if end[k] <= start[k]:
            raise ValueError(f"field 'events/end': event {k} is empty "
                             f"[{start[k]}, {end[k]})")
        if k + 1 < n and start[k + 1] != end[k]:
            raise ValueError(f"field 'events/start': event {k + 1} starts at {start[k + 1]} "
                             f"but event {k} ends at {end[k]} (events must tile [0, T))")


def keep_encoded_decoder():
    """A TFDS decoder that leaves an image feature as its encoded bytes, also inside a
    `steps` Sequence on the NumPy path (TFDS 4.9's SkipDecoding lacks the batch form)."""
    import tensorflow_datasets as tfds

    class KeepEncoded(tfds.decode.SkipDecoding):
        def decode_batch_example_np(self, batch):
            return batch

    return KeepEncoded()


class EpisodeSource:
    """Grain-compatible random-access source of validated flat episodes of one split.

    Reads the dataset's step store (`step_records.py`: frames read one by one, no episode
    parse) when it has one and `step_store` is not False, else the TFDS episode records."""

    def __init__(self, dataset_dir: str, split: str = "train", *,
                 step_store: bool | None = None):
        import tensorflow_datasets as tfds

        self.dataset_dir = os.fspath(dataset_dir)
        self.split = split
        if not os.path.exists(os.path.join(self.dataset_dir, "dataset_info.json")):
            raise FileNotFoundError(
                f"no built dataset at {self.dataset_dir} (expected dataset_info.json there; "
                "build it with data_builders.metaworld_events.build)")
        builder = tfds.builder_from_directory(self.dataset_dir)
        if split not in builder.info.splits:
            raise ValueError(f"{self.dataset_dir} has no split {split!r}; "
                             f"available: {sorted(builder.info.splits)}")
        observation = builder.info.features["steps"]["observation"]
        self.cameras = tuple(k for k in observation.keys() if k.startswith("image"))
        self.image_shapes = {f"steps/observation/{k}": tuple(observation[k].shape)
                             for k in self.cameras}
        self.image_shape = self.image_shapes["steps/observation/image"]
        self.files = [os.fspath(f) for f in builder.info.splits[split].filepaths]
        self._shard_ends = np.cumsum(builder.info.splits[split].shard_lengths)
        # Frames stay PNG bytes; LazyFrames decodes the ones a sample touches.
        skip = {"steps": {"observation": {k: keep_encoded_decoder() for k in self.cameras}}}
        self._source = builder.as_data_source(split=split, decoders=skip)
        self.store = None
        if step_store is not False:
            from wallwm_jax.data.step_records import open_store

            self.store = open_store(self.dataset_dir, split, len(self._source))
            if step_store and self.store is None:
                raise ValueError(f"{self.dataset_dir} split '{split}' has no step store "
                                 "(write it with python -m wallwm_jax.data.step_store)")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        where = f"{self.dataset_dir} split '{self.split}' episode {index}"
        if self.store is not None:
            episode = self.store.episode(index, where)
        else:
            episode = self._read_tfds(index, where)
        try:
            validate_episode(episode, image_shape=self.image_shape)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        return episode

    def _read_tfds(self, index: int, where: str) -> dict:
        """Episode `index` parsed from its TFDS record (the whole episode, PNG frames lazy)."""
        try:
            raw = self._source[index]
        except Exception as err:  # a corrupt/truncated ArrayRecord or undecodable example
            raise ValueError(f"{where}: record file {self.file_of(index)} is damaged (truncated "
                             f"or overwritten?): {type(err).__name__}: {err}; rebuild the "
                             f"dataset") from None
        return to_flat_episode(raw, image_shapes=self.image_shapes, where=where)

    def file_of(self, index: int) -> str:
        """The ArrayRecord shard that holds episode `index` of this split."""
        shard = int(np.searchsorted(self._shard_ends, index, side="right"))
        return self.files[min(shard, len(self.files) - 1)]

    def __repr__(self) -> str:
        return f"EpisodeSource({self.dataset_dir!r}, split={self.split!r}, len={len(self)})"


def open_dataset(dataset_dir: str, split: str = "train", *,
                 step_store: bool | None = None) -> EpisodeSource:
    """The episodes of `split` in a built dataset version directory (from its step store
    when it has one, unless `step_store=False`)."""
    return EpisodeSource(dataset_dir, split, step_store=step_store)
