"""Write a dataset's step store (`step_records.py` has its format and reader): per split one
small record per episode and one raw frame per (step, camera), beside the TFDS records, and
optionally each event's end frame already resized to a model's world size.

    python -m wallwm_jax.data.step_store <dataset version dir>   # add a store to a dataset
    python -m wallwm_jax.data.step_store <dir> --end_frame_size 16   # + end frames at 16 px
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from wallwm_jax.data.step_records import (  # noqa: F401  (the store's names, one import away)
    FORMAT,
    STORE_DIR,
    STORE_FILE,
    WRITER_OPTIONS,
    StepStore,
    StoredFrames,
    end_frames_path,
    event_offsets_path,
    open_store,
    pack_episode,
    read_info,
    resize_rgb,
    store_dir,
    unpack_episode,
)


def write_step_store(dataset_dir: str, end_frame_size: int | Sequence[int] = ()) -> dict:
    """Write the step store of every split of a built dataset from its TFDS records (decoding
    each PNG frame once), with each event's end frame of every camera at `end_frame_size`
    (one size or several; the world size of the models that will read it, `data.world_size`:
    the sampler then reads it instead of resizing a frame); returns step_store.json's content.
    Already written: only the end-frame sizes it lacks are added. Written under temporary names
    and renamed, so an interrupted write leaves no store, or the store as it was."""
    sizes = [end_frame_size] if isinstance(end_frame_size, int) else list(end_frame_size)
    if any(int(s) < 1 for s in sizes):
        raise ValueError(f"end_frame_size must be positive, got {sizes}")
    info = read_info(dataset_dir)
    if info is None:
        info = _write_frames(dataset_dir)
    missing = sorted({int(s) for s in sizes} - set(info.get("end_frame_sizes", [])))
    if missing:
        info = _write_end_frames(dataset_dir, info, missing)
    return info


def _write_end_frames(dataset_dir: str, info: dict, sizes: list[int]) -> dict:
    """Add the event-end frames at `sizes` to a written store, read from its raw frames
    (`resize_rgb` of each event's last frame, what the sampler would compute); each file is
    written under a temporary name and renamed, step_store.json last."""
    directory = store_dir(dataset_dir)
    plain = {**info, "end_frame_sizes": []}  # read the store without its end frames
    for split in info["splits"]:
        store = StepStore(dataset_dir, split, plain)
        cameras = list(store.cameras)
        episodes = [store.episode(e, f"{directory} split '{split}' episode {e}")
                    for e in range(store.num_episodes)]
        offsets = np.zeros(len(episodes) + 1, np.int64)
        offsets[1:] = np.cumsum([len(ep["events/end"]) for ep in episodes])
        for size in sizes:
            path = end_frames_path(directory, split, size)
            out = np.lib.format.open_memmap(path + ".tmp.npy", "w+", np.uint8,
                                            (int(offsets[-1]), len(cameras), size, size, 3))
            for ep, at in zip(episodes, offsets, strict=False):
                for k, end in enumerate(np.asarray(ep["events/end"])):
                    for c, name in enumerate(cameras):
                        out[at + k, c] = resize_rgb(ep[name][int(end) - 1], size)
            out.flush()
            del out
            os.replace(path + ".tmp.npy", path)
        path = event_offsets_path(directory, split)
        np.save(path + ".tmp.npy", offsets)
        os.replace(path + ".tmp.npy", path)
    info = {**info, "end_frame_sizes": sorted({*info.get("end_frame_sizes", []), *sizes})}
    tmp = os.path.join(directory, STORE_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(directory, STORE_FILE))
    return info


def _write_frames(dataset_dir: str) -> dict:
    """Write the store's episode and frame records of every split; step_store.json's content."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from wallwm_jax.data.episodes import EpisodeSource

    final = store_dir(dataset_dir)
    tmp = final + ".tmp"
    if os.path.exists(tmp):
        import shutil

        shutil.rmtree(tmp)
    os.makedirs(tmp)
    info = {"format": FORMAT, "codec": "raw uint8", "writer_options": WRITER_OPTIONS,
            "cameras": {}, "splits": {}}
    import tensorflow_datasets as tfds

    for split in tfds.builder_from_directory(dataset_dir).info.splits:
        source = EpisodeSource(dataset_dir, split, step_store=False)
        cameras = sorted(source.image_shapes)
        info["cameras"] = {name: list(source.image_shapes[name]) for name in cameras}
        paths = {kind: os.path.join(tmp, f"{split}-{kind}.array_record")
                 for kind in ("episodes", "frames")}
        writers = {kind: ArrayRecordWriter(path, WRITER_OPTIONS) for kind, path in paths.items()}
        steps = 0
        for e in range(len(source)):
            episode = source[e]
            writers["episodes"].write(pack_episode(episode, steps))
            frames = [np.asarray(episode[name]) for name in cameras]
            for t in range(len(episode["steps/action"])):
                for camera in frames:
                    writers["frames"].write(np.ascontiguousarray(camera[t]).tobytes())
            steps += len(episode["steps/action"])
        for writer in writers.values():
            writer.close()
        info["splits"][split] = {"episodes": len(source), "steps": steps,
                                 **{f"{kind}_bytes": os.path.getsize(path)
                                    for kind, path in paths.items()},
                                 "tfds_bytes": sum(os.path.getsize(f) for f in source.files)}
    with open(os.path.join(tmp, STORE_FILE), "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, final)
    return info


def main(argv: list[str]) -> None:
    """Write the step store of the dataset version directory given (with the end frames at
    each `--end_frame_size`) and print its sizes."""
    from absl import flags

    from wallwm_jax import cli

    (dataset_dir,) = cli.positional(argv, "dataset_dir")
    if not os.path.exists(os.path.join(dataset_dir, "dataset_info.json")):
        raise cli.UserError(f"{dataset_dir}: no built dataset (expected dataset_info.json)")
    sizes = flags.FLAGS.end_frame_size if "end_frame_size" in flags.FLAGS else []
    if any(s < 1 for s in sizes or []):
        raise cli.UserError(f"--end_frame_size must be positive, got {sizes}")
    info = write_step_store(dataset_dir, sizes or [])
    for split, s in info["splits"].items():
        print(f"{split}: {s['episodes']} episodes, {s['steps']} steps; step store "
              f"{(s['episodes_bytes'] + s['frames_bytes']) / 1e6:.1f} MB beside "
              f"{s['tfds_bytes'] / 1e6:.1f} MB of TFDS records")
    if info.get("end_frame_sizes"):
        print(f"event-end frames at {info['end_frame_sizes']} px")
    print(store_dir(dataset_dir))


if __name__ == "__main__":
    from absl import flags

    from wallwm_jax import cli

    flags.DEFINE_multi_integer("end_frame_size", [], "Also store each event's end frame of "
                               "every camera resized to this side (a model's data.world_size; "
                               "repeat for several): the sampler reads it instead of resizing.")
    cli.run(main)
