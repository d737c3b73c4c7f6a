"""WALL-WM network: vision encoder, decoder backbone, flow-matching action expert, heads."""

from wallwm_jax.models.masks import staircase_mask, with_padding
from wallwm_jax.models.wallwm import (
    WallWM,
    compute_loss,
    count_params,
    init_params,
    param_logical_axes,
    sample_actions,
)

__all__ = ["WallWM", "compute_loss", "count_params", "init_params", "param_logical_axes",
           "sample_actions", "staircase_mask", "with_padding"]
