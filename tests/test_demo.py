"""End-to-end: the demo at its smallest settings, then again in the same workdir (resume)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_demo(workdir):
    cmd = [sys.executable, "-m", "wallwm_jax.demo", "--workdir", str(workdir),
           "--tasks", "reach-v3", "--episodes_per_task", "3", "--steps", "4",
           "--batch_size", "8", "--eval_episodes", "1", "--eval_max_steps", "120",
           "--image_size", "32", "--build_workers", "1"]
    env = dict(os.environ, XLA_FLAGS="")  # the demo itself runs on one CPU device
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_demo_end_to_end_and_resume(tmp_path):
    stdout = _run_demo(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["train_steps"] == "0 -> 4"
    assert set(summary["closed_loop"]) == {"reach-v3"}
    row = summary["closed_loop"]["reach-v3"]
    assert 0.0 <= row["policy_success"] <= 1.0 and row["expert_success"] == 1.0
    assert os.path.isdir(summary["export_dir"]) and os.path.isdir(summary["checkpoint_dir"])
    assert summary["fresh_process_chunk"].startswith("shape [")
    assert "| reach-v3 |" in stdout

    _run_demo(tmp_path)
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["train_steps"] == "4 -> 4 (resumed)"
