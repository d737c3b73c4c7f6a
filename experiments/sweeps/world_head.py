"""Does predicting the event-end frame (the world loss) help the policy? World loss weight
0.1 (on) vs 0 (off; the head gets no gradient), 3 seeds each.
"""

from experiments.pretrain import get_config as pretrain_config

SEEDS = (0, 1, 2)


def get_config(arg=None):
    """The pretraining config (`arg`: `size=...,mode=...`)."""
    return pretrain_config(arg)


def get_sweep(h):
    return h.product([h.sweep("config.model.loss_weights.world", [0.1, 0.0]),
                      h.sweep("config.seed", SEEDS)])


def get_eval():
    return {"suites": ["demo"], "episodes_per_task": 10}
