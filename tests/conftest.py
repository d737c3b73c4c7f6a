"""Test setup: 8 fake CPU devices (set before JAX is imported) and offscreen MuJoCo."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same tiny train step; a per-session persistent cache compiles it once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.mkdtemp(prefix="wallwm_jax_cache_")))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session, exitstatus):
    """'No tests collected' (exit 5) is a failure for this project, never a pass."""
    if exitstatus == 5:
        session.exitstatus = 1


import pytest  # noqa: E402  (imported after the environment is set)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    """A real MetaWorld event dataset: 2 tasks x 4 expert episodes, 32x32 images."""
    from data_builders.metaworld_events import build

    root = tmp_path_factory.mktemp("tiny_dataset")
    return build(str(root), config="demo", tasks=("reach-v3", "push-v3"), episodes_per_task=4,
                 image_size=32, seed=0, num_workers=1)


@pytest.fixture
def tiny_config(tiny_dataset):
    """The tiny event-mode config pointed at `tiny_dataset`, sized for CPU tests."""
    from experiments.pretrain import get_config

    config = get_config("size=tiny,mode=event")
    config.data.data_dir = tiny_dataset
    config.data.image_size = 32
    config.batch_size = 8
    config.total_steps = 6
    config.log_every_steps = 1
    config.checkpoint.every_steps = 3
    config.checkpoint.async_save = True
    return config
