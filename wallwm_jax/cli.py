"""How every command line of the package runs: absl flags, quiet logs, one-line user errors.

    if __name__ == "__main__":
        cli.run(main)

- Logs: warnings and our own progress lines only. Orbax, TFDS, absl and JAX INFO lines (and
  JAX's "Unable to initialize backend 'tpu'") come back with `--verbosity=0` (INFO) or higher;
  so do XLA's C++ log lines (the "Very slow compile?" and "Constant folding an instruction is
  taking > 1s" banners), which `TF_CPP_MIN_LOG_LEVEL` then controls as usual.
- Compiled programs: the package's commands keep them in JAX's persistent compilation cache
  (`compile_cache.py`; `--compilation_cache_dir`, empty for none).
- Errors: a `UserError` (and ValueError / FileNotFoundError, which the library raises for bad
  input with a message naming the file or field) prints `error: <message>` on stderr and exits
  2; the traceback is printed only when `--verbosity` is given. Ctrl-C exits 130 and SIGTERM
  143, both unwinding (`finally` blocks and worker pools run their clean-up).
"""

from __future__ import annotations

import gc
import logging as py_logging
import os
import re
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app, flags
from absl import logging as absl_logging

from wallwm_jax import compile_cache

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3  # stopped by SIGTERM with a checkpoint: run the same command to resume
# C++ (absl) log levels: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL. XLA logs its slow-compile banners
# as ERROR, so only FATAL gets through by default.
_CPP_QUIET_LEVEL = 3

flags.DEFINE_string(
    "compilation_cache_dir", None,
    f"Directory of JAX's persistent compilation cache, shared by every command of the package "
    f"and safe to share between processes and hosts; empty for none (default: "
    f"${compile_cache.ENV_VAR}, else $JAX_COMPILATION_CACHE_DIR, else "
    f"($XDG_CACHE_HOME or ~/.cache)/wallwm_jax/jax_compilation_cache).")


class UserError(ValueError):
    """A mistake the user can fix (a flag, a path, a config value): printed as one line.

    A ValueError, so callers of the library that catch bad values keep working."""


# What counts as bad input: the library raises these with messages written for the user.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError,
                                                NotADirectoryError, IsADirectoryError,
                                                PermissionError)


def verbose() -> bool:
    """Whether the user asked for logs and tracebacks (`--verbosity` on the command line)."""
    fl = flags.FLAGS
    if not fl.is_parsed():  # flag parsing itself failed: look at the raw command line
        return any(a.startswith(("--verbosity", "-v=")) or a == "-v" for a in sys.argv[1:])
    return "verbosity" in fl and fl["verbosity"].present and fl.verbosity >= 0


def quiet_logs() -> None:
    """Warnings and above from every library, unless `--verbosity` was given."""
    if verbose():
        return
    quiet_cpp_logs()
    absl_logging.set_verbosity(absl_logging.WARNING)
    py_logging.getLogger().setLevel(py_logging.WARNING)
    for name in ("jax", "jax._src.xla_bridge", "absl", "orbax", "tensorflow_datasets",
                 "grain"):
        py_logging.getLogger(name).setLevel(py_logging.WARNING)


def quiet_cpp_logs() -> None:
    """XLA's C++ log lines (slow-compile banners, start-up notices) off, for this process and
    those it starts. jaxlib reads TF_CPP_MIN_LOG_LEVEL when it loads, which the command's
    imports have done already, so a loaded jaxlib is also told directly."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(_CPP_QUIET_LEVEL)
    if "jax" in sys.modules:
        from jax._src.lib import utils as jaxlib_utils  # what jax_logging_level calls

        jaxlib_utils.absl_set_min_log_level(_CPP_QUIET_LEVEL)


def package_command() -> bool:
    """Whether the program is one of the package's commands (`python -m wallwm_jax...`), not
    a script of its own such as a benchmark that times compiles."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return bool(spec and spec.name.startswith("wallwm_jax."))


def drop_below(level: int, path_part: str) -> py_logging.Filter:
    """A logging filter that drops records under `level` logged from files whose path holds
    `path_part` (e.g. TFDS's notices for a local build, which absl routes through 'absl')."""

    class _Drop(py_logging.Filter):
        def filter(self, record: py_logging.LogRecord) -> bool:
            return record.levelno >= level or path_part not in record.pathname

    return _Drop()


def fail(message: str) -> NoReturn:
    """Stop with a user error: `error: <message>` on stderr, exit status 2."""
    raise UserError(message)


