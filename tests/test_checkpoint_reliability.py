"""Checkpoint reliability: SIGTERM and SIGKILL mid-run, restore onto another mesh, init_from
(checkpoint or export bundle), and the async-save blocking time in metrics.jsonl.

Every run uses total_steps=TOTAL (shorter runs use `stop_after`): long enough for a signal
sent after step 3 (or 4) to land mid-run (SIGTERM stops the loop at its next step; SIGKILL
has the async saves of steps 4 to 12 to land in), short enough that the runs and saves stay
cheap (each step a CLI run resumes costs ~0.3 CPU-s, each save more).
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
from wallwm_jax.bundle import is_export_bundle
from wallwm_jax.models import wallwm
from wallwm_jax.train import train_and_evaluate
from wallwm_jax.train_log import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 12
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
    """An uninterrupted TOTAL-step run (in-process), the reference for the tests below."""
    workdir = tmp_path_factory.mktemp("straight")
    summary = train_and_evaluate(_config(tiny_dataset), str(workdir))
    assert summary["first_step"] == 0 and summary["last_step"] == TOTAL
    return {"workdir": workdir, "params": summary["params"],
            "losses": _losses_by_step(workdir)}


@pytest.mark.xdist_group("ckpt_runs")  # one worker builds the module fixtures
def test_sigterm_saves_and_resume_equals_straight_run(tiny_dataset, straight, tmp_path):
    workdir, log = tmp_path / "run", tmp_path / "cli.log"
    proc = _start(_cli(workdir, tiny_dataset), log)
    try:
        _wait(lambda: _steps_logged(workdir) >= 3, proc, log)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        _stop(proc)
    assert rc == 3, open(log).read()[-3000:]  # cli.EXIT_PREEMPTED: schedulers requeue on it
    rows = read_metrics(str(workdir))
    stopped = rows[-1]["step"]
    assert 3 <= stopped < TOTAL, "SIGTERM landed after the run ended; nothing was tested"
    assert f"interrupted: saved checkpoint at step {stopped}" in open(log).read()
    assert _saved_steps(workdir / "checkpoints") == [stopped]
    # The save at the interrupted step is recorded (its duration is benchmarks/checkpoint.py's).
    assert np.isfinite(rows[-1]["checkpoint_blocking_s"])

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


@pytest.mark.xdist_group("ckpt_runs")  # one worker builds the module fixtures
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
    # The kill landed mid-save: the save's tmp dir is still there (a finished save renames it).
    assert _tmp_dirs(ckpt_dir), "the kill landed after the save had finished; nothing tested"
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
    assert all(isinstance(v, float) and np.isfinite(v) for v in blocking.values())
    config = _config(tiny_dataset)
    resumed = ckpt.restore_params(ckpt_dir, _host_abstract_params(config))
    _assert_params_equal(resumed, straight["params"])


@pytest.mark.xdist_group("ckpt_runs")  # one worker builds the module fixtures
def test_blocking_time_in_metrics(straight):
    rows = read_metrics(str(straight["workdir"]))
    with_save = [r for r in rows if "checkpoint_blocking_s" in r]
    assert [r["step"] for r in with_save] == [TOTAL]  # every_steps=1000: only the final save
    assert np.isfinite(with_save[0]["checkpoint_blocking_s"])


def test_save_of_replicated_arrays_compiles_no_programs(tmp_path):
    """A save copies small replicated arrays to host whole: no per-array slice program is
    traced or compiled while the loop waits (Orbax's replica-parallel default did one per
    array shape). Shapes no other test uses, so no in-process cache hides a compile."""
    import grain
    from jax.sharding import Mesh, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    params = {f"w{i}": jax.device_put(np.full((3, 37 + i), i, np.float32), replicated)
              for i in range(6)}
    state = {"step": jax.device_put(np.int32(7), replicated)}
    data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
    manager = ckpt.make_manager(str(tmp_path), _config("/unused").checkpoint)
    events = []

    def listener(event, duration, **kwargs):
        if event.startswith("/jax/core/compile/"):
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        assert ckpt.save(manager, 1, params, state, data_iter, {}, force=True)
        manager.wait_until_finished()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        manager.close()
    assert events == []
    restored = ckpt.restore_params(str(tmp_path), jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), params))
    _assert_params_equal(restored, params)


@pytest.mark.xdist_group("ckpt_runs")  # one worker builds the module fixtures
def test_restore_onto_other_mesh(two_steps, tmp_path):
    """`two_steps` saved on data=8 (params replicated over 8 devices); restore onto fsdp=4
    over 4 of them (params sharded) and keep training: step 3 continues like the run that
    never moved (the same checkpoint continued on the 8-device mesh)."""
    assert jax.device_count() == 8
    stayed_config = two_steps["config"]
    config = stayed_config.copy_and_resolve_references()
    config.mesh.data, config.mesh.fsdp = 1, 4
    devices = jax.devices()[:4]
    mesh = sharding.make_mesh(config.mesh, devices)
    axes = wallwm.param_logical_axes(config.model)
    shapes = jax.eval_shape(lambda: wallwm.init_params(config.model, jax.random.PRNGKey(0)))
    target = sharding.logical_to_sharding(axes, mesh, config.sharding_rules, shapes)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            shapes, target)
    restored = ckpt.restore_params(two_steps["ckpt_dir"], abstract, step=2)
    saved = ckpt.restore_params(two_steps["ckpt_dir"], _host_abstract_params(config), step=2)
    _assert_params_equal(restored, saved)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(restored)}
    assert any("fsdp" in s for s in specs), specs  # really sharded over fsdp now
    for x in jax.tree.leaves(restored):
        assert isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
        assert set(x.sharding.device_set) == set(devices)

    # Params, optimizer state and data iterator resume on the 4-device mesh; the run that
    # never moved continues the same checkpoint on the 8-device data mesh.
    moved_dir, stayed_dir = tmp_path / "moved", tmp_path / "stayed"
    for d in (moved_dir, stayed_dir):
        shutil.copytree(two_steps["workdir"], d)  # both resume from its latest step, 2
    stayed = train_and_evaluate(stayed_config, str(stayed_dir), stop_after=3)
    resumed = train_and_evaluate(config, str(moved_dir), stop_after=3, devices=devices)
    assert resumed["first_step"] == 2 and resumed["last_step"] == 3
    assert stayed["first_step"] == 2 and stayed["last_step"] == 3
    assert {d for x in jax.tree.leaves(resumed["params"]) for d in x.sharding.device_set} \
        == set(devices)
    # Step 3 continues like the run that stayed: the same batch (data iterator), step and
    # optimizer state. The two meshes reduce gradients in another float32 order (fsdp over 4
    # vs data over 8), so they agree to rounding, not bit for bit: the loss to 1e-6, and the
    # step's update as a whole to 1%. (Element-wise is not a fair test: Adam turns the
    # rounding noise of zero-gradient leaves, e.g. attention key biases, into lr-sized
    # steps.) A wrong batch or optimizer state would miss both by far.
    np.testing.assert_allclose(resumed["losses"], stayed["losses"], rtol=1e-6)

    def update(run):
        return np.concatenate([(np.asarray(a) - np.asarray(b)).ravel() for a, b in
                               zip(jax.tree.leaves(run["params"]), jax.tree.leaves(saved),
                                   strict=True)])

    moved, unmoved = update(resumed), update(stayed)
    assert np.linalg.norm(unmoved) > 0  # step 3 did update the params
    assert np.linalg.norm(moved - unmoved) <= 1e-2 * np.linalg.norm(unmoved)


@pytest.mark.xdist_group("ckpt_runs")  # one worker builds the module fixtures
def test_init_from_checkpoint_and_export_bundle(tiny_dataset, straight, tmp_path):
    """A fresh run from the reference run's params: step 0 and a fresh optimizer, so the
    first update (warmup LR schedule(0) == 0) leaves the params exactly the source's."""
    source_ckpt = str(straight["workdir"] / "checkpoints")
    bundle = export.export_from_checkpoint(source_ckpt, str(tmp_path / "bundle"))
    assert is_export_bundle(bundle) and not is_export_bundle(source_ckpt)
    for name, init_from in (("from_ckpt", source_ckpt), ("from_bundle", bundle)):
        config = _config(tiny_dataset)
        config.init_from = init_from
        run = train_and_evaluate(config, str(tmp_path / name), stop_after=1)
        assert run["first_step"] == 0 and run["last_step"] == 1, name
        _assert_params_equal(run["params"], straight["params"])
        assert _saved_steps(tmp_path / name / "checkpoints") == [1]
        # Not the source's loss at step 1 (that was random init): a trained model's.
        assert run["losses"][0] < straight["losses"][1], name


