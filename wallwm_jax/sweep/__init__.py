"""Ablation sweeps: `python -m wallwm_jax.sweep --sweep FILE.py[:arg] --workdir DIR`."""
