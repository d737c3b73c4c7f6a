"""Write a dataset's step store (`step_records.py` has its format and reader): per split one
small record per episode and one raw frame per (step, camera), beside the TFDS records.

    python -m wallwm_jax.data.step_store <dataset version dir>   # add a store to a dataset
"""

from __future__ import annotations

import json
import os

import numpy as np

from wallwm_jax.data.step_records import (  # noqa: F401  (the store's names, one import away)
    FORMAT,
    STORE_DIR,
    STORE_FILE,
    WRITER_OPTIONS,
    StepStore,
    StoredFrames,
    open_store,
    pack_episode,
    read_info,
    store_dir,
    unpack_episode,
)


def write_step_store(dataset_dir: str) -> dict:
    """Write the step store of every split of a built dataset from its TFDS records (decoding
    each PNG frame once); returns step_store.json's content. Already written: returned as is.
    Written under a temporary name and renamed, so an interrupted write leaves no store."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from wallwm_jax.data.episodes import EpisodeSource

    info = read_info(dataset_dir)
    if info is not None:
        return info
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
    """Write the step store of the dataset version directory given and print its sizes."""
    from wallwm_jax import cli

    (dataset_dir,) = cli.positional(argv, "dataset_dir")
    if not os.path.exists(os.path.join(dataset_dir, "dataset_info.json")):
        raise cli.UserError(f"{dataset_dir}: no built dataset (expected dataset_info.json)")
    info = write_step_store(dataset_dir)
    for split, s in info["splits"].items():
        print(f"{split}: {s['episodes']} episodes, {s['steps']} steps; step store "
              f"{(s['episodes_bytes'] + s['frames_bytes']) / 1e6:.1f} MB beside "
              f"{s['tfds_bytes'] / 1e6:.1f} MB of TFDS records")
    print(store_dir(dataset_dir))


if __name__ == "__main__":
    from wallwm_jax import cli

    cli.run(main)