def test_loop_settings_share_one_traced_step():
    """Runs that differ only in where the weights start from or the data is read from,
    checkpointing, logging or evaluation run one program (the init_from and
    every-step-checkpoint runs here reuse the straight run's traced step); a model field is
    another program."""
    from jax.sharding import Mesh

    from wallwm_jax.train_step import program_key

    mesh = Mesh(np.array(jax.devices()), ("data",))
    base = _config("/data")
    loop = _config("/data", every_steps=1, async_save=False)
    loop.init_from, loop.log_every_steps, loop.eval_every_steps = "/runs/a/checkpoints", 7, 3
    loop.eval.num_batches += 1
    loop.data.data_dir = "/other_data"  # where batches come from, not their shapes
    assert program_key(loop, mesh, 8) == program_key(base, mesh, 8)
    other = _config("/data")
    other.model.depth += 1
    assert program_key(other, mesh, 8) != program_key(base, mesh, 8)


# ------------------------------------------------------------------ damaged finished steps
def _largest(step_dir, item):
    root = os.path.join(step_dir, item, "ocdbt.process_0")
    files = [os.path.join(r, n) for r, _, ns in os.walk(root) for n in ns]
    return max(files, key=os.path.getsize)


def _truncate(step_dir):
    path = _largest(step_dir, "params")
    os.truncate(path, os.path.getsize(path) // 2)
    return path


def _zero(step_dir, item="train_state"):
    """Zero the middle half of `item`'s largest file; its small files stay whole, so only
    decoding the arrays finds the damage."""
    path = _largest(step_dir, item)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 4)
        f.write(b"\0" * (size // 2))
    return path


def _drop_manifest(step_dir):
    path = os.path.join(step_dir, "params", "manifest.ocdbt")
    os.remove(path)
    return path


def _empty_iterator_state(step_dir):
    path = os.path.join(step_dir, "data_iter", "process_0-of-1.json")
    assert os.path.getsize(path) > 0
    open(path, "w").close()
    return path


DAMAGE = {"truncated_array_file": _truncate, "zeroed_bytes": _zero,
          "missing_manifest": _drop_manifest, "empty_iterator_state": _empty_iterator_state}


@pytest.fixture(scope="module")
def two_steps(tiny_dataset, tmp_path_factory):
    """A run stopped at step 2 with finished checkpoints at steps 1 and 2."""
    workdir = tmp_path_factory.mktemp("two_steps")
    config = _config(tiny_dataset, every_steps=1)
    train_and_evaluate(config, str(workdir), stop_after=2)
    ckpt_dir = str(workdir / "checkpoints")
    assert _saved_steps(ckpt_dir) == [1, 2]
    return {"workdir": workdir, "ckpt_dir": ckpt_dir, "config": config}


def _abstract_and_iterator(config):
    from wallwm_jax.data.pipeline import make_pipeline
    from wallwm_jax.train import STEP_CACHE
    from wallwm_jax.train_step import make_train_step

    # The process's step cache: each damage kind restores with the step traced once.
    fns = make_train_step(config, sharding.make_mesh(config.mesh), cache=STEP_CACHE)
    pipeline = make_pipeline(config.data, global_batch=config.batch_size, seed=config.seed)
    return fns, pipeline.iterator


@pytest.mark.xdist_group("ckpt_runs")  # one worker builds the module fixtures
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_latest_step_falls_back_to_previous(two_steps, tmp_path, kind, capsys):
    """Each kind of damage to the newest step: verify_step names the file, restore_latest
    sets the step aside as 2.corrupt (its damaged bytes kept) and restores step 1 exactly."""
    ckpt_dir = str(tmp_path / "checkpoints")
    shutil.copytree(two_steps["ckpt_dir"], ckpt_dir)
    damaged_file = DAMAGE[kind](os.path.join(ckpt_dir, "2"))
    kept_bytes = open(damaged_file, "rb").read() if os.path.exists(damaged_file) else None

    damage = ckpt.verify_step(ckpt_dir, 2)
    assert damage and damage[0].file == damaged_file, damage
    assert ckpt.verify_step(ckpt_dir, 1) == []

    config = two_steps["config"]
    fns, data_iter = _abstract_and_iterator(config)
    manager = ckpt.make_manager(ckpt_dir, config.checkpoint)
    try:
        step, params, _ = ckpt.restore_latest(manager, fns.abstract_params,
                                              fns.abstract_state, data_iter)
        assert manager.all_steps() == [1]
    finally:
        manager.close()
    assert step == 1
    warning = capsys.readouterr().out
    assert "checkpoint step 2 is damaged" in warning and damaged_file in warning
    assert sorted(os.listdir(ckpt_dir)) == ["1", "2.corrupt"]
    aside = damaged_file.replace(os.sep + "2" + os.sep, os.sep + "2.corrupt" + os.sep)
    if kept_bytes is not None:  # never deleted: the damaged file is there, byte for byte
        assert open(aside, "rb").read() == kept_bytes
    reference = ckpt.restore_params(two_steps["ckpt_dir"], fns.abstract_params, step=1)
    _assert_params_equal(params, reference)


@pytest.mark.xdist_group("ckpt_runs")  # one worker builds the module fixtures
def test_every_step_damaged_moves_nothing_and_names_the_files(two_steps, tmp_path):
    ckpt_dir = str(tmp_path / "checkpoints")
    shutil.copytree(two_steps["ckpt_dir"], ckpt_dir)
    files = [_truncate(os.path.join(ckpt_dir, "2")),
             _empty_iterator_state(os.path.join(ckpt_dir, "1"))]
    fns, data_iter = _abstract_and_iterator(two_steps["config"])
    manager = ckpt.make_manager(ckpt_dir, two_steps["config"].checkpoint)
    try:
        with pytest.raises(ckpt.DamagedCheckpointError) as err:
            ckpt.restore_latest(manager, fns.abstract_params, fns.abstract_state, data_iter)
    finally:
        manager.close()
    assert all(f in str(err.value) for f in files), str(err.value)
    assert sorted(os.listdir(ckpt_dir)) == ["1", "2"]
    # Reading the params of a damaged step (export, evaluation) names the file too.
    with pytest.raises(ckpt.DamagedCheckpointError, match=files[0]):
        ckpt.restore_params(ckpt_dir, fns.abstract_params, step=2)


@pytest.mark.xdist_group("ckpt_runs")  # one worker builds the module fixtures
def test_intact_step_of_another_model_is_not_set_aside(two_steps, tmp_path):
    """A restore that fails on an intact step (another model size) is the user's error:
    raised as is, nothing moved."""
    ckpt_dir = str(tmp_path / "checkpoints")
    shutil.copytree(two_steps["ckpt_dir"], ckpt_dir)
    config = two_steps["config"].copy_and_resolve_references()
    config.model.width = config.model.width * 2
    fns, data_iter = _abstract_and_iterator(config)
    manager = ckpt.make_manager(ckpt_dir, config.checkpoint)
    try:
        with pytest.raises(ValueError, match="shape") as err:
            ckpt.restore_latest(manager, fns.abstract_params, fns.abstract_state, data_iter)
    finally:
        manager.close()
    assert not isinstance(err.value, ckpt.DamagedCheckpointError)
    assert sorted(os.listdir(ckpt_dir)) == ["1", "2"]


@pytest.mark.xdist_group("ckpt_runs")  # one worker builds the module fixtures
def test_cli_resumes_past_a_damaged_step_like_the_straight_run(tiny_dataset, straight,
                                                               two_steps, tmp_path):
    """The training command itself: step 2 truncated, the rerun warns, resumes from step 1
    and ends with the uninterrupted run's params and losses, bit for bit."""
    workdir = tmp_path / "run"
    shutil.copytree(two_steps["workdir"], workdir)
    damaged = _truncate(str(workdir / "checkpoints" / "2"))
    done = subprocess.run(_cli(workdir, tiny_dataset), cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "checkpoint step 2 is damaged" in done.stdout and damaged in done.stdout
    assert "Resumed from checkpoint step 1" in done.stdout
    assert "2.corrupt" in os.listdir(workdir / "checkpoints")
    assert _losses_by_step(workdir) == straight["losses"]
    resumed = ckpt.restore_params(str(workdir / "checkpoints"),
                                  _host_abstract_params(two_steps["config"]))
    _assert_params_equal(resumed, straight["params"])
