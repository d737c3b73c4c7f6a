"""`python -m wallwm_jax.sweep.trial`: train one sweep trial (the process a launcher starts).

Builds the sweep file's config, applies the sweep-wide and the trial's overrides from
`trial.json` and calls `train_and_evaluate`, which resumes from the latest checkpoint. Exits 3
(`cli.EXIT_PREEMPTED`, as `python -m wallwm_jax.train` does) when training stopped early with a
checkpoint (preemption), so the sweep knows to resume it.
"""

from __future__ import annotations

import json

from absl import flags

from wallwm_jax import cli
from wallwm_jax.sweep.hyper import apply_overrides, base_config, load_module, split_spec

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Only when run as a program: importing `build_config` must not claim flag names (the
    demo's and the trainer's `--workdir`) in the importing process."""
    flags.DEFINE_string("sweep", None, "Sweep file path[:arg].")
    flags.DEFINE_string("trial", None, "The trial's trial.json.")
    flags.DEFINE_string("workdir", None, "Training workdir (checkpoints, metrics.jsonl).")
    flags.DEFINE_integer("stop_after", None, "Stop at this step with a checkpoint, as a "
                         "preemption would (tests of resume).")
    flags.mark_flags_as_required(["sweep", "trial", "workdir"])


def build_config(sweep: str, trial: dict):
    """The trial's full config: get_config(arg) + sweep-wide overrides + trial overrides."""
    path, arg = split_spec(sweep)
    config = base_config(load_module(path), arg)
    apply_overrides(config, trial.get("global_overrides", {}))
    return apply_overrides(config, trial.get("overrides", {}))


def main(argv: list[str]) -> None:
    cli.positional(argv)
    with open(FLAGS.trial) as f:
        trial = json.load(f)
    config = build_config(FLAGS.sweep, trial)

    from wallwm_jax.train import initialize_distributed, train_and_evaluate

    initialize_distributed()  # JAX_* variables set by the slurm launcher for multi-host
    summary = train_and_evaluate(config, FLAGS.workdir, stop_after=FLAGS.stop_after)
    losses = summary["losses"]
    print(f"trial {trial['name']}: steps {summary['first_step']}..{summary['last_step']}"
          + (f", loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""), flush=True)
    if summary["last_step"] < config.total_steps:
        raise SystemExit(cli.EXIT_PREEMPTED)


if __name__ == "__main__":
    _define_flags()
    # SIGTERM stays with training, which saves a checkpoint and exits (cli.EXIT_PREEMPTED).
    cli.run(main, sigterm_unwinds=False)
