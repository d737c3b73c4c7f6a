"""Does the Staircase mask matter? Unified mode with the Staircase caption mask (an action
step sees only the captions of its own and earlier events) vs a plain causal caption mask
(every step sees every caption), 3 seeds each.
"""

from experiments.pretrain import get_config as pretrain_config

SEEDS = (0, 1, 2)


def get_config(arg="mode=unified"):
    """The unified-mode pretraining config (`arg`: `size=...,mode=unified`)."""
    config = pretrain_config(arg)
    if config.mode != "unified":
        raise ValueError(f"the staircase sweep needs mode=unified, got mode={config.mode}")
    return config


def get_sweep(h):
    return h.product([h.sweep("config.model.caption_mask", ["staircase", "causal"]),
                      h.sweep("config.seed", SEEDS)])


def get_eval():
    # A sweep that picks a setting by its success is tuning: dev scenes (test: the report).
    return {"suites": ["demo"], "episodes_per_task": 10, "split": "dev"}
