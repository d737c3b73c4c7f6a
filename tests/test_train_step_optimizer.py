"""The compiled train step (fsdp=8) takes Muon's spread path (all-to-all, not an all-gather
per matrix), and Muon's share of the whole step's collective bytes (the step's minus the same
step's with AdamW) is at most 1/8 of `optax.contrib.muon`'s, measured in the same run, with
ops inside the scanned layer loop counted once per layer (`hlo_stats`)."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from experiments.pretrain import get_config
from wallwm_jax.hlo_stats import compiled_collective_bytes
from wallwm_jax.optim.factory import make_optimizer
from wallwm_jax.train_step import make_train_step


def _config(name: str):
    config = get_config("size=tiny,mode=event")
    config.model.depth = 8  # enough matrices per shape for the spread path to pay
    config.batch_size = 8
    config.optimizer.name = name
    return config


def _step_bytes(name: str, mesh: Mesh) -> dict[str, int]:
    """Collective bytes per device of one whole compiled train step with optimizer `name`."""
    step = make_train_step(_config(name), mesh)
    return compiled_collective_bytes(step.update_fn.lower(*step.abstract_inputs).compile())


def test_train_step_muon_collectives_spread():
    jax.config.update("jax_threefry_partitionable", True)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 8, 1), ("data", "fsdp", "tensor"))
    steps = {name: _step_bytes(name, mesh) for name in ("adamw", "muon", "optax_muon")}
    print(steps)
    # The path training takes: the whole compiled train step moves Muon's matrices all-to-all.
    assert steps["muon"].get("all-to-all", 0) > steps["adamw"].get("all-to-all", 0), steps
    ours = steps["muon"]["total"] - steps["adamw"]["total"]
    ref = steps["optax_muon"]["total"] - steps["adamw"]["total"]
    assert ref > 0 and ours > 0, steps
    assert ours <= ref / 8, (ours, ref)


def test_make_optimizer_reads_muon_config():
    config = _config("muon")
    config.optimizer.muon.ns_dtype = "float64"
    with pytest.raises(ValueError, match="ns_dtype"):
        make_optimizer(config.optimizer, 10)
    config.optimizer.name = "sgd"
    with pytest.raises(ValueError, match="optimizer.name='sgd'"):
        make_optimizer(config.optimizer, 10)