def describe_flag_error(err: BaseException, argv: list[str]) -> str:
    """One line for an error absl or ml_collections' config flags raise while parsing (a
    misspelt field, a missing config file), instead of chained tracebacks and escapes."""
    text = str(err)
    guess = re.search(r'Did you mean \W*"([^"\\]+)\\?" instead of \\?"([^"\\]+)', text)
    if guess:
        suggestion, field = guess.groups()
        arg = next((a.split("=", 1)[0] for a in argv
                    if a.startswith("--") and f".{field}" in a.split("=", 1)[0]), "")
        where = f" ({arg})" if arg else ""
        return f"unknown config field '{field}'{where}; did you mean '{suggestion}'?"
    if isinstance(err, KeyError | AttributeError):
        field = text.strip("\"'\\")
        arg = next((a.split("=", 1)[0] for a in argv
                    if a.startswith("--") and f".{field}" in a.split("=", 1)[0]), "")
        return f"unknown config field '{field}'" + (f" ({arg})" if arg else "")
    missing = re.search(r"No such file or directory: '([^']+)'", text)
    if "Failed loading config file" in text and missing:
        return (f"config file '{missing.group(1)}' does not exist (--config takes "
                f"path/to/config.py[:arg], e.g. experiments/pretrain.py:size=tiny)")
    if "Error whilst parsing config file" in text:  # the config's own error, last line
        flag = re.match(r"\s*flag (--\S+): Error whilst", text)
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        last = re.sub(r"^\w+(Error|Exception): ", "", last)
        return f"{flag.group(1) if flag else '--config'}: {last}"
    text = text.replace("\\n", " ").replace("\n", " ")
    return " ".join(text.split())


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing whose errors (unknown flag, bad value, misspelt config field,
    missing config file) are one `error:` line and exit 2, or a traceback with --verbosity."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as err:
        if verbose():
            raise
        print(f"error: {describe_flag_error(err, argv)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def config_value(name: str = "config") -> Any:
    """The value of a `config_flags` flag; a config file that failed to load is a UserError
    (config_flags only reports it on first use, as an OSError)."""
    value = flags.FLAGS[name].value
    error = getattr(value, "_error", None) if type(value).__name__ == "_ErrorConfig" else None
    if error is not None:
        raise UserError(describe_flag_error(error, sys.argv)) from error
    return value


def positional(argv: list[str], *names: str) -> list[str]:
    """The positional arguments after the program name, exactly `names` of them."""
    args = list(argv[1:])
    if len(args) != len(names):
        got = " ".join(args) if args else "none"
        raise UserError(f"expected {len(names)} positional argument(s) "
                        f"{' '.join(names)}, got {got}")
    return args


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(143)


def fewer_collections() -> None:
    """Collect cyclic garbage every 50,000 allocations instead of Python's 700, and never
    rescan what exists now (the imports). Tracing a model allocates millions of short-lived
    objects, and the default collector keeps rescanning the imported modules: this takes ~10%
    off a tiny training command's CPU (docs/performance.md). Memory is still freed by
    reference counting as before; only cycles wait a little longer."""
    gc.freeze()
    gc.set_threshold(50_000, *gc.get_threshold()[1:])


def run(main: Callable[[list[str]], Any], *, sigterm_unwinds: bool = True,
        flags_parser: Callable[[list[str]], list[str]] = parse_flags,
        compilation_cache: bool | None = None) -> None:
    """`absl.app.run(main)` with quiet logs, the persistent compilation cache and user errors
    as one line (exit 2).

    `sigterm_unwinds=False` leaves SIGTERM to `main` (training turns it into a checkpoint).
    `flags_parser` replaces `parse_flags` where flags depend on the command line (the sweep
    defines `--config` from `--sweep`). `compilation_cache` None: on for the package's
    commands, and wherever `--compilation_cache_dir` is given.
    """

    def wrapped(argv: list[str]) -> Any:
        quiet_logs()
        cache_flag = flags.FLAGS["compilation_cache_dir"]
        if cache_flag.present or (package_command() if compilation_cache is None
                                  else compilation_cache):
            compile_cache.configure(cache_flag.value)
        if sigterm_unwinds:
            signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return main(argv)
        except USER_ERRORS as err:
            if verbose():
                raise
            message = str(err).strip() or type(err).__name__
            print(f"error: {message}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            if verbose():
                raise
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    fewer_collections()
    app.run(wrapped, flags_parser=flags_parser)
