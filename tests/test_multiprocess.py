"""Two processes x 4 CPU devices train exactly like one process x 8 devices.

Both processes run tests/multiprocess_worker.py, joined by `jax.distributed.initialize` on
127.0.0.1 (CPU collectives over gloo): per-host batches, per-step losses, and an Orbax save at
step 3 that the same processes restore to finish the run.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from wallwm_jax import sharding
from wallwm_jax.data import event_index
from wallwm_jax.data.pipeline import make_pipeline
from wallwm_jax.train import initialize_distributed
from wallwm_jax.train_log import read_metrics
from wallwm_jax.train_step import make_train_step
from wallwm_jax.tree_names import path_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multiprocess_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tiny_dataset, workdir, out, num_processes=2, index_dir=None):
    env = dict(os.environ)
    env["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                        + os.environ["WALLWM_TEST_XLA_FLAGS"])  # fast compile, as conftest.py
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    coordinator = f"127.0.0.1:{_free_port()}"
    procs, logs = [], []
    try:
        for pid in range(num_processes):
            log = open(out / f"worker_{pid}.log", "wb")  # noqa: SIM115 (closed below)
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, WORKER, "--coordinator", coordinator,
                 "--num_processes", str(num_processes), "--process_id", str(pid),
                 "--data_dir", tiny_dataset, "--workdir", str(workdir), "--out", str(out)]
                + (["--index_dir", str(index_dir)] if index_dir else []),
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                # Each process its own compile cache (none shared by concurrent processes):
                # the resumed run's train step then loads instead of compiling again.
                env=dict(env, JAX_COMPILATION_CACHE_DIR=str(out / f"jax_cache_{pid}"))))
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=60)
        for log in logs:
            log.close()
    tails = "\n".join(f"--- worker {i}:\n" + (out / f"worker_{i}.log").read_text()[-3000:]
                      for i in range(num_processes))
    assert codes == [0] * num_processes, tails


def test_two_processes_match_one(tiny_config, tiny_dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    index_dir = shutil.copytree(tiny_dataset, tmp_path / "index_copy",
                                ignore=shutil.ignore_patterns("event_index_*"))
    _launch(tiny_dataset, tmp_path / "multi", out, index_dir=index_dir)
    done = [json.loads((out / f"done_{i}.json").read_text()) for i in range(2)]
    # The event index of a dataset is written once, by process 0 only, through etils.epath.
    writes = [json.loads((out / f"index_writes_{i}.json").read_text()) for i in range(2)]
    assert sorted(os.path.basename(w) for w in writes[0]) == [
        "event_index_train.json", "event_index_train.npz"] and writes[1] == []
    assert event_index.load_event_index(str(index_dir), "train").build_args["num_clusters"] == 4
    for d in done:
        assert (d["process_count"], d["local_devices"], d["devices"]) == (2, 4, 8)
        assert d["first"] == [0, 3] and d["second"] == [3, 6]  # resumed from the step-3 save
    assert done[0]["losses"] == done[1]["losses"]  # every process sees the same global loss

    # Per-host batches: host p holds rows [p*B/2, (p+1)*B/2) of each global batch, so the two
    # hosts' shares are disjoint and, concatenated in process order, equal the single-process
    # global batch row for row (the order the global jax.Array is assembled in).
    jax.config.update("jax_threefry_partitionable", True)
    single = make_pipeline(tiny_config.data, global_batch=tiny_config.batch_size,
                           seed=tiny_config.seed)
    global_batches = [next(single) for _ in range(tiny_config.total_steps)]
    hosts = [np.load(out / f"batches_{i}.npz") for i in range(2)]
    for b in range(2):
        for key, value in _fields(global_batches[b]).items():
            parts = [h[f"{b}/{key}"] for h in hosts]
            assert all(p.shape[0] == value.shape[0] // 2 for p in parts), key
            np.testing.assert_array_equal(np.concatenate(parts), value,
                                          err_msg=f"batch {b} field {key}")

    mesh = sharding.make_mesh(tiny_config.mesh)
    assert mesh.devices.size == 8
    fns = make_train_step(tiny_config, mesh)
    params, state = fns.init_fn(jax.random.PRNGKey(tiny_config.seed + 1))
    reference = []
    for gb in global_batches:
        batch = sharding.global_batch(gb, mesh, fns.rules)
        params, state, metrics = fns.update_fn(params, state, batch, fns.run_inputs)
        reference.append(float(metrics["loss"]))

    steps = sorted(os.listdir(tmp_path / "multi" / "checkpoints"))
    assert steps == ["3", "6"], steps
    multi = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "multi")) if "loss" in r}
    assert sorted(multi) == [1, 2, 3, 4, 5, 6]  # only process 0 writes metrics.jsonl
    print("two processes x 4 devices:", done[0]["losses"])
    print("one process x 8 devices:  ", reference)
    # Same math on the same global arrays; only the cross-device gradient reductions run
    # differently (gloo between processes vs in-process), i.e. float32 summation order.
    np.testing.assert_allclose(done[0]["losses"], reference, rtol=1e-5, atol=1e-6)

    # The final params: both processes hold the same arrays bit for bit, and the update of
    # the 6 steps (final - init) equals the single-process run's to 0.1% as a whole. Float32
    # summation order differs (gloo vs in-process), and Adam turns the rounding noise of
    # zero-gradient leaves (attention key biases) into lr-sized steps, so element-wise
    # closeness is not a fair test; a wrong batch, step or restored optimizer state moves
    # the update by far more than 0.1%.
    finals = [dict(np.load(out / f"params_{i}.npz")) for i in range(2)]
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(params)}
    init = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
            jax.tree_util.tree_leaves_with_path(
                fns.init_fn(jax.random.PRNGKey(tiny_config.seed + 1))[0])}
    assert sorted(finals[0]) == sorted(finals[1]) == sorted(flat)
    for name in flat:
        np.testing.assert_array_equal(finals[0][name], finals[1][name], err_msg=name)
    multi_update = np.concatenate([(finals[0][n] - init[n]).ravel() for n in sorted(flat)])
    single_update = np.concatenate([(flat[n] - init[n]).ravel() for n in sorted(flat)])
    gap = np.linalg.norm(multi_update - single_update) / np.linalg.norm(single_update)
    print(f"final params: |update gap| / |update| = {gap:.2e}")
    assert np.linalg.norm(single_update) > 0 and gap <= 1e-3


def test_initialize_distributed_arguments(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert initialize_distributed() is False  # one process: nothing to join
    assert initialize_distributed(num_processes=1) is False
    with pytest.raises(ValueError, match="coordinator_address"):
        initialize_distributed(num_processes=2, process_id=0)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ValueError, match="process_id"):
        initialize_distributed()
    with pytest.raises(ValueError, match=r"process_id=2 must be in 0\.\.1"):
        initialize_distributed(process_id=2)


def _fields(batch):
    """{field name: array} of an EventBatch, as the worker saves them (`obs/image`, ...)."""
    return {path_name(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(batch)}
