"""WALL-WM network: vision encoder, decoder backbone, flow-matching action expert, heads."""

from wallwm_jax.models.decoding import decode_caption, decode_caption_uncached
from wallwm_jax.models.flops import train_step_flops
from wallwm_jax.models.masks import staircase_mask, with_padding
from wallwm_jax.models.wallwm import (
    WallWM,
    compute_loss,
    count_params,
    init_params,
    param_logical_axes,
    sample_actions,
)

__all__ = ["WallWM", "compute_loss", "count_params", "decode_caption",
           "decode_caption_uncached", "init_params", "param_logical_axes", "sample_actions",
           "staircase_mask", "train_step_flops", "with_padding"]
