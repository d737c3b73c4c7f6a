"""Does grounding on events help? Event vs unified (Staircase) vs chunk mode, 3 seeds each,
on the same data and for the same number of steps, evaluated closed-loop on `mt10_seen`
(scenes) and `mt10_paraphrase` (the language study: the same policies, held-out wording).

    python -m wallwm_jax.sweep --sweep experiments/sweeps/event_vs_chunk.py:size=tiny,recipe=cpu \
        --workdir /tmp/sweep_modes --config.data.data_dir=<MT10 dataset dir>

experiments/results/event_vs_chunk/ holds the CPU-scale run, its dataset build line and results.
"""

from experiments.pretrain import _MAX_CAPTIONS
from experiments.pretrain import get_config as pretrain_config

MODES = ("event", "unified", "chunk")
SEEDS = (0, 1, 2)


def get_config(arg=None):
    """The pretraining config (`arg`: `size=...`; the mode is swept)."""
    return pretrain_config(arg)


def modes_by_seed(h, modes=MODES, seeds=SEEDS):
    """A mode switches three fields together (zip), crossed with the seeds; seed-major, so a
    sweep stopped part-way has every mode at its first seeds."""
    switched = h.zip([h.sweep("config.mode", modes),
                      h.sweep("config.data.layout", modes),
                      h.sweep("config.data.max_captions", [_MAX_CAPTIONS[m] for m in modes])])
    return h.product([h.sweep("config.seed", seeds), switched])


def get_sweep(h):
    """Every mode at every seed (`modes_by_seed`)."""
    return modes_by_seed(h)


def get_eval():
    """Each trial is evaluated closed-loop on MT10's unseen scenes, with the train wording and
    with held-out paraphrases (override with --suite); replanning every 8 steps as the demo."""
    return {"suites": ["mt10_seen", "mt10_paraphrase"], "episodes_per_task": 10,
            "extra_args": "--execute_steps=8"}
