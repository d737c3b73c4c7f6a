"""The compiled train step (fsdp=8) takes Muon's spread path: its optimizer collectives are
at most 1/8 of the same step built with optax.contrib.muon, measured in the same run."""

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
    step = make_train_step(_config(name), mesh)
    compiled = step.update_fn.lower(step.abstract_params, step.abstract_state,
                                    step.abstract_batch).compile()
    return compiled_collective_bytes(compiled)


def test_train_step_muon_collectives_spread():
    jax.config.update("jax_threefry_partitionable", True)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 8, 1), ("data", "fsdp", "tensor"))
    adamw, ours, ref = (_step_bytes(n, mesh) for n in ("adamw", "muon", "optax_muon"))
    # The step without Muon has the same forward/backward collectives: the rest is Muon's.
    ours_opt, ref_opt = ours["total"] - adamw["total"], ref["total"] - adamw["total"]
    print({"adamw": adamw, "muon": ours, "optax_muon": ref,
           "muon_optimizer_bytes": ours_opt, "optax_optimizer_bytes": ref_opt})
    assert ref_opt > 0
    assert ours.get("all-to-all", 0) > 0  # the spread path, not an all-gather per matrix
    assert ours_opt <= ref_opt / 8


def test_make_optimizer_reads_muon_config():
    config = _config("muon")
    config.optimizer.muon.ns_dtype = "float64"
    with pytest.raises(ValueError, match="ns_dtype"):
        make_optimizer(config.optimizer, 10)
    config.optimizer.name = "sgd"
    with pytest.raises(ValueError, match="optimizer.name='sgd'"):
        make_optimizer(config.optimizer, 10)
