"""Checkpoint reliability: SIGTERM and SIGKILL mid-run, restore onto another mesh, init_from
(checkpoint or export bundle), and the async-save blocking time in metrics.jsonl.

Every run uses total_steps=40 (shorter runs use `stop_after`), so all share one compiled
update step (the LR schedule is baked into it) through the persistent compile cache.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, SingleDeviceSharding

from wallwm_jax import checkpoint as ckpt
from wallwm_jax import export, sharding
from wallwm_jax.models import wallwm
from wallwm_jax.train import train_and_evaluate
from wallwm_jax.train_log import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 40
TMP_SUFFIX = ckpt.TMP_DIR_SUFFIX


def _config(data_dir, **checkpoint):
    """Exactly what the CLI flags in `_cli` produce."""
    from experiments.pretrain import get_config

    config = get_config("size=tiny,mode=event")
    config.data.data_dir = data_dir
    config.data.image_size = 32
    config.batch_size = 8
    config.total_steps = TOTAL
    config.log_every_steps = 1
    config.checkpoint.every_steps = 1000
    config.checkpoint.update(checkpoint)
    return config


def _cli(workdir, data_dir, every_steps=1000):
    return [sys.executable, "-m", "wallwm_jax.train",
            "--config", "experiments/pretrain.py:size=tiny,mode=event",
            "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
            "--config.data.image_size=32", "--config.batch_size=8",
            f"--config.total_steps={TOTAL}", f"--config.checkpoint.every_steps={every_steps}",
            "--config.log_every_steps=1"]


def _start(cmd, log_path):
    log = open(log_path, "ab")  # noqa: SIM115  (closed by _stop)
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=log,
                            stderr=subprocess.STDOUT)
    proc.log_file = log
    return proc


def _stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)
    proc.log_file.close()


def _steps_logged(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for line in f if line.endswith("\n"))


def _tmp_dirs(ckpt_dir):
    if not os.path.isdir(ckpt_dir):
        return []
    return [d for d in os.listdir(ckpt_dir) if TMP_SUFFIX in d]


def _wait(pred, proc, log_path, timeout=180.0, poll=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) too early:\n"
                                 + open(log_path).read()[-3000:])
        time.sleep(poll)
    raise AssertionError("timed out waiting for the run:\n" + open(log_path).read()[-3000:])


def _losses_by_step(workdir):
    """Step -> loss; a step logged twice (re-run after a kill) must have the same loss."""
    out = {}
    for row in read_metrics(str(workdir)):
        if "loss" in row:
            assert out.setdefault(row["step"], row["loss"]) == row["loss"], row["step"]
    return out


def _saved_steps(ckpt_dir):
    return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def _host_abstract_params(config):
    dev = SingleDeviceSharding(jax.devices()[0])
    shapes = jax.eval_shape(lambda: wallwm.init_params(config.model, jax.random.PRNGKey(0)))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), shapes)


def _assert_params_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                      err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def straight(tiny_dataset, tmp_path_factory):
    """An uninterrupted 40-step run (in-process), the reference for the tests below."""
    workdir = tmp_path_factory.mktemp("straight")
    summary = train_and_evaluate(_config(tiny_dataset), str(workdir))
    assert summary["first_step"] == 0 and summary["last_step"] == TOTAL
    return {"workdir": workdir, "params": summary["params"],
            "losses": _losses_by_step(workdir)}


def test_sigterm_saves_and_resume_equals_straight_run(tiny_dataset, straight, tmp_path):
    workdir, log = tmp_path / "run", tmp_path / "cli.log"
    proc = _start(_cli(workdir, tiny_dataset), log)
    try:
        _wait(lambda: _steps_logged(workdir) >= 3, proc, log)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        _stop(proc)
    assert rc == 0, open(log).read()[-3000:]
    rows = read_metrics(str(workdir))
    stopped = rows[-1]["step"]
    assert 3 <= stopped < TOTAL, "SIGTERM landed after the run ended; nothing was tested"
    assert f"interrupted: saved checkpoint at step {stopped}" in open(log).read()
    assert _saved_steps(workdir / "checkpoints") == [stopped]
    assert rows[-1]["checkpoint_blocking_s"] >= 0  # the save at the interrupted step

    done = subprocess.run(_cli(workdir, tiny_dataset), cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Resumed from checkpoint step {stopped}" in done.stdout
    # Quiet by default: our own progress lines, no absl/Orbax/JAX INFO (was ~270 lines).
    output = done.stdout + done.stderr
    lines = [ln for ln in re.split(r"[\r\n]", output)  # the progress bar redraws with \r
             if ln.strip() and not ln.startswith("train:")]
    assert not any(re.match(r"[IW]\d{4} ", ln) for ln in lines), lines
    assert "Unable to initialize backend" not in output and len(lines) <= 6, lines

    assert _losses_by_step(workdir) == straight["losses"]
    config = _config(tiny_dataset)
    resumed = ckpt.restore_params(str(workdir / "checkpoints"), _host_abstract_params(config))
    _assert_params_equal(resumed, straight["params"])


def test_sigkill_during_async_save_resumes_from_last_finished(tiny_dataset, straight,
                                                              tmp_path):
    """Kill -9 as soon as an async save's tmp dir appears (checkpoint every 2 steps); then
    also plant a truncated copy of a finished step under a tmp name (a save that died
    half-way, deterministically). The resume must use the last finished step, delete the
    tmp dirs and reproduce the uninterrupted run."""
    workdir, log = tmp_path / "run", tmp_path / "cli.log"
    ckpt_dir = str(workdir / "checkpoints")
    proc = _start(_cli(workdir, tiny_dataset, every_steps=2), log)
    try:
        _wait(lambda: _steps_logged(workdir) >= 4 and _tmp_dirs(ckpt_dir), proc, log,
              poll=0.0005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == -signal.SIGKILL
    finished = _saved_steps(ckpt_dir)
    assert finished and finished[-1] < TOTAL
    print(f"after SIGKILL: finished steps {finished}, tmp dirs {_tmp_dirs(ckpt_dir)}")

    # A save that died half-way: the next step's files, truncated, under a tmp name.
    last = finished[-1]
    planted = os.path.join(ckpt_dir, f"{last + 2}{TMP_SUFFIX}-{time.time_ns() // 1000}")
    shutil.copytree(os.path.join(ckpt_dir, str(last)), planted)
    for root, _, files in os.walk(planted):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(os.path.getsize(f.name) // 2)

    done = subprocess.run(_cli(workdir, tiny_dataset, every_steps=2), cwd=REPO,
                          env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Resumed from checkpoint step {last}" in done.stdout
    assert _tmp_dirs(ckpt_dir) == []
    assert _saved_steps(ckpt_dir)[-1] == TOTAL

    assert _losses_by_step(workdir) == straight["losses"]
    rows = [r for r in read_metrics(str(workdir)) if r["step"] > last]
    blocking = {r["step"]: r["checkpoint_blocking_s"] for r in rows
                if "checkpoint_blocking_s" in r}
    assert sorted(blocking) == list(range(last + 2, TOTAL + 1, 2))
    assert all(v >= 0 for v in blocking.values())
    config = _config(tiny_dataset)
    resumed = ckpt.restore_params(ckpt_dir, _host_abstract_params(config))
    _assert_params_equal(resumed, straight["params"])


def test_blocking_time_in_metrics(straight):
    rows = read_metrics(str(straight["workdir"]))
    with_save = [r for r in rows if "checkpoint_blocking_s" in r]
    assert [r["step"] for r in with_save] == [TOTAL]  # every_steps=1000: only the final save
    assert with_save[0]["checkpoint_blocking_s"] >= 0


def test_restore_onto_other_mesh(tiny_dataset, tmp_path):
    """Save on data=1,fsdp=8 (8 devices); restore and keep training on data=4,fsdp=1."""
    assert jax.device_count() == 8
    config = _config(tiny_dataset)
    config.mesh.data, config.mesh.fsdp = 1, 8
    saved = train_and_evaluate(config, str(tmp_path), stop_after=2)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(saved["params"])}
    assert any("fsdp" in s for s in specs), specs  # really sharded over fsdp

    config.mesh.data, config.mesh.fsdp = -1, 1
    devices = jax.devices()[:4]
    mesh = sharding.make_mesh(config.mesh, devices)
    axes = wallwm.param_logical_axes(config.model)
    shapes = jax.eval_shape(lambda: wallwm.init_params(config.model, jax.random.PRNGKey(0)))
    target = sharding.logical_to_sharding(axes, mesh, config.sharding_rules, shapes)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            shapes, target)
    restored = ckpt.restore_params(str(tmp_path / "checkpoints"), abstract)
    _assert_params_equal(restored, saved["params"])
    for x in jax.tree.leaves(restored):
        assert isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
        assert set(x.sharding.device_set) == set(devices)

    # Params, optimizer state and data iterator resume on the 4-device mesh.
    resumed = train_and_evaluate(config, str(tmp_path), stop_after=3, devices=devices)
    assert resumed["first_step"] == 2 and resumed["last_step"] == 3
    assert np.isfinite(resumed["losses"]).all()
    assert {d for x in jax.tree.leaves(resumed["params"]) for d in x.sharding.device_set} \
        == set(devices)


def test_init_from_checkpoint_and_export_bundle(tiny_dataset, straight, tmp_path):
    """A fresh run from the reference run's params: step 0 and a fresh optimizer, so the
    first update (warmup LR schedule(0) == 0) leaves the params exactly the source's."""
    source_ckpt = str(straight["workdir"] / "checkpoints")
    bundle = export.export_from_checkpoint(source_ckpt, str(tmp_path / "bundle"))
    assert ckpt.is_export_bundle(bundle) and not ckpt.is_export_bundle(source_ckpt)
    for name, init_from in (("from_ckpt", source_ckpt), ("from_bundle", bundle)):
        config = _config(tiny_dataset)
        config.init_from = init_from
        run = train_and_evaluate(config, str(tmp_path / name), stop_after=1)
        assert run["first_step"] == 0 and run["last_step"] == 1, name
        _assert_params_equal(run["params"], straight["params"])
        assert _saved_steps(tmp_path / name / "checkpoints") == [1]
        # Not the source's loss at step 1 (that was random init): a trained model's.
        assert run["losses"][0] < straight["losses"][1], name
