"""Can a policy be told to do a task it never trained on? Event mode (the oracle planner gives
the unseen task's event descriptions) vs chunk mode (only the instruction) on `mt50_heldout`,
the 40 MT50 tasks outside MT10, after training on MT10.

The trials are event_vs_chunk.py's event and chunk trials (same names, same configs): given the
same --workdir, the runner finds them trained and only adds the `mt50_heldout` evaluation.

    python -m wallwm_jax.sweep --sweep experiments/sweeps/tasks.py:size=tiny,recipe=cpu \
        --workdir /tmp/sweep_modes --config.data.data_dir=<MT10 dataset dir>

experiments/results/tasks/ holds the CPU-scale run.
"""

from experiments.pretrain import _MAX_CAPTIONS
from experiments.pretrain import get_config as pretrain_config

MODES = ("event", "chunk")
SEEDS = (0, 1, 2)


def get_config(arg=None):
    """The pretraining config (`arg`: `size=...`; the mode is swept)."""
    return pretrain_config(arg)


def get_sweep(h):
    """As event_vs_chunk.py without unified mode: seed-major, a mode sets three fields."""
    modes = h.zip([h.sweep("config.mode", MODES),
                   h.sweep("config.data.layout", MODES),
                   h.sweep("config.data.max_captions", [_MAX_CAPTIONS[m] for m in MODES])])
    return h.product([h.sweep("config.seed", SEEDS), modes])


def get_eval():
    """40 unseen tasks, 3 episodes each per seed, replanning every 8 steps as the demo."""
    return {"suites": ["mt50_heldout"], "episodes_per_task": 3,
            "extra_args": "--execute_steps=8"}
