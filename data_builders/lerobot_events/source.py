"""Reading a LeRobot dataset (v3.0 layout) from disk with pyarrow, no `lerobot` import.

    meta/info.json                     codebase_version, fps, features, data_path, video_path
    meta/tasks.parquet                 task_index -> task text (the pandas index column)
    meta/episodes/chunk-*/file-*.parquet  per episode: length, data chunk/file, row range,
                                       per video key: chunk/file, from/to_timestamp
    data/chunk-*/file-*.parquet        frames: feature columns, episode_index, frame_index,
                                       timestamp, task_index; images as {bytes: PNG, path}
    videos/<key>/chunk-*/file-*.mp4    video features: episodes one after another (video.py)

`resolve` checks a `KeyMapping` against info.json (errors name the key and list the
available ones); `LeRobotSource[e]` is episode e as {key: [T, ...] array, "task": str}.
"""

from __future__ import annotations

import glob
import io
import json
import os

import numpy as np
from PIL import Image

from data_builders.lerobot_events.video import decode_frames
from data_builders.rlds_events import KeyMapping, SourceSpec

INSTRUCTION_KEY = "task"  # LeRobot's per-frame task text (tasks.parquet via task_index)


def read_info(root: str) -> dict:
    """meta/info.json of a v3 dataset; ValueError for another layout version."""
    path = os.path.join(root, "meta", "info.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing; expected a LeRobot dataset root "
                                "(meta/info.json, data/, meta/episodes/)")
    with open(path) as f:
        info = json.load(f)
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3"):
        raise ValueError(f"{path}: codebase_version {version}, expected v3.x (convert older "
                         "datasets with lerobot's convert_dataset_v21_to_v30 first)")
    return info


def camera_name(key: str, first: bool) -> str:
    """"observation.images.wrist" -> "image_wrist" (the first camera is "image")."""
    return "image" if first else f"image_{key.rsplit('.', 1)[-1]}"


def resolve(mapping: KeyMapping, info: dict, dataset_name: str) -> SourceSpec:
    """Check `mapping` against info.json features; ValueError names the key, what was
    expected and the available keys."""
    features = info["features"]
    available = sorted(features) + [INSTRUCTION_KEY]

    def find(key: str, what: str) -> dict:
        if key not in features:
            raise ValueError(f"{key}: missing ({what}); available keys: {available}")
        return features[key]

    if not mapping.image_keys:
        raise ValueError("image_keys: empty; expected one or more camera keys")
    cameras = []
    for i, key in enumerate(mapping.image_keys):
        ft = find(key, "an image key")
        shape = tuple(int(s) for s in ft["shape"])
        if ft["dtype"] not in ("image", "video") or len(shape) != 3 or shape[-1] != 3:
            raise ValueError(f"{key}: dtype {ft['dtype']} shape {shape}, expected an image "
                             "or video (H, W, 3)")
        size = mapping.image_size
        cameras.append((camera_name(key, i == 0), key, (size, size, 3) if size else shape))
    dims = {}
    for what, key in (("state", mapping.state_key), ("action", mapping.action_key)):
        ft = find(key, f"the {what} key")
        if len(ft["shape"]) != 1 or not np.issubdtype(np.dtype(ft["dtype"]), np.number):
            raise ValueError(f"{key}: dtype {ft['dtype']} shape {ft['shape']}, expected a "
                             "real-valued vector (D,)")
        dims[what] = int(ft["shape"][0])
    g, (lo, hi) = mapping.gripper_index, mapping.position_slice
    if not -dims["action"] <= g < dims["action"]:
        raise ValueError(f"{mapping.action_key}: shape ({dims['action']},), expected the "
                         f"gripper index {g} to be < {dims['action']}")
    if not 0 <= lo < hi <= dims["state"]:
        raise ValueError(f"{mapping.state_key}: shape ({dims['state']},), expected the "
                         f"position slice {lo}:{hi} to lie inside it")
    if mapping.instruction_key != INSTRUCTION_KEY:
        find(mapping.instruction_key, "the instruction key")
    return SourceSpec(cameras=tuple(cameras), state_path=mapping.state_key,
                      action_path=mapping.action_key, state_dim=dims["state"],
                      action_dim=dims["action"], instruction_path=mapping.instruction_key,
                      success_path=None, task_path=None, task_default=dataset_name)


