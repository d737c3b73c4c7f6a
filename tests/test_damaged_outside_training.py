"""A damaged checkpoint step read outside training (`export`, `evaluation`): one `error:` line
naming the damaged file and the intact steps, for every kind of damage training recognises,
and no traceback after it; a step that is not there lists the steps that are.

Real damage on a real checkpoint: the session's tiny chunk-mode run (step 3) continued to
step 4 in-process, copied and damaged once per kind.
"""

import contextlib
import os
import shutil
import subprocess
import sys

import pytest

from tests.test_checkpoint_reliability import (
    _drop_manifest,
    _empty_iterator_state,
    _truncate,
    _zero,
)
from wallwm_jax import checkpoint as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _zero_params(step_dir):
    return _zero(step_dir, "params")


def _missing_asset(step_dir):
    path = os.path.join(step_dir, "assets", "norm_stats.json")
    os.remove(path)
    return path


def _missing_item(step_dir):
    path = os.path.join(step_dir, "train_state")
    shutil.rmtree(path)
    return path


def _unreadable_manifest(step_dir):
    path = os.path.join(step_dir, "params", "manifest.ocdbt")
    os.chmod(path, 0)
    return path


# Every kind of damage `verify_step` recognises, as a reader of params finds it: zeroed bytes
# in the params (a reader of params alone never decodes the optimizer state).
KINDS = {"truncated_array_file": _truncate, "zeroed_params": _zero_params,
         "missing_manifest": _drop_manifest, "empty_iterator_state": _empty_iterator_state,
         "missing_asset": _missing_asset, "missing_item": _missing_item,
         "permission_denied": _unreadable_manifest}
# The evaluator reads the step as export does: its three distinct paths (small files, a
# restore that fails to decode, a file it may not read) are enough to run through it too.
EVALUATED = ("missing_manifest", "zeroed_params", "permission_denied")


# One worker runs the module: its two_steps fixture trains one more step once.
pytestmark = pytest.mark.xdist_group("damaged_outside")

@pytest.fixture(scope="module")
def two_steps(trained_policies, tmp_path_factory):
    """The chunk run's checkpoint dir with finished steps 3 and 4 (one more step, resumed)."""
    from wallwm_jax.train import train_and_evaluate

    trained = trained_policies["chunk"]
    workdir = tmp_path_factory.mktemp("two_steps") / "run"
    shutil.copytree(trained.run, workdir)
    config = trained.config.copy_and_resolve_references()
    config.total_steps = 4
    assert train_and_evaluate(config, str(workdir))["last_step"] == 4
    ckpt_dir = str(workdir / "checkpoints")
    assert ckpt.finished_steps(ckpt_dir) == [3, 4]
    return ckpt_dir


def _run(args, unreadable=False):
    prefix = []
    if unreadable and os.geteuid() == 0:  # root reads anything: drop the capabilities that allow it
        assert shutil.which("setpriv"), "setpriv (util-linux) is needed to test as root"
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]
    return subprocess.run(prefix + [sys.executable, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env=dict(os.environ))


def _one_error_line(out):
    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-5000:]
    assert "Traceback" not in out.stdout + out.stderr
    return lines[0]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_damaged_latest_step_is_one_line(two_steps, tmp_path, kind):
    ckpt_dir = str(tmp_path / "checkpoints")
    shutil.copytree(two_steps, ckpt_dir)
    damaged = KINDS[kind](os.path.join(ckpt_dir, "4"))
    denied = kind == "permission_denied"
    commands = [["-m", "wallwm_jax.export", "--checkpoint_dir", ckpt_dir,
                 "--out", str(tmp_path / "export")]]
    if kind in EVALUATED:
        commands.append(["-m", "wallwm_jax.evaluation", "--policy", ckpt_dir, "--suite", "demo",
                         "--tasks", "reach-v3", "--episodes_per_task", "1",
                         "--workdir", str(tmp_path / "eval")])
    for args in commands:
        line = _one_error_line(_run(args, unreadable=denied))
        assert line.startswith(f"error: checkpoint step 4 in {ckpt_dir} "
                               + ("cannot be read: " if denied else "is damaged: ")
                               + f"{damaged}: "), line
        assert line.endswith("; intact steps: [3]"), line
        if denied:  # not "missing": the file is there
            assert line.endswith(f"{damaged}: permission denied; intact steps: [3]"), line
    assert not (tmp_path / "export").exists() and not (tmp_path / "eval" / "results.json").exists()
    assert sorted(os.listdir(ckpt_dir)) == ["3", "4"]  # read only: nothing set aside


