"""Does grounding on events help? Event vs unified (Staircase) vs chunk mode, 3 seeds each,
on the same data and for the same number of steps.

    python -m wallwm_jax.sweep --sweep experiments/sweeps/event_vs_chunk.py:size=tiny \
        --workdir /tmp/sweep_modes --config.data.data_dir=<dataset dir>
"""

from experiments.pretrain import _MAX_CAPTIONS
from experiments.pretrain import get_config as pretrain_config

MODES = ("event", "unified", "chunk")
SEEDS = (0, 1, 2)


def get_config(arg=None):
    """The pretraining config (`arg`: `size=...`; the mode is swept)."""
    return pretrain_config(arg)


def get_sweep(h):
    """A mode switches three fields together (zip), crossed with the seeds."""
    modes = h.zip([h.sweep("config.mode", MODES),
                   h.sweep("config.data.layout", MODES),
                   h.sweep("config.data.max_captions", [_MAX_CAPTIONS[m] for m in MODES])])
    return h.product([modes, h.sweep("config.seed", SEEDS)])


def get_eval():
    """Each trial is evaluated closed-loop on the demo tasks (override with --suite)."""
    return {"suites": ["demo"], "episodes_per_task": 10}