class LeRobotSource:
    """Episodes of a v3 dataset, read lazily (one data file cached at a time)."""

    def __init__(self, root: str, keys: tuple[str, ...]):
        self.root, self.keys = root, keys
        self.info = read_info(root)
        self.episodes = self._episodes()
        self.tasks = self._tasks()
        self._file: tuple[str, dict] | None = None

    def __len__(self) -> int:
        return len(self.episodes)

    def _episodes(self) -> list[dict]:
        import pyarrow.parquet as pq

        files = sorted(glob.glob(os.path.join(self.root, "meta", "episodes", "*", "*.parquet")))
        if not files:
            raise FileNotFoundError(f"{self.root}/meta/episodes: no parquet files")
        cols = ["episode_index", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index"]
        cols += [f"videos/{key}/{c}" for key in self.keys
                 if self.info["features"][key]["dtype"] == "video"
                 for c in ("chunk_index", "file_index", "from_timestamp")]
        rows = [r for f in files for r in pq.read_table(f, columns=cols).to_pylist()]
        return sorted(rows, key=lambda r: r["episode_index"])

    def _tasks(self) -> dict[int, str]:
        import pyarrow.parquet as pq

        table = pq.read_table(os.path.join(self.root, "meta", "tasks.parquet"))
        text = [c for c in table.column_names if c != "task_index"][0]  # pandas index column
        return dict(zip(table.column("task_index").to_pylist(),
                        table.column(text).to_pylist(), strict=True))

    def _data_file(self, chunk: int, file: int) -> dict:
        import pyarrow.parquet as pq

        path = os.path.join(self.root, self.info["data_path"].format(chunk_index=chunk,
                                                                     file_index=file))
        if self._file is None or self._file[0] != path:
            cols = [k for k in self.keys if self.info["features"][k]["dtype"] != "video"]
            cols += ["episode_index", "frame_index", "timestamp", "task_index"]
            self._file = (path, pq.read_table(path, columns=cols).to_pydict())
        return self._file[1]

    def _image(self, cell: dict) -> np.ndarray:
        data = cell.get("bytes")
        if data is None:
            with open(os.path.join(self.root, cell["path"]), "rb") as f:
                data = f.read()
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def _video(self, key: str, meta: dict, timestamps: list[float]) -> np.ndarray:
        """[T, H, W, 3] uint8 frames of video feature `key` at the episode's `timestamps`."""
        path = os.path.join(self.root, self.info["video_path"].format(
            video_key=key, chunk_index=meta[f"videos/{key}/chunk_index"],
            file_index=meta[f"videos/{key}/file_index"]))
        start = meta[f"videos/{key}/from_timestamp"]
        codec = self.info["features"][key].get("info", {}).get("video.codec", "?")
        return decode_frames(path, [start + t for t in timestamps], codec)

    def __getitem__(self, e: int) -> dict:
        meta = self.episodes[e]
        table = self._data_file(meta["data/chunk_index"], meta["data/file_index"])
        rows = [i for i, x in enumerate(table["episode_index"]) if x == meta["episode_index"]]
        rows.sort(key=lambda i: table["frame_index"][i])
        out: dict = {}
        for key in self.keys:
            dtype = self.info["features"][key]["dtype"]
            if dtype == "video":
                out[key] = self._video(key, meta, [table["timestamp"][i] for i in rows])
                continue
            cells = [table[key][i] for i in rows]
            out[key] = (np.stack([self._image(c) for c in cells]) if dtype == "image"
                        else np.asarray(cells, np.float32))
        out[INSTRUCTION_KEY] = self.tasks[table["task_index"][rows[0]]] if rows else ""
        return out
