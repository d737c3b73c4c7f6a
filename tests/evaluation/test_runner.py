"""Suite runs end to end: results files, 1-vs-N worker equality, pictures, the expert
comparison, the CLI's user errors, and closed-loop metrics logged during training."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from wallwm_jax.evaluation import suites
from wallwm_jax.evaluation.runner import EvaluationError, PolicySpec, evaluate_suite
from wallwm_jax.train_log import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dataclasses.replace(suites.get("demo").subset(("reach-v3", "push-v3"), 2),
                            episode_limit=10)


def _strip_timing(results):
    return [{k: v for k, v in ep.items() if k != "wall_s"} for ep in results["episodes"]]


def test_workers_give_the_same_results_as_one(trained_policies, tmp_path):
    spec = PolicySpec(trained_policies["event"].export)
    one = evaluate_suite(spec, SMALL, str(tmp_path / "one"), progress=False)
    two = evaluate_suite(spec, SMALL, str(tmp_path / "two"), workers=2, progress=False)
    assert _strip_timing(one) == _strip_timing(two)
    assert [(e["task"], e["episode"]) for e in one["episodes"]] == [
        ("reach-v3", 0), ("reach-v3", 1), ("push-v3", 0), ("push-v3", 1)]
    assert len({e["seed"] for e in one["episodes"]}) == 4
    assert one["summary"] == two["summary"]


def test_results_files_pictures_and_expert_column(trained_policies, tmp_path):
    suite = dataclasses.replace(SMALL.subset(("reach-v3",), 1), episode_limit=60)
    evaluate_suite(PolicySpec("expert"), suite, str(tmp_path / "expert"), progress=False)
    res = evaluate_suite(PolicySpec(trained_policies["event"].export), suite,
                         str(tmp_path / "policy"), videos=1, progress=False)
    saved = json.loads((tmp_path / "policy" / "results.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(res["summary"]))
    assert saved["mode"] == "event" and saved["planner"] == "oracle" and saved["privileged"]
    assert saved["privileged_inputs"] == ["phase"] and saved["split"] == "test"
    ep = saved["episodes"][0]
    assert set(ep) >= {"task", "group", "episode", "seed", "success", "steps", "captions",
                       "chunk_lengths"}
    pics = tmp_path / "policy" / "pictures"
    assert sorted(os.listdir(pics)) == ["reach-v3_ep0.gif", "reach-v3_ep0_strip.png",
                                        "reach-v3_ep0_world.png"]
    assert Image.open(pics / "reach-v3_ep0.gif").n_frames == ep["steps"] + 1
    md = (tmp_path / "policy" / "results.md").read_text()
    assert "planner `oracle` (reads privileged simulator state)" in md
    assert "| group | success [95% CI] (k/n) | expert |" in md
    assert "| reach-v3 | 0% [0%–79%] (0/1) | 100% [21%–100%] (1/1) |" in md


def _cli(*args):
    out = subprocess.run([sys.executable, "-m", "wallwm_jax.evaluation", *args],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    return out.returncode, out.stdout, out.stderr


def test_policy_must_read_what_the_suite_provides(trained_policies):
    from wallwm_jax.evaluation.runner import EvaluationError, check_actor
    from wallwm_jax.policy import load_policy

    policy = load_policy(trained_policies["event"].export)
    check_actor(policy, SMALL)
    with pytest.raises(EvaluationError, match="reads a 4-D state; suite 'demo' provides 39-D"):
        check_actor(policy, dataclasses.replace(SMALL, state_dims=39))
    policy.cameras = ("image", "image_wrist")
    with pytest.raises(EvaluationError, match="reads cameras \\['image', 'image_wrist'\\]"):
        check_actor(policy, SMALL)


def test_cli_user_errors_are_one_line(trained_policies, tmp_path):
    export = trained_policies["event"].export
    rc, _, err = _cli("--policy", export, "--suite", "mt11", "--workdir", str(tmp_path))
    assert rc == 2 and "Traceback" not in err
    assert "unknown suite 'mt11'; valid suites: mt10_seen" in err
    rc, _, err = _cli("--policy", export, "--suite", "demo", "--tasks", "door-open-v3",
                      "--workdir", str(tmp_path))
    assert rc == 2 and "its tasks: reach-v3, push-v3, button-press-topdown-v3" in err
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    os.remove(broken / "tokenizer.model")
    rc, _, err = _cli("--policy", str(broken), "--suite", "demo", "--workdir", str(tmp_path))
    assert rc == 2 and "is missing tokenizer.model" in err and "Traceback" not in err
    rc, _, err = _cli("--policy", export, "--suite", "demo", "--mode", "unified",
                      "--workdir", str(tmp_path))
    assert rc == 2 and "trained in event mode and can run event" in err


def test_cli_on_a_checkpoint_directory(trained_policies, tmp_path):
    run = trained_policies["unified"].run
    rc, out, err = _cli("--policy", os.path.join(run, "checkpoints"), "--step", "3",
                        "--suite", "mt10_paraphrase", "--tasks", "drawer-open-v3",
                        "--episodes_per_task", "1", "--episode_limit", "8",
                        "--workdir", str(tmp_path / "ev"))
    assert rc == 0, err[-2000:]
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["mode"] == "unified" and results["planner"] is None
    assert results["privileged"] is False and results["step"] == 3
    assert results["privileged_inputs"] == [] and results["split"] == "test"  # the default
    assert [e["seed"] for e in results["episodes"]] == suites.scene_seeds(
        "mt10_paraphrase", "drawer-open-v3", "test", 1)
    assert results["protocol"]["wording"] == "heldout"
    assert results["wording_source"].endswith("paraphrases.json")  # recorded with the data
    assert results["episodes"][0]["steps"] == 8 and "error" not in results["episodes"][0]
    assert "overall 0.0% (0/1)" in out
    # Its own captions, scored against the scripted phase per replan and in the summary.
    replans = results["episodes"][0]["replans"]
    assert replans and not replans[0]["given"] and replans[0]["phase"] is not None
    assert results["caption_scores"]["caption_n"] == sum(1 for r in replans if r["scored"])


def test_unified_with_oracle_captions_is_a_privileged_control(trained_policies, tmp_path):
    """--planner with a unified policy: the planner's caption is caption 0 at every replan
    (so it scores exact against the phase), and the run is marked as reading the phase; a
    chunk policy refuses a planner."""
    suite = dataclasses.replace(suites.get("demo").subset(("push-v3",), 1), episode_limit=8)
    spec = PolicySpec(trained_policies["unified"].export, planner="oracle")
    results = evaluate_suite(spec, suite, str(tmp_path / "u"), progress=False)
    assert results["mode"] == "unified" and results["planner"] == "oracle"
    assert results["privileged"] and results["privileged_inputs"] == ["phase"]
    replans = results["episodes"][0]["replans"]
    assert replans and all(r["given"] for r in replans)
    assert results["caption_scores"]["caption_exact"] == 1.0
    assert "planner `oracle` (reads privileged" in (tmp_path / "u" / "results.md").read_text()
    with pytest.raises(EvaluationError, match="applies to event and unified mode"):
        evaluate_suite(PolicySpec(trained_policies["chunk"].export, planner="blank"), suite,
                       str(tmp_path / "c"), progress=False)


def test_split_flag_picks_the_scenes_the_evaluator_runs(tmp_path):
    """--split reaches the environments: the per-episode seeds are scene_seeds' for that
    split, and results.json/results.md say which split and what the expert read."""
    rc, out, err = _cli("--policy", "expert", "--suite", "demo", "--split", "dev",
                        "--tasks", "reach-v3,push-v3", "--episodes_per_task", "2",
                        "--episode_limit", "3", "--workdir", str(tmp_path / "dev"))
    assert rc == 0, err[-2000:]
    results = json.loads((tmp_path / "dev" / "results.json").read_text())
    assert results["split"] == "dev" and results["privileged_inputs"] == ["simulator"]
    for task in ("reach-v3", "push-v3"):
        seeds = [e["seed"] for e in results["episodes"] if e["task"] == task]
        assert seeds == suites.scene_seeds("demo", task, "dev", 2)
        assert not set(seeds) & set(suites.scene_seeds("demo", task, "test", 2))
    md = (tmp_path / "dev" / "results.md").read_text()
    assert "- scenes: the suite's **dev** split" in md
    assert "- privileged inputs: the whole simulator state (the scripted expert)" in md
    rc, _, err = _cli("--policy", "expert", "--suite", "demo", "--split", "val",
                      "--workdir", str(tmp_path / "val"))
    assert rc == 2 and err.strip().splitlines()[-1] == (
        "error: flag --split=val: value should be one of <dev|test>")


def test_training_logs_closed_loop_success(trained_policies):
    run = trained_policies["event"].run
    rows = [r for r in read_metrics(run) if "closed_loop/demo/overall" in r]
    assert [r["step"] for r in rows] == [3]
    assert rows[0]["closed_loop/demo/task/reach-v3"] == rows[0]["closed_loop/demo/overall"]
    assert "closed_loop/demo/group/demo" in rows[0]
    assert os.path.isfile(os.path.join(run, "closed_loop", "step_3", "results.json"))
    saved = json.loads(open(os.path.join(run, "closed_loop", "step_3", "results.json")).read())
    assert saved["split"] == "dev"  # watched during training: tuning scenes, never test
    assert [e["seed"] for e in saved["episodes"]] == suites.scene_seeds("demo", "reach-v3",
                                                                        "dev", 1)


def test_siblings_that_are_not_results_never_lose_the_episodes(trained_policies, tmp_path,
                                                               capsys):
    """Sibling results.json files that are a list, not JSON, or an expert's with another
    shape: the episodes are written (results.json, results.md without the expert column),
    the comparison that failed is a warning, and no tmp file is left."""
    suite = dataclasses.replace(SMALL.subset(("reach-v3",), 1), episode_limit=5)
    for name, text in (("a_list", "[1, 2]"), ("b_text", "not json {"),
                       ("c_expert", json.dumps({"mode": "expert", "suite": "demo",
                                                "split": "test", "summary": {"groups": {}}}))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    workdir = tmp_path / "policy"
    res = evaluate_suite(PolicySpec(trained_policies["event"].export), suite, str(workdir),
                         progress=False)
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(res["summary"]))
    assert [(e["task"], e["steps"]) for e in saved["episodes"]] == [("reach-v3", 5)]
    md = (workdir / "results.md").read_text()
    assert "| group | success [95% CI] (k/n) |\n" in md and "(k/n) | expert |" not in md
    err = capsys.readouterr().err
    assert "warning: results written without the expert comparison: KeyError: 'overall'" \
        in err
    assert sorted(os.listdir(workdir)) == ["episodes.jsonl", "results.json", "results.md"]

    # Without the broken expert file, the list and the text are passed over quietly.
    shutil.rmtree(tmp_path / "c_expert")
    evaluate_suite(PolicySpec(trained_policies["event"].export), suite, str(workdir),
                   progress=False)
    assert "warning" not in capsys.readouterr().err
    assert sorted(os.listdir(workdir)) == ["episodes.jsonl", "results.json", "results.md"]
