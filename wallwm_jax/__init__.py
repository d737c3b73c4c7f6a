"""wallwm_jax: event-grounded World Action Model (WALL-WM) pretraining in JAX/Flax."""

__version__ = "0.1.0"
