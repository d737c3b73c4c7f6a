"""Test setup: 8 fake CPU devices (set before JAX is imported) and offscreen MuJoCo."""

import contextlib
import os
import tempfile

# Compile time is most of a tiny test's time on CPU. LLVM at -O0
# (--xla_backend_optimization_level=0) halves it; XLA:CPU's older loop emitters instead of its
# fusion emitters (--xla_cpu_use_fusion_emitters=false) halve what is left (tiny train step
# 5.9 -> 2.7 s). XLA's own HLO passes (sharding, collectives, fusion decisions) still run, so
# what the tests check of the compiled program is unchanged. Training outside tests is not
# affected. Subprocesses started by tests inherit the flags; tests that set their own
# XLA_FLAGS for a subprocess (another device count) add WALLWM_TEST_XLA_FLAGS to them.
os.environ["WALLWM_TEST_XLA_FLAGS"] = ("--xla_backend_optimization_level=0"
                                       " --xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 "
    + os.environ["WALLWM_TEST_XLA_FLAGS"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same tiny train step; a per-session persistent cache compiles it once.
# The process that makes it (the xdist controller, or the only process) removes it at the end.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="wallwm_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The package's commands started by tests (`python -m wallwm_jax...`) then resolve their cache
# to that directory too (wallwm_jax/compile_cache.py), never to the user's ~/.cache or a cache
# warm from an earlier run; WALLWM_COMPILATION_CACHE_DIR= (empty) runs them without one.
if os.environ.get("WALLWM_COMPILATION_CACHE_DIR"):
    del os.environ["WALLWM_COMPILATION_CACHE_DIR"]


def pytest_collection_finish(session):
    """The package's commands collect garbage as `wallwm_jax.cli.fewer_collections` says
    (every 50,000 allocations, the imports frozen); the tests' own processes do too, once
    the test modules (and with them JAX) are imported: ~10% less CPU in tracing."""
    from wallwm_jax.cli import fewer_collections

    fewer_collections()


def pytest_sessionfinish(session, exitstatus):
    """'No tests collected' (exit 5) is a failure for this project, never a pass; the
    compilation cache this process made goes (workers share the controller's).

    What the session made is frozen first: pytest then collects garbage five times over
    (to run finalizers of cyclic garbage for its unraisable-exception check) and would walk
    every JAX object the tests left, ~3 CPU-s a process. Exceptions raised in finalizers
    while the tests ran are still reported; those of cycles still alive here are not."""
    import gc

    gc.freeze()
    if exitstatus == 5:
        session.exitstatus = 1
    if _OWN_CACHE and not hasattr(session.config, "workerinput"):
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


import pytest  # noqa: E402  (imported after the environment is set)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Tests sharing a costly session fixture carry an xdist_group mark so one worker runs
    them all; pytest-xdist honours it by suffixing the node id with '@group'. Where a pytest
    or xdist version drops that, every worker would build the fixture again: stop instead.
    Then the tests are put in the order the workers are to get them (tests/xdist_order.py)."""
    # On a worker, xdist sets `dist` to "no" and says loadgroup in its own `loadgroup` option.
    if not hasattr(config, "workerinput") or not getattr(config.option, "loadgroup", False):
        return
    lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        raise pytest.UsageError(
            f"pytest {pytest.__version__} with pytest-xdist ignores xdist_group marks "
            f"({lost[0]} has no '@group' suffix); install the [dev] extra's pinned versions")
    from tests.xdist_order import two_workers_start_apart

    items[:] = two_workers_start_apart(items)


@contextlib.contextmanager
def _shared_root(tmp_path_factory, worker_id: str, name: str):
    """A directory every xdist worker of this run sees, held under an exclusive file lock
    while the block runs: the first worker builds what it holds, the others find it built."""
    import fcntl

    if worker_id == "master":
        root = tmp_path_factory.mktemp(name)
    else:  # <run basetemp>/popen-gwN per worker; its parent is this run's, shared
        root = tmp_path_factory.getbasetemp().parent / f"{name}_shared"
        root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield root
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, worker_id) -> str:
    """A real MetaWorld event dataset: 2 tasks x 4 expert episodes, 32x32 images.

    Under pytest-xdist the workers share one build: the first builds it, the others find it
    finished (the builder returns an existing build)."""
    from data_builders.metaworld_events import build

    with _shared_root(tmp_path_factory, worker_id, "tiny_dataset") as root:
        return build(str(root), config="demo", tasks=("reach-v3", "push-v3"),
                     episodes_per_task=4, image_size=32, seed=0, num_workers=1)


@pytest.fixture
def tiny_config(tiny_dataset):
    """The tiny event-mode config pointed at `tiny_dataset`, sized for CPU tests (the one
    tests/multiprocess_worker.py trains too)."""
    from tests.configs import tiny_config

    return tiny_config(tiny_dataset)


@pytest.fixture(scope="session")
def trained_policies(tiny_dataset, tmp_path_factory, worker_id):
    """One tiny model per mode, trained 3 steps on `tiny_dataset` and exported, shared by the
    export, mode and evaluation tests: mode -> namespace(root, run, export, config, result).

    The event-mode run also evaluates closed loop during training (`config.eval.closed_loop`
    on reach-v3, one short episode), so its metrics carry closed_loop/... rows. Under
    pytest-xdist the first worker to need them trains them; the others read its trained
    params (`result["params"]`, saved with numpy, not through the export or checkpoint code
    that tests compare them with) and its configs.
    """
    import pickle
    import types

    import numpy as np
    from flax import traverse_util

    with _shared_root(tmp_path_factory, worker_id, "trained_policies") as shared:
        if not (shared / "done").exists():
            _train_policies(tiny_dataset, shared)
            (shared / "done").write_text("ok")
        out = {}
        for mode in ("event", "unified", "chunk"):
            root = shared / f"policy_{mode}"
            with np.load(root / "params.npz") as flat:
                params = traverse_util.unflatten_dict({tuple(k.split("/")): flat[k]
                                                       for k in flat.files})
            with open(root / "config.pkl", "rb") as f:
                config = pickle.load(f)
            out[mode] = types.SimpleNamespace(root=root, run=str(root / "run"),
                                              export=str(root / "export"), config=config,
                                              result={"params": params})
        return out


def _train_policies(tiny_dataset: str, shared) -> None:
    """Train and export the three modes of `trained_policies` under `shared`."""
    import pickle

    import numpy as np
    from flax import traverse_util

    from experiments.pretrain import get_config
    from wallwm_jax.export import export_bundle
    from wallwm_jax.train import train_and_evaluate

    for mode in ("event", "unified", "chunk"):
        config = get_config(f"size=tiny,mode={mode}")
        config.data.data_dir = tiny_dataset
        config.data.image_size = 32
        config.batch_size = 8
        config.total_steps = 3
        config.checkpoint.every_steps = 3
        config.log_every_steps = 1
        if mode == "event":
            config.eval.closed_loop.update(suite="demo", tasks=("reach-v3",),
                                           episodes_per_task=1, every_steps=3)
        root = shared / f"policy_{mode}"
        root.mkdir(exist_ok=True)
        result = train_and_evaluate(config, str(root / "run"))
        export = export_bundle(str(root / "export"), result["params"], config,
                               result["norm_stats"], os.path.join(tiny_dataset,
                                                                  "tokenizer.model"))
        assert export == str(root / "export"), export
        flat = traverse_util.flatten_dict(result["params"], sep="/")
        np.savez(root / "params.npz", **{k: np.asarray(v) for k, v in flat.items()})
        with open(root / "config.pkl", "wb") as f:
            pickle.dump(config, f)
