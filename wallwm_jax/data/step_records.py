"""The step store's format and reader: a dataset's episodes laid out so a sample reads only
what it uses (`step_store.py` writes it).

A built dataset's TFDS records hold one example per episode (PNG frames inside), so reading
any step costs the whole episode. The step store, written beside them in `step_store/`, holds
per split one small record per episode (states, actions, flags, events, metadata: no frames)
and one record per (step, camera) holding the raw uint8 frame, both in ArrayRecord with one
record per chunk (random access). `EpisodeSource` reads it when present; the TFDS records
stay as they are, so every other reader, and datasets without a store, are unchanged.

    python -m wallwm_jax.data.step_store <dataset version dir>   # add a store to a dataset

Reading lives here, apart from the writer, because `EpisodeSource` reads stores and the
writer reads datasets through `EpisodeSource`.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

STORE_DIR = "step_store"
STORE_FILE = "step_store.json"
FORMAT = 1
# One record per chunk: reading a frame decompresses that frame only.
WRITER_OPTIONS = "group_size:1,zstd:1"
_ARRAYS = ("steps/observation/state", "steps/action", "steps/is_first", "steps/is_last",
           "events/start", "events/end")
_TEXTS = ("events/caption", "events/phase", "episode_metadata/task",
          "episode_metadata/instruction", "episode_metadata/success")


def store_dir(dataset_dir: str) -> str:
    """Where a dataset version directory's step store lives."""
    return os.path.join(os.fspath(dataset_dir), STORE_DIR)


def read_info(dataset_dir: str) -> dict | None:
    """The store's step_store.json (format, cameras, per-split counts and bytes), or None."""
    path = os.path.join(store_dir(dataset_dir), STORE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def pack_episode(episode: dict, frame_offset: int) -> bytes:
    """An episode's non-frame fields as one record: a 4-byte header length, a JSON header
    (texts, array dtypes/shapes, the episode's first frame record) and the arrays' bytes."""
    arrays = [np.ascontiguousarray(episode[name]) for name in _ARRAYS]
    header = {"frame_offset": int(frame_offset),
              "arrays": [[name, a.dtype.str, list(a.shape)]
                         for name, a in zip(_ARRAYS, arrays, strict=True)],
              "texts": {name: episode[name] for name in _TEXTS}}
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + b"".join(a.tobytes() for a in arrays)


def unpack_episode(record: bytes) -> tuple[dict, int]:
    """(the flat episode without frames, its first frame record) of a `pack_episode` record."""
    (n,) = struct.unpack_from("<I", record)
    header = json.loads(record[4:4 + n])
    episode, at = dict(header["texts"]), 4 + n
    for name, dtype, shape in header["arrays"]:
        dtype = np.dtype(dtype)
        size = dtype.itemsize * int(np.prod(shape))
        episode[name] = np.frombuffer(record, dtype, int(np.prod(shape)), at).reshape(shape).copy()
        at += size
    if at != len(record):
        raise ValueError(f"episode record has {len(record)} bytes, its header says {at}")
    return episode, int(header["frame_offset"])


class StoredFrames:
    """Frames [T, H, W, 3] uint8 of one camera of one episode, read from the store on access:
    `frames[t]` reads one record; same interface as `episodes.LazyFrames`."""

    def __init__(self, frames, first: int, camera: int, num_cameras: int,
                 shape: tuple[int, ...], where: str):
        self._frames, self._first, self._camera, self._num = frames, first, camera, num_cameras
        self.shape = tuple(shape)
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)
        self.where = where

    def __len__(self) -> int:
        return self.shape[0]

    def _decode(self, t: int) -> np.ndarray:
        record = self._frames[(self._first + t) * self._num + self._camera]
        size = int(np.prod(self.shape[1:]))
        if len(record) != size:
            raise ValueError(f"{self.where} step {t}: stored frame has {len(record)} bytes, "
                             f"expected {size} for shape {self.shape[1:]}")
        return np.frombuffer(record, np.uint8).reshape(self.shape[1:]).copy()

    def __getitem__(self, index):
        if isinstance(index, slice):
            steps = range(*index.indices(len(self)))
            if not len(steps):
                return np.zeros((0, *self.shape[1:]), np.uint8)
            return np.stack([self._decode(t) for t in steps])
        t = int(index)
        return self._decode(t + len(self) if t < 0 else t)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self[:]
        return frames if dtype is None else frames.astype(dtype)


class StepStore:
    """Random access to one split of a dataset's step store (picklable: ArrayRecord's data
    source opens its files lazily, in each process that reads)."""

    def __init__(self, dataset_dir: str, split: str, info: dict):
        self.dir = store_dir(dataset_dir)
        self.split = split
        self.cameras = {name: tuple(shape) for name, shape in info["cameras"].items()}
        self.num_episodes = int(info["splits"][split]["episodes"])
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        self._episodes = ArrayRecordDataSource(self.path("episodes"))
        self._frames = ArrayRecordDataSource(self.path("frames"))

    def path(self, kind: str) -> str:
        """The ArrayRecord file of `kind` ("episodes" or "frames") of this split."""
        return os.path.join(self.dir, f"{self.split}-{kind}.array_record")

    def episode(self, index: int, where: str) -> dict:
        """Episode `index` as `EpisodeSource` returns it, frames as `StoredFrames`."""
        try:
            episode, first = unpack_episode(self._episodes[index])
        except Exception as err:  # a corrupt/truncated record file
            raise ValueError(f"{where}: step store file {self.path('episodes')} is damaged: "
                             f"{type(err).__name__}: {err}; rewrite it with python -m "
                             f"wallwm_jax.data.step_store {os.path.dirname(self.dir)}") from None
        t = len(episode["steps/action"])
        for c, (name, shape) in enumerate(self.cameras.items()):
            episode[name] = StoredFrames(self._frames, first, c, len(self.cameras), (t, *shape),
                                         f"{where} field '{name}'")
        return episode


def open_store(dataset_dir: str, split: str, episodes: int) -> StepStore | None:
    """The step store of `split` if the dataset has one for it; ValueError if it does not
    match the TFDS split (`episodes` episodes): written for an earlier build."""
    info = read_info(dataset_dir)
    if info is None or split not in info["splits"]:
        return None
    if info.get("format") != FORMAT:
        raise ValueError(f"{store_dir(dataset_dir)}/{STORE_FILE}: format {info.get('format')}, "
                         f"this code reads format {FORMAT}; rewrite the store")
    stored = int(info["splits"][split]["episodes"])
    if stored != episodes:
        raise ValueError(f"{store_dir(dataset_dir)}: split '{split}' has {stored} episodes in "
                         f"the step store but {episodes} in the dataset (a store of an earlier "
                         f"build?); rewrite it with python -m wallwm_jax.data.step_store "
                         f"{dataset_dir}")
    return StepStore(dataset_dir, split, info)
