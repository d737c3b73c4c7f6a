"""The compiled train step (fsdp=8) takes Muon's spread path (all-to-all, not an all-gather
per matrix), and Muon's update as training builds it moves at most 1/8 of the collective bytes
of the same update with optax.contrib.muon, measured in the same run."""

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


def _update_bytes(name: str, mesh: Mesh) -> dict[str, int]:
    """Collective bytes of the optimizer update alone, with the optimizer and the param and
    optimizer-state shardings the train step uses (cheaper to compile than the whole step)."""
    step = make_train_step(_config(name), mesh)
    update = jax.jit(lambda g, s, p, n: step.tx.update(g, s, p, total_steps=n)[0],
                     out_shardings=step.param_sharding)
    compiled = update.lower(step.abstract_params, step.abstract_state.opt_state,
                            step.abstract_params,
                            step.abstract_run_inputs.total_steps).compile()
    return compiled_collective_bytes(compiled)


def test_train_step_muon_collectives_spread():
    jax.config.update("jax_threefry_partitionable", True)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(1, 8, 1), ("data", "fsdp", "tensor"))
    # The path training takes: the whole compiled train step moves Muon's matrices all-to-all.
    step = make_train_step(_config("muon"), mesh)
    whole = compiled_collective_bytes(step.update_fn.lower(*step.abstract_inputs).compile())
    assert whole.get("all-to-all", 0) > 0, whole
    ours, ref = _update_bytes("muon", mesh), _update_bytes("optax_muon", mesh)
    print({"train_step_muon": whole, "muon_update": ours, "optax_muon_update": ref})
    assert ref["total"] > 0 and ours.get("all-to-all", 0) > 0
    assert ours["total"] <= ref["total"] / 8


def test_make_optimizer_reads_muon_config():
    config = _config("muon")
    config.optimizer.muon.ns_dtype = "float64"
    with pytest.raises(ValueError, match="ns_dtype"):
        make_optimizer(config.optimizer, 10)
    config.optimizer.name = "sgd"
    with pytest.raises(ValueError, match="optimizer.name='sgd'"):
        make_optimizer(config.optimizer, 10)
