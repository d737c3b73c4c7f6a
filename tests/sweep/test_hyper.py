"""Sweep grammar: product/zip semantics, stable trial names, validation before any trial runs."""

import os
import subprocess
import sys

import pytest

from experiments.pretrain import get_config
from wallwm_jax.sweep.hyper import (
    Hyper,
    SweepError,
    apply_overrides,
    load_sweep,
    trial_names,
    validate,
)

h = Hyper()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_product_varies_the_last_sweep_fastest_and_zip_pairs():
    trials = h.product([h.sweep("config.a", [1, 2]), h.sweep("config.b", ["x", "y", "z"])])
    assert trials == [{"config.a": a, "config.b": b} for a in (1, 2) for b in "xyz"]
    zipped = h.zip([h.sweep("config.a", [1, 2]), h.sweep("config.b", ["x", "y"])])
    assert zipped == [{"config.a": 1, "config.b": "x"}, {"config.a": 2, "config.b": "y"}]
    nested = h.product([zipped, h.sweep("config.seed", [0, 1])])
    assert len(nested) == 4 and nested[1] == {"config.a": 1, "config.b": "x", "config.seed": 1}
    assert h.product([h.fixed("config.a", 3), h.sweep("config.b", [1])]) == [
        {"config.a": 3, "config.b": 1}]
    assert h.product([]) == [{}]  # the single empty trial (no overrides)
    with pytest.raises(SweepError, match="equal length"):
        h.zip([h.sweep("config.a", [1, 2]), h.sweep("config.b", [1])])
    with pytest.raises(SweepError, match="set by two"):
        h.product([h.sweep("config.a", [1]), h.sweep("config.a", [2])])


def test_names_are_stable_short_unique_and_safe():
    trials = h.product([h.sweep("config.optimizer.learning_rate", [1e-3, 3e-4]),
                        h.sweep("config.seed", [0, 1])])
    names = trial_names(trials)
    assert names == ["learning_rate=0.001,seed=0", "learning_rate=0.001,seed=1",
                     "learning_rate=0.0003,seed=0", "learning_rate=0.0003,seed=1"]
    assert trial_names(list(trials)) == names  # same input, same names, every run
    assert trial_names(trials[2:]) == names[2:]  # a trial's name does not depend on the others
    # Two keys with the same leaf get their shortest unique suffix.
    clash = [{"config.model.dtype": "bfloat16", "config.data.dtype": "x"}]
    assert trial_names(clash) == ["model.dtype=bfloat16,data.dtype=x"]
    # None, tuples and characters unsafe in paths; very long names keep a stable hash.
    odd = trial_names([{"config.data.balance_alpha": None},
                       {"config.data.cameras": ("image", "image_gripper")},
                       {"config.init_from": "/ckpt dir/1"}])
    assert odd[:2] == ["balance_alpha=None", "cameras=image-image_gripper"]
    assert "/" not in odd[2] and " " not in odd[2] and "~" in odd[2]
    long = [{"config.init_from": "x" * 300}]
    assert len(trial_names(long)[0]) <= 96 and trial_names(long) == trial_names(long)
    with pytest.raises(SweepError, match="duplicate"):
        trial_names([{"config.seed": 0}, {"config.seed": 0}])


def test_validation_names_bad_key_and_bad_type():
    config = get_config("size=tiny,mode=event")
    validate(config, [{"config.data.balance_alpha": None}, {"config.data.balance_alpha": 1},
                      {"config.optimizer.name": "muon"}, {"seed": 3}])
    with pytest.raises(SweepError, match=r"'config.data.balance_alfa'.*config.data.balance_alpha"):
        validate(config, [{"config.seed": 0}, {"config.data.balance_alfa": 0.5}])
    with pytest.raises(SweepError, match=r"'x'.*config.total_steps.*int"):
        validate(config, [{"config.total_steps": "x"}])
    with pytest.raises(SweepError, match="total_steps"):
        validate(config, [{"config.total_steps": 2.5}])
    with pytest.raises(SweepError, match="seed"):
        validate(config, [{"config.seed": True}])
    with pytest.raises(SweepError, match="group of fields"):
        validate(config, [{"config.optimizer": "adamw"}])
    # A JSON list for a tuple field comes back as a tuple.
    apply_overrides(config, {"config.data.cameras": ["image"]})
    assert config.data.cameras == ("image",)


