"""Does cluster-balanced event sampling help? alpha = 0.5 (cluster mass ~ n_c^0.5) against no
balancing (None: events drawn uniformly, no index), 3 seeds each, on the same data and steps.

Besides closed-loop success on `mt10_seen`, every trial logs the val action error split by
train event cluster (`config.eval.by_cluster`): `eval/action_mse_rare` over the rarest third
of the clusters, `eval/action_mse_common` over the rest.

    python -m wallwm_jax.sweep --sweep experiments/sweeps/balance.py:size=tiny,recipe=cpu \\
        --workdir /tmp/sweep_balance --config.data.data_dir=<MT10 dataset dir>

Add alpha 0 (clusters uniform) and 1 (events uniform) to ALPHAS for the whole curve.
"""

from experiments.pretrain import get_config as pretrain_config

ALPHAS = (0.5, None)
SEEDS = (0, 1, 2)


def get_config(arg=None):
    """The pretraining config (`arg`: `size=...,mode=...,recipe=...`), with the offline
    evaluation at the end of training and its per-cluster split on."""
    config = pretrain_config(arg)
    config.eval_every_steps = config.total_steps
    config.eval.by_cluster = True
    return config


def get_sweep(h):
    """Seed-major, so a sweep stopped part-way has both arms at its first seeds."""
    return h.product([h.sweep("config.seed", SEEDS),
                      h.sweep("config.data.balance_alpha", list(ALPHAS))])


def get_eval():
    return {"suites": ["mt10_seen"], "episodes_per_task": 5, "extra_args": "--execute_steps=8"}
