"""Optimizers: Muon (sharding-aware) with AdamW for non-matrix parameters."""
