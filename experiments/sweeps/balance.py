"""Does cluster-balanced event sampling help? alpha in {0, 0.5, 1} (cluster mass ~ n_c^alpha:
0 = clusters uniform, 1 = events uniform) and no balancing at all (None), 3 seeds each.
"""

from experiments.pretrain import get_config as pretrain_config

SEEDS = (0, 1, 2)


def get_config(arg=None):
    """The pretraining config (`arg`: `size=...,mode=...`)."""
    return pretrain_config(arg)


def get_sweep(h):
    return h.product([h.sweep("config.data.balance_alpha", [0.0, 0.5, 1.0, None]),
                      h.sweep("config.seed", SEEDS)])


def get_eval():
    return {"suites": ["demo"], "episodes_per_task": 10}
