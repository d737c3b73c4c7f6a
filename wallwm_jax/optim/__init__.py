"""Optimizers: Muon (sharding-aware) with AdamW for non-matrix parameters."""

from wallwm_jax.optim.muon import MuonState, muon
from wallwm_jax.optim.newton_schulz import NS_PRESETS, orthogonalize
from wallwm_jax.optim.routing import BATCH_AXIS_NAMES, DEFAULT_RULES, plan_params, routing_table

__all__ = ["BATCH_AXIS_NAMES", "DEFAULT_RULES", "NS_PRESETS", "MuonState", "muon",
           "orthogonalize", "plan_params", "routing_table"]
