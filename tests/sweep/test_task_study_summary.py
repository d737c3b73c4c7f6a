"""experiments/results/tasks/summarize.py: the task study's tables from trial results."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _summarize():
    path = os.path.join(ROOT, "experiments", "results", "tasks", "summarize.py")
    spec = importlib.util.spec_from_file_location("task_summary", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trial(root, mode, seed, outcomes):
    """A trial directory as the sweep leaves it: eval/mt50_heldout/results.json."""
    name = f"seed={seed},mode={mode},layout={mode},max_captions={int(mode == 'event')}"
    d = os.path.join(root, "trials", name, "eval", "mt50_heldout")
    os.makedirs(d)
    episodes = [{"task": task, "success": ok, "captions": captions}
                for task, ok, captions in outcomes]
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump({"episodes": episodes}, f)


def test_tables_count_each_seed_and_directory(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _trial(a, "event", 0, [("dial-turn-v3", True, ["reach", "turn"]),
                           ("lever-pull-v3", False, ["reach", "reach"]),
                           ("sweep-v3", False, ["reach", "push"])])
    _trial(a, "chunk", 0, [("dial-turn-v3", False, []), ("lever-pull-v3", False, []),
                           ("sweep-v3", False, [])])
    _trial(b, "event", 2, [("dial-turn-v3", True, ["reach", "turn"]),
                           ("lever-pull-v3", True, ["reach", "pull"]),
                           ("sweep-v3", False, ["reach"])])
    _trial(b, "chunk", 2, [("dial-turn-v3", False, []), ("lever-pull-v3", True, []),
                           ("sweep-v3", False, [])])
    _summarize().main([a, b])
    out = capsys.readouterr().out
    assert "| event | 33% | 67% | 50% ± 24" in out and "| 3/6 [" in out
    assert "| chunk | 0% | 33% |" in out and "| 1/6 [" in out
    assert "event - chunk by seed: seed 0 +33, seed 2 +33; mean +33.3 points" in out
    assert "seed 0: event failures 2, never past the first event 1" in out
    assert "seed 2: event failures 1, never past the first event 1" in out
    assert "| dial-turn | 2/2 | 0/2 |" in out and "| lever-pull | 1/2 | 1/2 |" in out
    assert "never succeeded (1): sweep" in out
