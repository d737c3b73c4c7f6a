"""Muon vs AdamW, each over its own small learning-rate grid (Muon's orthogonalised updates
take learning rates ~30x larger), 2 seeds each.
"""

from experiments.pretrain import get_config as pretrain_config

GRIDS = {"adamw": (1e-4, 3e-4, 1e-3), "muon": (0.005, 0.01, 0.02)}
SEEDS = (0, 1)


def get_config(arg=None):
    """The pretraining config (`arg`: `size=...,mode=...`)."""
    return pretrain_config(arg)


def get_sweep(h):
    trials = []
    for name, grid in GRIDS.items():
        trials += h.product([h.fixed("config.optimizer.name", name),
                             h.sweep("config.optimizer.learning_rate", grid),
                             h.sweep("config.seed", SEEDS)])
    return trials


def get_eval():
    # A sweep that picks a setting by its success is tuning: dev scenes (test: the report).
    return {"suites": ["demo"], "episodes_per_task": 10, "split": "dev"}
