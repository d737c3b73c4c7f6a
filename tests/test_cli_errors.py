"""Bad input on the command line ends in one `error: ...` line and exit 2, never a traceback
(unless `--verbosity` asks for one), and the config is checked before data or devices."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, "-m", "wallwm_jax.train", "--config",
         "experiments/pretrain.py:size=tiny,mode=event"]


def _run(args, tmp_path):
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ))


def _assert_one_line_error(out, *words):
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    assert "Traceback" not in out.stderr + out.stdout
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("extra,words", [
    (["--config.data.data_dir=/no/such/dataset"],
     ["config.data.data_dir='/no/such/dataset' does not exist",
      "<data_dir>/<builder>/<config>/<version>"]),
    (["--config.totl_steps=3"],
     ["unknown config field 'totl_steps'", "did you mean 'total_steps'?"]),
    (["--config.optimizer.nme=muon"], ["unknown config field 'nme'", "did you mean 'name'?"]),
    (["--config.total_steps=many"], ["--config.total_steps=many", "invalid literal for int()"]),
    (["--no_such_flag=1"], ["Unknown command line flag 'no_such_flag'"]),
])
def test_train_flag_and_config_errors(tmp_path, extra, words):
    out = _run(TRAIN + ["--workdir", str(tmp_path / "run"), *extra], tmp_path)
    _assert_one_line_error(out, *words)
    assert not (tmp_path / "run").exists()


def test_workdir_that_is_a_file(tmp_path):
    workdir = tmp_path / "run"
    workdir.write_text("not a directory")
    out = _run(TRAIN + ["--workdir", str(workdir)], tmp_path)
    _assert_one_line_error(out, f"--workdir {workdir} is a file; expected a directory")
    assert workdir.read_text() == "not a directory"


def test_missing_config_file(tmp_path):
    out = _run([sys.executable, "-m", "wallwm_jax.train", "--config", "experiments/pretrian.py",
                "--workdir", str(tmp_path / "run")], tmp_path)
    line = _assert_one_line_error(out, "config file 'experiments/pretrian.py' does not exist")
    assert "config_config" not in line
    out = _run([sys.executable, "-m", "wallwm_jax.train", "--config",
                "experiments/pretrain.py:size=huge", "--workdir", str(tmp_path / "run")],
               tmp_path)
    _assert_one_line_error(out, "size='huge' is not one of")


def test_unknown_optimizer_fails_before_the_dataset_is_read(tiny_dataset, tmp_path):
    out = _run(TRAIN + ["--workdir", str(tmp_path / "run"),
                        f"--config.data.data_dir={tiny_dataset}",
                        "--config.optimizer.name=adam"], tmp_path)
    _assert_one_line_error(out, "config.optimizer.name='adam'", "'adamw', 'muon', 'optax_muon'")
    assert "balanced sampling" not in out.stdout  # the cluster report never loaded
    assert not (tmp_path / "run").exists()


def test_a_dataset_root_lists_the_datasets_below_it(tiny_dataset, tmp_path):
    root = os.path.dirname(os.path.dirname(tiny_dataset))  # <data_dir>/metaworld_events
    out = _run(TRAIN + ["--workdir", str(tmp_path / "run"), f"--config.data.data_dir={root}"],
               tmp_path)
    _assert_one_line_error(out, "holds no built dataset", f"datasets below it: {tiny_dataset}")


def test_truncated_shard_names_the_file(tiny_dataset, tmp_path):
    copy = str(tmp_path / "dataset")
    shutil.copytree(tiny_dataset, copy)
    shard = os.path.join(copy, "metaworld_events-train.array_record-00000-of-00001")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    out = _run([sys.executable, "-m", "wallwm_jax.data.inspect", copy, "--out",
                str(tmp_path / "pictures")], tmp_path)
    _assert_one_line_error(out, f"record file {shard} is damaged")


@pytest.mark.parametrize("args,words", [
    (["-m", "wallwm_jax.data.event_index"], ["expected 1 positional argument(s) DATASET_DIR"]),
    (["-m", "wallwm_jax.evaluation", "--suite", "demo"],
     ["missing required flag(s) --policy, --workdir"]),
    (["-m", "wallwm_jax.evaluation", "--policy", "expert", "--suite", "mt11",
      "--workdir", "unused"], ["mt11"]),
    (["-m", "data_builders.rlds_events", "--source", "x", "--data_dir", "y"],
     ["--gripper_index"]),
])
def test_other_commands(tmp_path, args, words):
    _assert_one_line_error(_run([sys.executable, *args], tmp_path), *words)


def test_verbosity_brings_the_traceback_back(tmp_path):
    out = _run(TRAIN + ["--workdir", str(tmp_path / "run"), "--config.totl_steps=3",
                        "--verbosity=1"], tmp_path)
    assert out.returncode != 0 and "Traceback" in out.stderr and "totl_steps" in out.stderr
    out = _run(TRAIN + ["--workdir", str(tmp_path / "run"),
                        "--config.data.data_dir=/no/such/dataset", "--verbosity=0"], tmp_path)
    assert out.returncode != 0 and "Traceback" in out.stderr
    assert "UserError: config.data.data_dir='/no/such/dataset' does not exist" in out.stderr
