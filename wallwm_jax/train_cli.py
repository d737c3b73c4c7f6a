"""`python -m wallwm_jax.train`'s command line: its flags and the checks of `--workdir` and the
config, run before JAX and the model are imported, so a bad command line is one `error:` line
in a fraction of a second instead of after the imports (~3 CPU-s); then it imports
`wallwm_jax.train` and trains.
"""

from __future__ import annotations

import os

import ml_collections
from absl import flags
from ml_collections import config_flags

from wallwm_jax import cli, config_check


def define_flags() -> None:
    """The command's flags. Defined only when run as a program, so importing the trainer (the
    demo, tests) never clashes with the importer's own flags."""
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config, e.g. experiments/pretrain.py:size=tiny,mode=event")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0 for a multi-process run "
                        "(default: $JAX_COORDINATOR_ADDRESS).")
    flags.DEFINE_integer("num_processes", None,
                         "Number of processes (default: $JAX_NUM_PROCESSES, else 1).")
    flags.DEFINE_integer("process_id", None, "This process's index (default: $JAX_PROCESS_ID).")
    flags.mark_flags_as_required(["config", "workdir"])


def checked_config() -> ml_collections.ConfigDict:
    """`--config`, validated (`config_check`: fields, data, devices asked for), once
    `--workdir` is known not to be a file; a problem is a `cli.UserError`."""
    workdir = flags.FLAGS.workdir
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise cli.UserError(f"--workdir {workdir} is a file; expected a directory (new or "
                            f"a run's, to resume)")
    config = cli.config_value("config")
    config_check.validate(config)  # before joining other processes
    return config


def main(argv: list[str]) -> None:
    """Check the command line, then import the trainer (JAX, the model) and train. Exits 0
    when the run is finished, 3 (`cli.EXIT_PREEMPTED`) when SIGTERM stopped it with a
    checkpoint before the last step (rerun the same command to resume), 2 on a user error."""
    del argv
    config = checked_config()
    import jax

    from wallwm_jax import train

    cli.fewer_collections()  # again: what the trainer's imports made is never rescanned
    fl = flags.FLAGS
    train.initialize_distributed(fl.coordinator_address, fl.num_processes, fl.process_id)
    summary = train.train_and_evaluate(config, fl.workdir)
    losses = summary["losses"]
    if losses and jax.process_index() == 0:
        print(f"trained steps {summary['first_step']}..{summary['last_step']}, "
              f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if summary["preempted"] and summary["last_step"] < config.total_steps:
        # A scheduler requeues on this code; 0 means the run is finished.
        raise SystemExit(cli.EXIT_PREEMPTED)


def run() -> None:
    """Define the flags and run the command (exits)."""
    define_flags()
    # SIGTERM stays with the loop, which turns it into a checkpoint and a clean exit.
    cli.run(main, sigterm_unwinds=False)
