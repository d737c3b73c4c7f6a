"""`python -m wallwm_jax.sweep --sweep FILE.py[:arg] --workdir DIR`: run a grid of trials.

Validates the whole sweep first, then trains and evaluates each trial (locally, up to
`--parallel` at once, or as a slurm job array), skipping finished trials and resuming the rest,
and writes DIR/results.{csv,md} and DIR/plots/. `--report DIR` only re-renders the results.
Exit codes: 0 all trials done, 1 some failed, 3 none failed but some are unfinished (stopped
by SIGTERM or --stop_after: run the same command to resume), 2 a user error (one line).
"""

from __future__ import annotations

import json
import os
import re
import sys

from absl import flags
from ml_collections import config_flags

from wallwm_jax import cli
from wallwm_jax.sweep.hyper import SweepError, base_config, format_value, load_module, split_spec

flags.DEFINE_string("sweep", None, "Sweep file, e.g. experiments/sweeps/balance.py[:arg].")
flags.DEFINE_string("workdir", None, "Sweep directory: trials/, results.csv/md, plots/.")
flags.DEFINE_integer("parallel", 1, "Local launcher: trials run at once (devices are split).")
flags.DEFINE_enum("launcher", "local", ["local", "slurm"], "Where trials run.")
flags.DEFINE_list("suite", None, "Closed-loop suite(s), or 'none' (default: the sweep file's "
                  "get_eval()).")
flags.DEFINE_bool("dry_run", False, "Print the trials (and the slurm submission) and exit.")
flags.DEFINE_string("report", None, "Only re-render DIR's results and plots.")
flags.DEFINE_list("eval_tasks", None, "Evaluation: task subset.")
flags.DEFINE_integer("eval_episodes_per_task", None, "Evaluation: episodes per task.")
flags.DEFINE_integer("eval_workers", None, "Evaluation: parallel episode workers.")
flags.DEFINE_integer("eval_episode_limit", None, "Evaluation: step limit per episode (smoke "
                     "runs; default: the suite's).")
flags.DEFINE_enum("eval_split", None, ["dev", "test"], "Evaluation: scene split (default: "
                  "the sweep file's, else test; dev for sweeps that tune).")
flags.DEFINE_string("eval_args", None, "Evaluation: extra arguments passed through as is.")
flags.DEFINE_string("only", None, "Run only the trials whose name matches this regular expression "
                    "(e.g. 'seed=2,'): split a sweep across machines, or add a seed later.")
flags.DEFINE_integer("stop_after", None, "Stop each trial's training at this step with a "
                     "checkpoint, as a preemption would (to test resume).")
flags.DEFINE_integer("slurm_nodes", None, "Slurm: nodes per trial (multi-host if > 1; "
                     "default 1).")
flags.DEFINE_integer("slurm_gpus_per_node", None, "Slurm: GPUs per node (default 1; 0: none, "
                     "trials train on the CPUs).")
flags.DEFINE_integer("slurm_cpus_per_task", None, "Slurm: CPUs per node (one task per node; "
                     "default 8 per GPU).")
flags.DEFINE_integer("slurm_mem_gb", None, "Slurm: memory per node in GB (default 32 per GPU).")
flags.DEFINE_integer("slurm_timeout_min", None, "Slurm: time limit per trial, minutes "
                     "(default 240).")
flags.DEFINE_string("slurm_partition", None, "Slurm: partition (default: the cluster's).")
flags.DEFINE_string("slurm_account", None, "Slurm: account.")
FLAGS = flags.FLAGS


def _suites(sweep_eval: dict) -> list[str]:
    value = FLAGS.suite if FLAGS.suite is not None else sweep_eval.get("suites", ())
    if isinstance(value, str):
        value = [s for s in value.split(",") if s.strip()]
    suites = [s.strip() for s in value if s.strip() and s.strip() != "none"]
    from wallwm_jax.evaluation.suites import names

    for suite in suites:
        if suite not in names():
            cli.fail(f"unknown evaluation suite {suite!r}; known: {', '.join(names())}, none")
    return suites


def _eval_settings(sweep_eval: dict) -> dict:
    settings = {k: v for k, v in sweep_eval.items() if k != "suites"}
    for key in ("tasks", "episodes_per_task", "workers", "episode_limit", "split"):
        value = getattr(FLAGS, f"eval_{key}")
        if value is not None:
            settings[key] = value
    if FLAGS.eval_args is not None:
        settings["extra_args"] = FLAGS.eval_args
    if settings.get("split", "test") not in ("dev", "test"):
        cli.fail(f"get_eval()['split']={settings['split']!r}: expected 'dev' or 'test'")
    return settings


