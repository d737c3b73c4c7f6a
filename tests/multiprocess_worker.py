"""One process of the two-process test (tests/test_multiprocess.py); not a test itself.

    python tests/multiprocess_worker.py --coordinator 127.0.0.1:PORT --num_processes 2 \
        --process_id 0 --data_dir DIR --workdir DIR --out DIR

Joins the run through `train.initialize_distributed` (what the train CLI calls), builds the
event index of `--index_dir` (only process 0 may write: `<out>/index_writes_<id>.json` lists
the files this process wrote), writes its first two per-host batches to
`<out>/batches_<id>.npz`, trains the tiny model to step 3 (checkpoint), then resumes from
that checkpoint to step 6 and writes `<out>/done_<id>.json`.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.configs import tiny_config  # noqa: E402  (the repository root is on the path now)


def define_flags() -> None:
    """The worker's flags."""
    from absl import flags

    for name in ("coordinator", "data_dir", "workdir", "out"):
        flags.DEFINE_string(name, None, name, required=True)
    flags.DEFINE_integer("num_processes", None, "processes in the run", required=True)
    flags.DEFINE_integer("process_id", None, "this process's index", required=True)
    flags.DEFINE_string("index_dir", None, "dataset whose event index is built")


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    args = flags.FLAGS

    import jax
    import numpy as np

    from wallwm_jax.data.pipeline import make_pipeline
    from wallwm_jax.train import initialize_distributed, train_and_evaluate
    from wallwm_jax.tree_names import path_name

    assert initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    if args.index_dir:
        from wallwm_jax.data import event_index

        writes = []
        write = event_index._write
        event_index._write = lambda path, data: (writes.append(str(path)), write(path, data))
        event_index.build_and_save(args.index_dir, clusters=4)
        event_index._write = write
        with open(os.path.join(args.out, f"index_writes_{args.process_id}.json"), "w") as f:
            json.dump(writes, f)
    config = tiny_config(args.data_dir)
    pipeline = make_pipeline(config.data, global_batch=config.batch_size, seed=config.seed)
    batches = [next(pipeline) for _ in range(2)]
    np.savez(os.path.join(args.out, f"batches_{args.process_id}.npz"),
             **{f"{i}/{path_name(k)}": np.asarray(v) for i, b in enumerate(batches)
                for k, v in jax.tree_util.tree_leaves_with_path(b)})

    first = train_and_evaluate(config, args.workdir, stop_after=3)
    second = train_and_evaluate(config, args.workdir)
    from jax.experimental import multihost_utils

    # The final params, gathered whole onto every process, for the comparison with one process.
    final = multihost_utils.process_allgather(second["params"], tiled=True)
    np.savez(os.path.join(args.out, f"params_{args.process_id}.npz"),
             **{jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_leaves_with_path(final)})
    with open(os.path.join(args.out, f"done_{args.process_id}.json"), "w") as f:
        json.dump({"process_count": jax.process_count(),
                   "local_devices": jax.local_device_count(), "devices": jax.device_count(),
                   "first": [first["first_step"], first["last_step"]],
                   "second": [second["first_step"], second["last_step"]],
                   "losses": first["losses"] + second["losses"]}, f)


if __name__ == "__main__":
    from wallwm_jax import cli

    define_flags()
    cli.run(main)
