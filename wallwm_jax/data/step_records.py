"""The step store's format and reader: a dataset's episodes laid out so a sample reads only
what it uses (`step_store.py` writes it).

A built dataset's TFDS records hold one example per episode (PNG frames inside), so reading
any step costs the whole episode. The step store, written beside them in `step_store/`, holds
per split one small record per episode (states, actions, flags, events, metadata: no frames)
and one record per (step, camera) holding the raw uint8 frame, both in ArrayRecord with one
record per chunk (random access). `EpisodeSource` reads it when present; the TFDS records
stay as they are, so every other reader, and datasets without a store, are unchanged.

Optionally (`end_frame_sizes` in step_store.json) each event's end frame of every camera
already resized to a world size (`resize_rgb`, what the sampler's world target is made with),
one uncompressed array per size read by memory map, with each episode's first event: a cold
sample then reads one frame less and resizes none. Optional and additive (format 1 still):
a reader that predates them, or a store without them, reads and resizes the frame instead.

    python -m wallwm_jax.data.step_store <dataset version dir> [--end_frame_size 16]

Reading lives here, apart from the writer, because `EpisodeSource` reads stores and the
writer reads datasets through `EpisodeSource`.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading

import numpy as np
from PIL import Image

STORE_DIR = "step_store"
STORE_FILE = "step_store.json"
FORMAT = 1
# One record per chunk: reading a frame decompresses that frame only.
WRITER_OPTIONS = "group_size:1,zstd:1"
_ARRAYS = ("steps/observation/state", "steps/action", "steps/is_first", "steps/is_last",
           "events/start", "events/end")
_TEXTS = ("events/caption", "events/phase", "episode_metadata/task",
          "episode_metadata/instruction", "episode_metadata/success")


def resize_rgb(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3], PIL's bilinear resize (what
    `Image.fromarray(frame).resize(...)` gives, bit for bit, with less wrapping around it:
    a third of the call at 64 px). The store's end frames and the sampler's world target
    are both made with it, so they are the same bytes."""
    frame = np.ascontiguousarray(frame, np.uint8)
    height, width = frame.shape[:2]
    image = Image.frombuffer("RGB", (width, height), frame, "raw", "RGB", 0, 1)
    return np.frombuffer(image.resize((size, size), Image.BILINEAR).tobytes(),
                         np.uint8).reshape(size, size, 3)


def end_frames_path(directory: str, split: str, size: int) -> str:
    """The array [events, cameras, size, size, 3] of a split's event-end frames at `size`."""
    return os.path.join(directory, f"{split}-end_frames-{size}.npy")


def event_offsets_path(directory: str, split: str) -> str:
    """The array [episodes + 1] of a split's first event of each episode (then the total)."""
    return os.path.join(directory, f"{split}-event_offsets.npy")


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


def unpack_episode(record: bytes, layouts: dict | None = None) -> tuple[dict, int]:
    """(the flat episode without frames, its first frame record) of a `pack_episode` record.

    `layouts` (a reader's, kept across reads): each array's (name, dtype) is checked and its
    dtype parsed once, not on every read; a record's byte count is checked on every read."""
    (n,) = struct.unpack_from("<I", record)
    header = json.loads(record[4:4 + n])
    layouts = {} if layouts is None else layouts
    episode, at = dict(header["texts"]), 4 + n
    for name, dtype, shape in header["arrays"]:
        parsed = layouts.get((name, dtype))
        if parsed is None:
            if name not in _ARRAYS:
                raise ValueError(f"episode record has an unknown array '{name}'")
            parsed = layouts[(name, dtype)] = np.dtype(dtype)
        count = math.prod(shape)
        episode[name] = np.frombuffer(record, parsed, count, at).reshape(shape).copy()
        at += parsed.itemsize * count
    if at != len(record):
        raise ValueError(f"episode record has {len(record)} bytes, its header says {at}")
    return episode, int(header["frame_offset"])


class RecordFile:
    """Random access to the records of one ArrayRecord file, through one reader opened on
    first use in each process (picklable; reads from several threads share it, as Grain's
    `ArrayRecordDataSource` shares its readers), without the data source's per-read Python
    (it maps a key across files; a store split is one file)."""

    def __init__(self, path: str):
        self.path = path
        self._reader = None
        self._len = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def _open(self):
        with self._lock:
            if self._reader is None:
                from array_record.python.array_record_module import ArrayRecordReader

                # the data source's reader settings: no read-ahead (random access)
                reader = ArrayRecordReader(self.path, options="readahead_buffer_size:0",
                                           file_reader_buffer_size=32768)
                self._len = reader.num_records()
                self._reader = reader
        return self._reader

    def __len__(self) -> int:
        if self._reader is None:
            self._open()
        return self._len

    def __getitem__(self, index: int) -> bytes:
        reader = self._reader or self._open()
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(f"record {index} of {self._len}")
        return reader.read([index])[0]


