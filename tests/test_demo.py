"""End-to-end: the demo at its smallest settings (event policy, privileged simulator state),
stopped by SIGTERM while it trains (exit 3, a checkpoint, nothing after training started) and
resumed to the end of every stage by the same command. The chunk baseline's arm (trained the
same way in another mode) is checked on the shared trained policies, which saves the suite a
second training and evaluation here."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from wallwm_jax.evaluation.suites import scene_seeds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(workdir, steps, chunk_baseline=False):
    return [sys.executable, "-m", "wallwm_jax.demo", "--workdir", str(workdir),
            "--tasks", "reach-v3", "--episodes_per_task", "3", "--steps", str(steps),
            "--batch_size", "8", "--eval_episodes", "1", "--eval_max_steps", str(EVAL_MAX_STEPS),
            "--image_size", "32", "--build_workers", "1", "--eval_workers", "1",
            "--chunk_baseline" if chunk_baseline else "--nochunk_baseline"]


STEPS = 12  # SIGTERM lands once step 4 is logged, the loop stops at the next step
# Closed-loop step limit: the expert reaches the goal of the demo suite's first reach-v3 test
# scene in 38 steps; an episode that fails (the 12-step policy, usually) runs to the limit.
EVAL_MAX_STEPS = 60
# The demo itself runs on one CPU device; compiled at -O0 like the rest of the tests.
ENV = dict(os.environ, XLA_FLAGS=os.environ["WALLWM_TEST_XLA_FLAGS"])


def _run_demo(workdir, steps=4, chunk_baseline=False):
    out = subprocess.run(_cmd(workdir, steps, chunk_baseline), capture_output=True, text=True,
                         cwd=REPO, timeout=900, env=ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _last_step(workdir):
    path = os.path.join(workdir, "run", "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.endswith("\n")]
    return max((r["step"] for r in rows), default=0)


def test_demo_end_to_end_sigterm_and_resume(tmp_path):
    # The demo stopped by SIGTERM while the event policy trains: exit 3, a checkpoint at the
    # step it reached, and no later stage started (no export, no summary).
    log = open(tmp_path / "sigterm.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(_cmd(tmp_path, STEPS), cwd=REPO, env=ENV,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while _last_step(tmp_path) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.seek(0)
    output = log.read()
    log.close()
    stopped = _last_step(tmp_path)
    assert rc == 3, output[-3000:]  # cli.EXIT_PREEMPTED: resume later
    assert 4 <= stopped < STEPS, f"SIGTERM did not land during training (step {stopped})"
    assert f"interrupted during pretraining at step {stopped}" in output, output[-3000:]
    assert "To resume, run the same command again: python -m wallwm_jax.demo --workdir " \
        f"{tmp_path} --tasks reach-v3" in output
    assert "[3/5]" not in output and "Traceback" not in output
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "export").exists()
    assert str(stopped) in os.listdir(tmp_path / "run" / "checkpoints")

    # The same command again resumes from that step and runs every stage to the end: offline
    # evaluation, export, the fresh-process check and the closed-loop evaluation.
    stdout = _run_demo(tmp_path, steps=STEPS)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["train_steps"] == f"{stopped} -> {STEPS} (resumed)"
    assert summary["chunk_baseline"] == "off"
    assert "privileged simulator state" in summary["state"]
    assert "[5/5] closed-loop evaluation" in stdout  # five stages without the baseline
    assert set(summary["closed_loop"]) == {"reach-v3"}
    row = summary["closed_loop"]["reach-v3"]
    assert row["expert_success"] == 1.0
    for who in ("policy", "expert"):
        # The table's rate is the per-episode records' (one episode asked for), and each
        # record is consistent: a failure ran to the step limit, a success stopped there.
        episodes = json.loads((tmp_path / "eval" / who / "results.json").read_text())["episodes"]
        assert [e["task"] for e in episodes] == ["reach-v3"] and row[f"{who}_n"] == 1, who
        assert row[f"{who}_successes"] == sum(e["success"] for e in episodes), who
        assert row[f"{who}_success"] == row[f"{who}_successes"] / len(episodes), who
        for e in episodes:
            assert "error" not in e, e["error"]
            assert e["steps"] == EVAL_MAX_STEPS if not e["success"] else \
                1 <= e["steps"] <= EVAL_MAX_STEPS, e
    policy_eval = json.loads((tmp_path / "eval" / "policy" / "results.json").read_text())
    assert policy_eval["mode"] == "event" and policy_eval["privileged_state"] is True
    # Reported figures: the demo suite's test scenes, and what each arm read is said.
    assert summary["eval_split"] == "test" and policy_eval["split"] == "test"
    assert [e["seed"] for e in policy_eval["episodes"]] == scene_seeds("demo", "reach-v3",
                                                                       "test", 1)
    assert summary["privileged_inputs"] == {"expert": ["simulator"],
                                            "policy": ["phase", "object_goal_state"]}
    assert ("Closed loop on the demo suite's `test` scenes. Privileged inputs, per arm: "
            "expert: the whole simulator state (the scripted expert); event policy: the "
            "scripted expert's phase (oracle planner) + object and goal positions in the state "
            "vector.") in stdout
    assert "| task | policy success (event) | expert success | event steps | expert steps |" \
        in stdout
    assert os.path.isdir(summary["export_dir"]) and os.path.isdir(summary["checkpoint_dir"])
    assert summary["fresh_process_chunk"].startswith("shape [")
    assert "| reach-v3 |" in stdout


def test_chunk_baseline_arm_of_the_closed_loop_table(trained_policies, tmp_path):
    """The demo's closed-loop stage with a chunk baseline (what `--chunk_baseline` adds after
    training it like the event policy): three arms on the same test scenes, each arm's
    privileged inputs said, the table's rates the per-episode records'."""
    from wallwm_jax import demo

    table, privileged = demo.closed_loop_eval(
        trained_policies["event"].export, str(tmp_path), ("reach-v3",), 1, 10,
        chunk_export=trained_policies["chunk"].export)
    assert privileged == {"expert": ["simulator"], "policy": ["phase"], "chunk": []}
    row = table["reach-v3"]
    for who in ("policy", "chunk", "expert"):
        results = json.loads((tmp_path / "eval" / who / "results.json").read_text())
        episodes = results["episodes"]
        assert results["split"] == "test" and row[f"{who}_n"] == 1, who
        assert [e["seed"] for e in episodes] == scene_seeds("demo", "reach-v3", "test", 1)
        assert row[f"{who}_successes"] == sum(e["success"] for e in episodes), who
        assert row[f"{who}_steps"] == episodes[0]["steps"], who
    chunk = json.loads((tmp_path / "eval" / "chunk" / "results.json").read_text())
    assert chunk["mode"] == "chunk"
    text = demo.closed_loop_table(table)
    assert text.startswith("| task | policy success (event) | chunk success | expert success "
                           "| event steps | chunk steps | expert steps |"), text


@pytest.mark.parametrize("flag,want", [
    ("--size=huge", "error: --size='huge': config arg size='huge' is not one of "),
    ("--steps=-5", "error: --steps=-5: expected an integer >= 1"),
    ("--learning_rate=nan", "error: --learning_rate=nan: expected a finite number > 0"),
    ("--tasks=reach-v3,fly-v3", "error: --tasks=reach-v3,fly-v3: unknown MetaWorld task(s) "
                                "['fly-v3']"),
    ("--image_size=4", "error: --image_size=4: expected at least the patch size of --size=tiny"),
    ("--eval_workers=0", "error: --eval_workers=0: expected an integer >= 1"),
], ids=["size", "steps", "learning_rate", "tasks", "image_size", "eval_workers"])
def test_a_bad_flag_is_one_line_before_any_data(tmp_path, flag, want):
    # Every flag is checked before the dataset is built (which takes minutes to get to).
    out = subprocess.run([sys.executable, "-m", "wallwm_jax.demo", "--workdir", str(tmp_path),
                          flag], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env=ENV)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith(want), out.stderr
    assert out.stdout == "" and os.listdir(tmp_path) == []  # no dataset, nothing written


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    out = subprocess.run([sys.executable, "-m", "wallwm_jax.demo", "--workdir", str(path)],
                         capture_output=True, text=True, cwd=REPO, timeout=300, env=ENV)
    assert out.returncode == 2
    assert out.stderr == f"error: --workdir='{path}' is a file; expected a directory (made if " \
                         f"missing)\n"
