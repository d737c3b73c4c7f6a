"""Test setup: 8 fake CPU devices (set before JAX is imported) and offscreen MuJoCo."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_sessionfinish(session, exitstatus):
    """'No tests collected' (exit 5) is a failure for this project, never a pass."""
    if exitstatus == 5:
        session.exitstatus = 1
