"""`python -m wallwm_jax.evaluation --policy PATH --suite NAME --workdir OUT`: closed-loop
MetaWorld evaluation of an export, a checkpoint directory or the scripted experts, on the
suite's `test` scenes (`--split dev` for tuning).

Writes OUT/results.json (one record per episode + summary), OUT/results.md (success per
task, group and overall with Wilson 95% intervals) and OUT/pictures/ for `--videos K`.
Finished episodes go to OUT/episodes.jsonl as they end: rerun the same command on the same
OUT after a stop and only the missing episodes are played.
"""

from __future__ import annotations

import dataclasses
import warnings

from absl import flags, logging

from wallwm_jax import cli

_POLICY = flags.DEFINE_string("policy", None, "Export bundle, checkpoint directory (latest "
                              "finished step, or --step) or 'expert' (scripted experts).")
_SUITE = flags.DEFINE_string("suite", None, "Suite name (see --list).")
_SPLIT = flags.DEFINE_enum("split", "test", ["dev", "test"], "Scene split: test for reported "
                           "figures, dev for anything chosen by looking at success (tuning).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results.json/results.md go.")
_MODE = flags.DEFINE_enum("mode", None, ["event", "unified", "chunk"],
                          "Inference mode (default: the mode the policy was trained in).")
_TASKS = flags.DEFINE_list("tasks", None, "A subset of the suite's tasks.")
_EPISODES = flags.DEFINE_integer("episodes_per_task", None, "Default: the suite's.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Episodes run in this many processes.")
_VIDEOS = flags.DEFINE_integer("videos", 0, "Pictures (strip, GIF, world head) for the "
                               "first K episodes of every task.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest finished).")
_PLANNER = flags.DEFINE_enum(
    "planner", None, ["oracle", "constant", "blank", "wrong_task"],
    "Who writes the event caption. Event mode (default oracle): oracle = the scripted "
    "phase's caption; constant = the first event's caption all episode; blank = an empty "
    "caption; wrong_task = the phase worded as another task words it. Unified mode: default "
    "the model's own captions; a planner's caption replaces the current event's (control). "
    "oracle, constant and wrong_task read the phase (privileged).")
_EXECUTE = flags.DEFINE_integer("execute_steps", None, "Steps of each chunk executed before "
                                "replanning (default: the whole predicted chunk).")
_COMPARE = flags.DEFINE_string("compare", None, "Expert results (results.json or its dir) "
                               "to show next to these; default: a sibling of --workdir.")
_LIMIT = flags.DEFINE_integer("episode_limit", None, "Override the suite's step limit per "
                              "episode (smoke runs; the result records it).")
_LIST = flags.DEFINE_bool("list", False, "List the suites and exit.")


def main(argv: list[str]) -> None:
    cli.positional(argv)
    if not cli.verbose():
        logging.set_verbosity(logging.ERROR)  # Orbax's read-only notices are not news
    warnings.filterwarnings("ignore", module="metaworld")  # "Constant(s) may be too high"
    from wallwm_jax.envs import metaworld  # noqa: F401  (sets MUJOCO_GL first)
    from wallwm_jax.evaluation import suites

    if _LIST.value:
        for name in suites.names():
            s = suites.get(name)
            print(f"{name}: {s.description} ({len(s.tasks)} tasks, "
                  f"{s.episodes_per_task} episodes each)")
        return
    missing = [f"--{n}" for n, f in (("policy", _POLICY), ("suite", _SUITE),
                                     ("workdir", _WORKDIR)) if not f.value]
    if missing:
        raise cli.UserError(f"missing required flag(s) {', '.join(missing)}")
    suite = suites.get(_SUITE.value).subset(tuple(_TASKS.value or ()) or None, _EPISODES.value)
    if _LIMIT.value is not None:
        if _LIMIT.value < 1:
            raise ValueError(f"--episode_limit must be >= 1, got {_LIMIT.value}")
        suite = dataclasses.replace(suite, episode_limit=_LIMIT.value)
    # Imported after the flags and the suite are checked: a bad suite or task name fails
    # before JAX loads.
    from wallwm_jax.evaluation.runner import PolicySpec, evaluate_suite

    spec = PolicySpec(path=_POLICY.value, step=_STEP.value, mode=_MODE.value,
                      planner=_PLANNER.value, execute_steps=_EXECUTE.value)
    results = evaluate_suite(spec, suite, _WORKDIR.value, workers=_WORKERS.value,
                             videos=_VIDEOS.value, compare=_COMPARE.value, split=_SPLIT.value,
                             resume=True)
    with open(f"{_WORKDIR.value}/results.md") as f:
        print(f.read())
    s = results["summary"]["overall"]
    print(f"overall {s['success']:.1%} ({s['successes']}/{s['n']}) in {results['wall_s']:.0f}s "
          f"-> {_WORKDIR.value}/results.json")


if __name__ == "__main__":
    # SIGTERM unwinds (cli.run), so episode worker processes are stopped with the run.
    cli.run(main)
