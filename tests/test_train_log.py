"""The loop's step timer: a window read with `block_on` ends when its last step is computed
(the last logged window of a run timed dispatch only before)."""

import jax
import jax.numpy as jnp

from wallwm_jax.train_log import StepTimer


@jax.jit
def _slow(x):
    return jax.lax.fori_loop(0, 20, lambda i, y: jnp.tanh(y @ y), x)


def test_take_blocks_on_the_window_last_step():
    x = jnp.ones((256, 256)) / 256
    jax.block_until_ready(_slow(x))  # compiled
    timer = StepTimer()
    out = _slow(x)  # dispatched, still running
    timer.add(data_s=0.25)
    window = timer.take(block_on=out)
    assert out.is_ready()
    assert window["data_time"] == 0.25 and window["step_time"] > 0
    timer.add(data_s=0.0)
    timer.add(data_s=1.0)
    assert timer.take()["data_time"] == 0.5  # a mean over the window's steps
