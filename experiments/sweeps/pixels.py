"""Policies that act from pixels: chunk vs event (oracle planner) vs unified mode, 3 seeds
each, on the same data and for the same number of steps, with no privileged simulator state
in the state vector (`recipe=pixels`: 4-D agent state, scene + gripper camera at 48 px);
evaluated closed-loop on `mt10_seen`'s test scenes.

    python -m wallwm_jax.sweep --sweep experiments/sweeps/pixels.py:size=tiny,recipe=pixels \
        --workdir /tmp/sweep_pixels --config.data.data_dir=<MT10 pixels dataset dir>

Event mode's oracle planner reads the scripted expert's phase (privileged; every result file
marks it); chunk and unified mode read nothing privileged. Tune with `--eval_split dev`.
experiments/results/pixels/ holds the run script, the dataset build line and the results.
"""

from experiments.pretrain import get_config as pretrain_config
from experiments.sweeps.event_vs_chunk import modes_by_seed

MODES = ("chunk", "event", "unified")
SEEDS = (0, 1, 2)


def get_config(arg=None):
    """The pretraining config (`arg`: `size=...`; recipe=pixels unless `arg` names another
    recipe; the mode is swept)."""
    arg = arg or ""
    if "recipe=" not in arg:
        arg = ",".join(a for a in (arg, "recipe=pixels") if a)
    return pretrain_config(arg)


def get_sweep(h):
    """Every mode at every seed, seed-major (event_vs_chunk's `modes_by_seed`)."""
    return modes_by_seed(h, MODES, SEEDS)


def get_eval():
    """Each trial is evaluated closed-loop on MT10's unseen scenes, the `test` split (the
    reported one; `--eval_split dev` for tuning), 5 episodes per task (as the privileged
    baseline: 150 per arm over 3 seeds), replanning every 8 steps as the demo."""
    return {"suites": ["mt10_seen"], "split": "test", "episodes_per_task": 5,
            "extra_args": "--execute_steps=8"}
