"""The evaluation's episode log: a stopped run's episodes are kept, a cut last line is played
again, another evaluation's log is refused naming the field, and the CLI resumes after a kill
with the records an uninterrupted run writes."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from wallwm_jax.evaluation import suites
from wallwm_jax.evaluation.episode_log import EPISODES_FILE, EpisodeLog, LogMismatch
from wallwm_jax.evaluation.runner import PolicySpec, _identity, evaluate_suite

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDENTITY = {"policy": {"path": "expert"}, "split": "test", "suite": "demo"}


def _record(task, ep, seed, success=True):
    return {"task": task, "episode": ep, "seed": seed, "success": success, "steps": 7}


def test_kept_records_cut_line_and_another_identity(tmp_path):
    log = EpisodeLog(str(tmp_path), IDENTITY)
    log.append(_record("reach-v3", 0, 11))
    log.append(_record("reach-v3", 1, 12, success=False))
    with open(tmp_path / EPISODES_FILE, "a") as f:
        f.write('{"task": "push-v3", "episode": 0, "se')  # the stop cut this write
    again = EpisodeLog(str(tmp_path), IDENTITY)
    assert sorted(again.done) == [("reach-v3", 0, 11), ("reach-v3", 1, 12)]
    assert again.done[("reach-v3", 1, 12)]["success"] is False
    again.append(_record("push-v3", 0, 13))
    lines = (tmp_path / EPISODES_FILE).read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    assert sorted(EpisodeLog(str(tmp_path), IDENTITY).done)[-1] == ("reach-v3", 1, 12)

    with pytest.raises(LogMismatch, match=r"split: \"test\" there, \"dev\" now"):
        EpisodeLog(str(tmp_path), dict(IDENTITY, split="dev"))
    fresh = EpisodeLog(str(tmp_path), dict(IDENTITY, split="dev"), resume=False)
    assert fresh.done == {}
    (tmp_path / EPISODES_FILE).write_text("not json\n")
    with pytest.raises(LogMismatch, match="not an evaluation's episode log"):
        EpisodeLog(str(tmp_path), IDENTITY)


def test_identity_follows_the_weights_and_the_checkpoint_step(trained_policies, tmp_path):
    import shutil

    suite = suites.get("demo")
    export = trained_policies["event"].export
    ident = _identity(PolicySpec(export), suite, "event", "oracle", "test")
    assert len(ident["policy"]["weights_sha256"]) == 64
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    assert _identity(PolicySpec(str(copy)), suite, "event", "oracle", "test")["policy"][
        "weights_sha256"] == ident["policy"]["weights_sha256"]
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    assert _identity(PolicySpec(str(copy)), suite, "event", "oracle", "test")["policy"][
        "weights_sha256"] != ident["policy"]["weights_sha256"]
    run = trained_policies["unified"].run
    assert _identity(PolicySpec(run), suite, "unified", None, "test")["policy"]["step"] == 3


def _cli(workdir, *extra):
    return [sys.executable, "-m", "wallwm_jax.evaluation", "--policy", "expert", "--suite",
            "demo", "--tasks", "reach-v3,push-v3", "--episodes_per_task", "3",
            "--episode_limit", "60", "--workdir", str(workdir), *extra]


def test_cli_killed_mid_run_resumes_to_the_uninterrupted_records(tmp_path):
    workdir = tmp_path / "stopped"
    log_path = workdir / EPISODES_FILE
    proc = subprocess.Popen(_cli(workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if log_path.exists() and len(log_path.read_text().splitlines()) >= 3:
                break  # the identity line and two episodes
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    kept = [json.loads(line) for line in log_path.read_text().splitlines()[1:]
            if line.endswith("}")]
    assert 2 <= len(kept) < 6 and not (workdir / "results.json").exists()

    done = subprocess.run(_cli(workdir), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((workdir / "results.json").read_text())
    assert resumed["resumed_episodes"] == len(kept)
    assert resumed["episodes"][:len(kept)] == kept  # kept as recorded, not played again

    suite = dataclasses.replace(suites.get("demo").subset(("reach-v3", "push-v3"), 3),
                                episode_limit=60)
    straight = evaluate_suite(PolicySpec("expert"), suite, str(tmp_path / "straight"),
                              progress=False)
    strip = [{k: v for k, v in e.items() if k != "wall_s"} for e in straight["episodes"]]
    assert [{k: v for k, v in e.items() if k != "wall_s"} for e in resumed["episodes"]] == \
        json.loads(json.dumps(strip))
    assert resumed["summary"] == json.loads(json.dumps(straight["summary"]))

    other = subprocess.run(_cli(workdir, "--split", "dev"), cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"error: {log_path} holds episodes of another evaluation (split: \"test\" there, "
        "\"dev\" now); use another --workdir or remove the file to start over"]
