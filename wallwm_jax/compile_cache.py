"""JAX's persistent compilation cache, on for every command (`cli.run` calls `configure`):
a second train, export, evaluation, serve or sweep trial of the same model loads its compiled
programs from disk instead of compiling them again.

Where: `--compilation_cache_dir`, else $WALLWM_COMPILATION_CACHE_DIR, else JAX's own
$JAX_COMPILATION_CACHE_DIR, else `$XDG_CACHE_HOME` (or ~/.cache)/wallwm_jax/jax_compilation_cache.
An empty value turns it off. See docs/performance.md for what is cached and why sharing one
directory between processes and hosts is safe.
"""

from __future__ import annotations

import os
import sys
import tempfile

ENV_VAR = "WALLWM_COMPILATION_CACHE_DIR"
# Every program is written, however fast it compiled or small it is: on a 2-core CPU the many
# sub-second programs of a start-up (initialisation, the data pipeline's and evaluators' small
# steps) add up to as much as the train step.
MIN_COMPILE_TIME_SECS = 0.0
NO_MIN_ENTRY_SIZE = -1  # JAX's value for "cache entries of any size, and no override"


def default_dir() -> str:
    """The user's cache directory for compiled programs (XDG base-directory convention)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "wallwm_jax", "jax_compilation_cache")


def resolve_dir(flag_value: str | None) -> str:
    """The cache directory to use: the flag if given, else the environment, else the default;
    '' means no cache."""
    if flag_value is not None:
        return flag_value
    for name in (ENV_VAR, "JAX_COMPILATION_CACHE_DIR"):
        if name in os.environ:
            return os.environ[name]
    return default_dir()


def _writable(path: str) -> str | None:
    """None if `path` can be made and written to, else the reason it cannot."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_check_"):
            pass
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def _set(option: str, value: object) -> None:
    """A JAX option, through the environment (read when JAX is imported, and by processes this
    one starts) and, where JAX is already imported, `jax.config`."""
    os.environ[option.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    if "jax" in sys.modules:
        import jax

        jax.config.update(option, value)


def configure(flag_value: str | None = None) -> str | None:
    """Turn JAX's persistent compilation cache on at the resolved directory (None: off).

    Call before anything compiles. A directory that cannot be created or written is one
    warning line on stderr, and the command runs on without a cache."""
    path = resolve_dir(flag_value)
    if path:
        path = os.path.abspath(os.path.expanduser(path))
        reason = _writable(path)
        if reason:
            print(f"warning: compilation cache directory {path} is not writable ({reason}); "
                  f"compiling without it (--compilation_cache_dir to change)", file=sys.stderr)
            path = ""
    os.environ[ENV_VAR] = path  # the processes this one starts use the same choice
    if not path:
        _set("jax_enable_compilation_cache", False)
        return None
    _set("jax_enable_compilation_cache", True)
    _set("jax_compilation_cache_dir", path)
    _set("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    _set("jax_persistent_cache_min_entry_size_bytes", NO_MIN_ENTRY_SIZE)
    return path