class EndFrames:
    """A split's event-end frames at one size, [events, cameras, size, size, 3] uint8,
    memory-mapped on first use in each process (picklable: the path travels, not the map)."""

    def __init__(self, path: str, shape: tuple[int, ...]):
        self.path, self.shape = path, tuple(shape)
        self._array = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"path": self.path, "shape": self.shape}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["shape"])

    def _open(self) -> np.ndarray:
        with self._lock:
            if self._array is None:
                try:
                    array = np.load(self.path, mmap_mode="r")
                except Exception as err:  # missing, truncated or not an array
                    raise ValueError(f"step store file {self.path} is damaged: "
                                     f"{type(err).__name__}: {err}") from None
                if array.dtype != np.uint8 or array.shape != self.shape:
                    raise ValueError(f"step store file {self.path} holds {array.dtype} "
                                     f"{array.shape}, step_store.json says uint8 {self.shape}")
                self._array = array
        return self._array

    def frame(self, event: int, camera: int) -> np.ndarray:
        """End frame [size, size, 3] of `camera` of the split's `event`-th event (a copy)."""
        array = self._array if self._array is not None else self._open()
        return np.array(array[event, camera])


class StoredFrames:
    """Frames [T, H, W, 3] uint8 of one camera of one episode, read from the store on access:
    `frames[t]` reads one record; same interface as `episodes.LazyFrames`, plus `end_frame`
    (an event's last frame resized, when the store holds it at that size)."""

    def __init__(self, frames: RecordFile, first: int, camera: int, num_cameras: int,
                 shape: tuple[int, ...], where: str,
                 ends: tuple[dict[int, EndFrames], int] | None = None):
        self._frames, self._first, self._camera, self._num = frames, first, camera, num_cameras
        self._ends = ends  # ({size: the split's end frames}, the episode's first event)
        self.shape = tuple(shape)
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)
        self.where = where
        self._size = math.prod(self.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def _decode(self, t: int) -> np.ndarray:
        try:
            record = self._frames[(self._first + t) * self._num + self._camera]
        except Exception as err:  # a corrupt/truncated record file
            raise ValueError(f"{self.where} step {t}: step store file {self._frames.path} is "
                             f"damaged: {type(err).__name__}: {err}") from None
        if len(record) != self._size:
            raise ValueError(f"{self.where} step {t}: stored frame has {len(record)} bytes, "
                             f"expected {self._size} for shape {self.shape[1:]} (step store "
                             f"file {self._frames.path})")
        return np.frombuffer(record, np.uint8).reshape(self.shape[1:]).copy()

    def end_frame(self, event: int, size: int) -> np.ndarray | None:
        """Event `event`'s last frame resized to [size, size, 3] by `resize_rgb` at write
        time, or None when the store holds no end frames at `size` (then resize a frame)."""
        if self._ends is None or size not in self._ends[0]:
            return None
        return self._ends[0][size].frame(self._ends[1] + event, self._camera)

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
    """Random access to one split of a dataset's step store (picklable: its files are opened
    lazily, in each process that reads)."""

    def __init__(self, dataset_dir: str, split: str, info: dict):
        self.dir = store_dir(dataset_dir)
        self.split = split
        self.cameras = {name: tuple(shape) for name, shape in info["cameras"].items()}
        self.num_episodes = int(info["splits"][split]["episodes"])
        self._episodes = RecordFile(self.path("episodes"))
        self._frames = RecordFile(self.path("frames"))
        self._layouts: dict = {}  # (array name, dtype) -> parsed dtype: checked once
        # the event-end frames at each size written (optional: stores may have none)
        self.end_frames: dict[int, EndFrames] = {}
        self._event_offsets = None
        sizes = [int(s) for s in info.get("end_frame_sizes", [])]
        if sizes:
            self._event_offsets = np.load(event_offsets_path(self.dir, split))
            if self._event_offsets.shape != (self.num_episodes + 1,):
                raise ValueError(f"{event_offsets_path(self.dir, split)}: "
                                 f"{self._event_offsets.shape[0]} offsets for "
                                 f"{self.num_episodes} episodes; rewrite the store")
            events = int(self._event_offsets[-1])
            self.end_frames = {s: EndFrames(end_frames_path(self.dir, split, s),
                                            (events, len(self.cameras), s, s, 3))
                               for s in sizes}

    def path(self, kind: str) -> str:
        """The ArrayRecord file of `kind` ("episodes" or "frames") of this split."""
        return os.path.join(self.dir, f"{self.split}-{kind}.array_record")

    def episode(self, index: int, where: str) -> dict:
        """Episode `index` as `EpisodeSource` returns it, frames as `StoredFrames`."""
        try:
            episode, first = unpack_episode(self._episodes[index], self._layouts)
        except Exception as err:  # a corrupt/truncated record file
            raise ValueError(f"{where}: step store file {self.path('episodes')} is damaged: "
                             f"{type(err).__name__}: {err}; rewrite it with python -m "
                             f"wallwm_jax.data.step_store {os.path.dirname(self.dir)}") from None
        t = len(episode["steps/action"])
        ends = None
        if self.end_frames:
            at, stop = (int(v) for v in self._event_offsets[index:index + 2])
            if stop - at != len(episode["events/end"]):
                raise ValueError(f"{where}: {stop - at} end frames in the step store for "
                                 f"{len(episode['events/end'])} events; rewrite the store")
            ends = (self.end_frames, at)
        for c, (name, shape) in enumerate(self.cameras.items()):
            episode[name] = StoredFrames(self._frames, first, c, len(self.cameras), (t, *shape),
                                         f"{where} field '{name}'", ends)
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