def _resources(sweep_resources: dict) -> dict:
    out = dict(sweep_resources)
    for key in ("nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min",
                "partition", "account"):
        value = getattr(FLAGS, f"slurm_{key}")
        if value is not None:
            out[key] = value
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    from wallwm_jax.sweep import launchers, report, runner
    from wallwm_jax.sweep.hyper import load_sweep

    if FLAGS.report:
        if not os.path.isdir(os.path.join(FLAGS.report, "trials")):
            cli.fail(f"{FLAGS.report} is not a sweep directory (no trials/)")
        out = report.write_report(FLAGS.report)
        print(out["markdown"])
        return
    if not FLAGS.sweep or not FLAGS.workdir:
        cli.fail("--sweep and --workdir are required (or --report DIR)")
    try:
        # Datasets are checked only where trials will run: here (slurm's are on the cluster).
        sweep = load_sweep(FLAGS.sweep, config=cli.config_value("config"),
                           check_data=FLAGS.launcher == "local" and not FLAGS.dry_run)
    except SweepError as e:
        cli.fail(str(e))
    if FLAGS.launcher == "slurm":  # a bad --slurm_* value fails before anything is written
        launchers.slurm_resources(_resources(sweep.resources))
    overrides = dict(config_flags.get_override_values(FLAGS["config"]))
    suites = _suites(sweep.eval)
    settings = _eval_settings(sweep.eval)
    workdir = os.path.abspath(FLAGS.workdir)
    pattern = None
    if FLAGS.only:  # checked before anything is written
        try:
            pattern = re.compile(FLAGS.only)
        except re.error as e:
            cli.fail(f"--only {FLAGS.only!r} is not a regular expression: {e}")
        if not any(pattern.search(name) for name in sweep.names):
            cli.fail(f"--only {FLAGS.only!r} matches no trial; names: {', '.join(sweep.names)}")
    jobs = runner.prepare(sweep, workdir, overrides, suites, settings,
                          stop_after=FLAGS.stop_after, write=not FLAGS.dry_run)
    if pattern is not None:
        jobs = [job for job in jobs if pattern.search(job.name)]
    print(f"sweep {sweep.spec}: {len(jobs)} trials"
          + (f", suites {', '.join(suites)}" if suites else ", no closed-loop evaluation"))
    for job in jobs:
        values = ", ".join(f"{k}={format_value(v)}" for k, v in job.overrides.items())
        print(f"  {job.name}: {values}")
    if not FLAGS.dry_run:  # what --report needs: trial order, swept keys
        with open(os.path.join(workdir, "sweep.json"), "w") as f:
            json.dump({"sweep": sweep.spec, "names": sweep.names, "keys": list(dict.fromkeys(
                k for t in sweep.trials for k in t)), "suites": suites,
                "global_overrides": jobs[0].global_overrides}, f, indent=2)
    if FLAGS.launcher == "slurm":
        plan = launchers.submit_slurm(jobs, workdir, _resources(sweep.resources),
                                      dry_run=FLAGS.dry_run)
        if not FLAGS.dry_run:
            os.makedirs(os.path.join(workdir, "slurm"), exist_ok=True)
            with open(os.path.join(workdir, "slurm", "submission.json"), "w") as f:
                json.dump(plan, f, indent=2)
        print(plan["request"])
        print(plan["sbatch"])
        for task in plan["tasks"]:
            print(f"array task {task['array_index']}: {task['trial']}: "
                  f"{' '.join(task['command'])}")
            for cmd in task["eval_commands"]:
                print(f"  then (task 0 of the trial): {' '.join(cmd)}")
        if plan["job_ids"]:
            print(f"submitted {len(plan['job_ids'])} array tasks: {plan['job_ids'][0]}...; "
                  f"`python -m wallwm_jax.sweep --report {workdir}` when they finish")
        return
    if FLAGS.dry_run:
        return
    statuses = launchers.run_local(jobs, parallel=FLAGS.parallel)
    out = report.write_report(workdir)
    print(out["markdown"])
    print(f"results: {os.path.join(workdir, 'results.md')}, plots: "
          f"{os.path.join(workdir, 'plots')}")
    failed = [n for n, s in statuses.items() if s == "failed"]
    unfinished = [n for n, s in statuses.items() if s in ("interrupted", "pending")]
    if failed:
        print(f"{len(failed)} trial(s) failed: {', '.join(failed)} (log tails in "
              f"results.md; rerun the same command to retry)", file=sys.stderr)
    if unfinished:
        print(f"{len(unfinished)} trial(s) unfinished: {', '.join(unfinished)}; rerun the "
              f"same command to resume", file=sys.stderr)
    if failed:
        raise SystemExit(1)
    if unfinished:  # preempted, as a trial's own exit says: a scheduler requeues the sweep
        raise SystemExit(cli.EXIT_PREEMPTED)


def _define_config_flag(argv: list[str]) -> None:
    """`--config` is the sweep file's get_config(arg), so `--config.X=V` overrides apply to
    every trial; check the file loads first, so a bad file is one line, not a traceback."""
    spec = None
    for i, a in enumerate(argv):
        if a.startswith("--sweep="):
            spec = a.split("=", 1)[1]
        elif a == "--sweep" and i + 1 < len(argv):
            spec = argv[i + 1]
    if spec:
        path, arg = split_spec(spec)
        try:
            base_config(load_module(path), arg)
        except (SweepError, ValueError, KeyError, TypeError) as e:
            cli.fail(f"{spec}: {e}")
    try:  # config_flags applies the --config.X overrides here
        config_flags.DEFINE_config_file(
            "config", spec, "The sweep's base config (set by --sweep); --config.FIELD=VALUE "
            "applies to every trial.", lock_config=False)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
        cli.fail(cli.describe_flag_error(e, argv))


def _parse_flags(argv: list[str]) -> list[str]:
    """Define `--config` from `--sweep`, then parse (errors: one line, exit 2)."""
    try:
        _define_config_flag(argv)
    except cli.UserError as e:
        if cli.verbose():
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(cli.EXIT_USER_ERROR) from None
    return cli.parse_flags(argv)


def run() -> None:
    """Console entry point."""
    cli.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