def _write(tmp_path, body):
    path = tmp_path / "sweep.py"
    path.write_text("from experiments.pretrain import get_config as base\n\n"
                    "def get_config(arg=None):\n    return base(arg)\n\n" + body)
    return str(path)


def test_load_sweep_reads_eval_and_rejects_empty(tmp_path):
    path = _write(tmp_path, "def get_sweep(h):\n    return h.sweep('config.seed', [0, 1])\n\n"
                  "def get_eval():\n    return 'demo'\n")
    sweep = load_sweep(path + ":size=tiny,mode=chunk")
    assert sweep.names == ["seed=0", "seed=1"] and sweep.eval == {"suites": "demo"}
    assert sweep.config.data.layout == "chunk" and sweep.spec.endswith(":size=tiny,mode=chunk")
    empty = _write(tmp_path, "def get_sweep(h):\n    return []\n")
    with pytest.raises(SweepError, match="empty sweep"):
        load_sweep(empty)


@pytest.mark.parametrize("body,message", [
    ("def get_sweep(h):\n    return h.sweep('config.data.balance_alfa', [0.0])\n",
     "'config.data.balance_alfa' is not in the config; did you mean config.data.balance_alpha"),
    ("def get_sweep(h):\n    return []\n", "empty sweep"),
    ("def get_sweep(h):\n    return h.sweep('config.optimizer.name', ['adamw', 'adam'])\n",
     "trial config.optimizer.name=adam: config.optimizer.name='adam': expected one of "
     "'adamw', 'muon'"),
])
def test_cli_user_errors_are_one_line_exit_2(tmp_path, body, message):
    path = _write(tmp_path, body)
    out = subprocess.run([sys.executable, "-m", "wallwm_jax.sweep", "--sweep", path,
                          "--workdir", str(tmp_path / "w")], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w" / "trials").exists()  # nothing started


def test_trial_configs_are_independent_and_match_the_trial_process(tmp_path):
    import dataclasses

    from wallwm_jax.sweep.runner import config_hash, prepare, trial_config
    from wallwm_jax.sweep.trial import build_config

    path = _write(tmp_path, "def get_sweep(h):\n    return h.sweep('config.data.image_size', "
                  "[32, 48])\n")
    # as the CLI does: --config.total_steps=7 applied to the base, then recorded per trial
    sweep = load_sweep(path, config=apply_overrides(get_config(), {"total_steps": 7}))
    first, second = (trial_config(sweep, t) for t in sweep.trials)
    assert (first.model.image_size, second.model.image_size) == (32, 48)  # references follow
    assert sweep.config.data.image_size == 64  # the base is untouched
    jobs = prepare(sweep, str(tmp_path / "w"), {"total_steps": 7}, [], {}, write=False)
    rebuilt = build_config(path, dataclasses.asdict(jobs[1]))
    assert rebuilt.total_steps == 7 and rebuilt.model.image_size == 48
    assert config_hash(rebuilt) == jobs[1].config_hash != jobs[0].config_hash


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(
    os.path.join(ROOT, "experiments", "sweeps")) if f.endswith(".py")))
def test_shipped_sweep_files_load_and_validate(name):
    """Every sweep in experiments/sweeps/ loads, validates against the config and evaluates on
    known suites (a typo in a shipped sweep fails here, not hours into a study)."""
    from wallwm_jax.evaluation.suites import names

    sweep = load_sweep(os.path.join(ROOT, "experiments", "sweeps", f"{name}.py"))
    assert len(set(sweep.names)) == len(sweep.trials) >= 2
    assert set(sweep.eval.get("suites", [])) <= set(names())


def test_task_study_reuses_the_event_vs_chunk_trials():
    """tasks.py promises that, in the same workdir, its trials are event_vs_chunk.py's event
    and chunk trials: same names and the same resolved configs (so the runner skips training)."""
    from wallwm_jax.sweep.runner import config_hash, trial_config

    def hashes(file):
        sweep = load_sweep(os.path.join(ROOT, "experiments", "sweeps", f"{file}:size=tiny"))
        return {n: config_hash(trial_config(sweep, t))
                for n, t in zip(sweep.names, sweep.trials, strict=True)}

    tasks, modes = hashes("tasks.py"), hashes("event_vs_chunk.py")
    assert len(tasks) == 6 and all(modes.get(name) == h for name, h in tasks.items())
    assert {n for n in modes if "mode=unified" in n} == set(modes) - set(tasks)