def test_a_step_that_is_not_there_lists_the_steps(two_steps, tmp_path):
    line = _one_error_line(_run(["-m", "wallwm_jax.export", "--checkpoint_dir", two_steps,
                                 "--step", "999", "--out", str(tmp_path / "export")]))
    assert line == f"error: no finished checkpoint step 999 in {two_steps} " \
                   f"(finished steps: [3, 4])"


def test_library_readers_name_the_damage(two_steps, tmp_path):
    """`read_assets` and `restore_params` raise DamagedCheckpointError with the same line;
    the intact step still reads."""
    from wallwm_jax import bundle

    ckpt_dir = str(tmp_path / "checkpoints")
    shutil.copytree(two_steps, ckpt_dir)
    damaged = _drop_manifest(os.path.join(ckpt_dir, "4"))
    with pytest.raises(ckpt.DamagedCheckpointError, match="intact steps: \\[3\\]") as err:
        ckpt.read_assets(ckpt_dir)
    assert err.value.damage[0].file == damaged
    config = ckpt.read_assets(ckpt_dir, 3).config
    with pytest.raises(ckpt.DamagedCheckpointError, match=damaged):
        ckpt.restore_params(ckpt_dir, bundle.abstract_params(config))
    assert ckpt.restore_params(ckpt_dir, bundle.abstract_params(config), step=3)


def test_a_read_that_never_started_is_collected_without_a_warning():
    """A failed restore can abandon a read whose coroutine never ran; collecting it warns
    "coroutine ... was never awaited" (with the source line), which the one-line error must
    not be followed by. Outside `_failed_reads_quiet` the same collection does warn."""
    import gc
    import warnings

    async def read():
        return None

    def abandon_and_collect() -> list:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with contextlib.ExitStack() as quiet:
                if quiet_too:
                    quiet.enter_context(ckpt._failed_reads_quiet())
                coro = read()
                del coro
                gc.collect()
        return [w for w in caught if "was never awaited" in str(w.message)]

    quiet_too = False
    assert abandon_and_collect()  # the warning this guards against exists
    quiet_too = True
    assert abandon_and_collect() == []


def test_a_read_completing_on_a_closed_loop_is_not_printed(monkeypatch, capsys):
    """A read that completes after its failed restore closed the event loop raises
    "Event loop is closed" in TensorStore's thread, printed through `sys.excepthook`: after a
    failed restore that one is dropped, any other exception still printed."""
    import asyncio

    printed = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: printed.append(exc[1]))

    def raised(fn):
        try:
            fn()
        except BaseException:  # noqa: BLE001
            return sys.exc_info()

    loop = asyncio.new_event_loop()
    loop.close()
    late = raised(lambda: loop.call_soon_threadsafe(print))
    other = raised(lambda: (_ for _ in ()).throw(RuntimeError("Event loop is closed")))
    sys.excepthook(*late)
    assert printed == [late[1]]  # printed before any restore failed
    ckpt._drop_late_reads()
    hook = sys.excepthook
    ckpt._drop_late_reads()
    assert sys.excepthook is hook  # installed once, not wrapped again
    sys.excepthook(*late)
    sys.excepthook(*other)  # the same message from elsewhere still goes through
    assert printed == [late[1], other[1]]
