"""AOT compile of the real train step through the CLI: tiny config on 8 fake CPU devices."""

import json
import os
import subprocess
import sys

import pytest

from wallwm_jax.aot import format_table, topology_chips, verdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_aot(*args):
    env = dict(os.environ)
    # The CLI sets the device count itself (--num_devices); fast compile as conftest.py.
    env["XLA_FLAGS"] = os.environ["WALLWM_TEST_XLA_FLAGS"]
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "wallwm_jax.aot", "--config",
         "experiments/pretrain.py:size=tiny", "--config.batch_size=8", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report, proc.stdout


def test_tiny_compiles_on_8_fake_devices_and_does_not_fit_tiny_budget(tmp_path):
    report, out = _run_aot("--num_devices=8", "--config.mesh.data=2", "--config.mesh.fsdp=4",
                           "--hbm_gib=0.0001", f"--json_out={tmp_path / 'aot.json'}")
    assert report["num_devices"] == 8 and report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    mem = report["memory_bytes_per_device"]
    for key in ("arguments", "outputs", "temporaries", "total"):
        assert mem[key] > 0, key
    assert report["xla_flops_per_device"] > 0 and report["analytic_flops_per_step"] > 0
    # Loop-aware HLO count (scanned layers x depth) agrees with the analytic one.
    assert report["scan_layers"] and report["loops_with_unknown_trip_count"] == []
    assert abs(report["hlo_flops_per_device"] / report["analytic_flops_per_device"] - 1) < 0.1
    assert report["dtype"] == "float32" and report["target"] == "cpu"
    assert report["collective_bytes_per_device"]["total"] > 0
    # ~100 KiB budget: the tiny model's per-device state alone is larger.
    assert mem["total"] > 0.0001 * 1024**3
    assert report["verdict"] == "DOES NOT FIT" and "DOES NOT FIT" in out
    assert json.loads((tmp_path / "aot.json").read_text()) == report

    # The same memory against a generous budget fits.
    assert verdict(mem["total"], 16.0) == "FITS"
    assert verdict(mem["total"], None).startswith("UNKNOWN")
    assert format_table(report).splitlines()[-1].startswith("DOES NOT FIT")


def test_topology_chips():
    assert topology_chips("v5p:4x4x4") == 64
    assert topology_chips("2x2") == 4
    with pytest.raises(ValueError, match="--topology"):
        topology_chips("v5p")


def test_batch_that_does_not_split_is_one_line_error():
    """The README's pod example once failed deep in the step builder (batch 32, 256 devices)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "wallwm_jax.aot", "--config", "experiments/pretrain.py:size=tiny",
         "--num_devices=8", "--config.batch_size=4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --config.batch_size=4 does not split over the 8 data-parallel devices of mesh "
        "{'data': 8, 'fsdp': 1, 'tensor': 1}: use a multiple of 8"]
