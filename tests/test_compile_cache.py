"""The persistent compilation cache every command of the package uses (wallwm_jax/compile_cache.py
via `cli.run`): on by default in the user's cache directory, a second process loads what the
first compiled, off with an empty `--compilation_cache_dir`, an unwritable directory is one
warning line; and XLA's C++ log lines stay out of a command's default output."""

import dataclasses
import os
import subprocess
import sys
import time

from wallwm_jax import compile_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A command run through `cli.run` that compiles one small program, named so its cache entry and
# log lines can be told apart from JAX's own helpers. It imports JAX first, as commands do.
PROBE = """
import jax
import jax.numpy as jnp
from wallwm_jax import cli

def wallwm_cache_probe(x):
    return jnp.tanh(x @ x.T).sum()

def main(argv):
    print("result", float(jax.jit(wallwm_cache_probe)(jnp.arange(12.0).reshape(3, 4))))

cli.run(main)
"""
HIT = "Persistent compilation cache hit for 'jit_wallwm_cache_probe'"


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               # JAX's debug lines of the cache (hits, writes); independent of --verbosity.
               JAX_DEBUG_LOG_MODULES="jax._src.compiler,jax._src.compilation_cache")
    for name in ("JAX_COMPILATION_CACHE_DIR", compile_cache.ENV_VAR):
        env.pop(name, None)  # each test says where the cache is
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _probe(*flags: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", PROBE, *flags], capture_output=True, text=True,
                         cwd=REPO, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "result 9" in out.stdout, out.stdout  # same numbers whether compiled or loaded
    return out


def _entries(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.startswith("jit_wallwm_cache_probe-"))


def test_second_process_loads_what_the_first_compiled(tmp_path):
    """Also: XLA's C++ log lines (here the CPU client's INFO notice at start-up, under the same
    switch as the ERROR-level slow-compile banners) are gone by default, even where the
    environment asks for them, and back with --verbosity."""
    cache = tmp_path / "cache"
    env = _env(TF_CPP_MIN_LOG_LEVEL="0")
    first = _probe(f"--compilation_cache_dir={cache}", env=env)
    written = _entries(cache)
    assert len(written) == 1, os.listdir(cache)
    assert HIT not in first.stderr
    assert "pjrt_client.cc" not in first.stderr, first.stderr[-3000:]
    second = _probe(f"--compilation_cache_dir={cache}", "--verbosity=0", env=env)
    assert HIT in second.stderr, second.stderr[-3000:]
    assert _entries(cache) == written  # read, not compiled and written again
    assert first.stdout == second.stdout
    assert "pjrt_client.cc" in second.stderr, second.stderr[-3000:]


def test_empty_flag_turns_the_cache_off(tmp_path):
    jax_own = tmp_path / "jax_own"
    off = _probe("--compilation_cache_dir=", env=_env(JAX_COMPILATION_CACHE_DIR=str(jax_own)))
    assert not jax_own.exists(), off.stderr[-3000:]  # JAX's own setting is turned off too


def test_package_command_uses_the_user_cache_by_default(tmp_path):
    """`python -m wallwm_jax.train` (stopped by a bad data_dir before anything compiles) makes
    its cache under $XDG_CACHE_HOME. (A script of its own, such as the probe or a benchmark
    timing compiles, has none unless asked: the other tests' probes pass the flag.)"""
    args = [sys.executable, "-m", "wallwm_jax.train", "--config",
            "experiments/pretrain.py:size=tiny,mode=event", "--workdir", str(tmp_path / "run"),
            "--config.data.data_dir=/no/such/dataset"]
    xdg = tmp_path / "xdg"
    out = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=120,
                         env=_env(XDG_CACHE_HOME=str(xdg)))
    assert out.returncode == 2, out.stderr[-3000:]
    assert (xdg / "wallwm_jax" / "jax_compilation_cache").is_dir(), list(xdg.rglob("*"))


def test_unwritable_directory_is_one_warning_and_the_command_runs(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = _probe(f"--compilation_cache_dir={blocker / 'cache'}", env=_env())
    warnings = [line for line in out.stderr.splitlines() if "compilation cache" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), out.stderr[-3000:]
    assert str(blocker / "cache") in warnings[0] and "not writable" in warnings[0]
    assert "Traceback" not in out.stderr


def test_resolve_dir_order(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.resolve_dir(None) == str(tmp_path / "wallwm_jax" /
                                                  "jax_compilation_cache")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/jax/own")
    assert compile_cache.resolve_dir(None) == "/jax/own"
    monkeypatch.setenv(compile_cache.ENV_VAR, "")
    assert compile_cache.resolve_dir(None) == ""  # set but empty: off
    assert compile_cache.resolve_dir("/from/flag") == "/from/flag"


def test_progress_bar_clock_starts_after_the_first_step_compiled(tiny_config, tmp_path,
                                                                 monkeypatch):
    """The training bar's rate and ETA leave the compile out: its clock (tqdm's start_t) is
    restarted once the first step has returned, i.e. compiled."""
    from wallwm_jax import train

    returned: list[float] = []
    starts: list[float] = []
    make_train_step = train.make_train_step

    def timed_make_train_step(*args, **kwargs):
        step = make_train_step(*args, **kwargs)

        def update_fn(*inputs):
            out = step.update_fn(*inputs)
            returned.append(time.time())  # tqdm's clock is time.time
            return out

        return dataclasses.replace(step, update_fn=update_fn)

    class Bar(train.tqdm):
        def update(self, n=1):
            starts.append(self.start_t)
            return super().update(n)

    monkeypatch.setattr(train, "make_train_step", timed_make_train_step)
    monkeypatch.setattr(train, "tqdm", Bar)
    # The program of tests/test_train_loop.py's first test (a worker that ran it reuses the
    # traced step, and the session's compilation cache the compiled one), stopped after 2 steps.
    tiny_config.log_every_steps = 3
    tiny_config.checkpoint.every_steps = 6
    train.train_and_evaluate(tiny_config, str(tmp_path / "run"), stop_after=2)
    assert len(returned) == len(starts) == 2
    assert starts[0] >= returned[0], (starts, returned)
    assert starts[1] == starts[0]  # restarted once, not at every step
