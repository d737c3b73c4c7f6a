"""The loop's step timer: a window read with `block_on` ends when its last step is computed
(the last logged window of a run timed dispatch only before)."""

import time

import jax
import jax.numpy as jnp
import pytest

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


def test_data_time_is_the_wait_after_the_previous_step_was_computed():
    """A step's wait for its batch idles the device only after the previous step is
    computed: a wait that ended before counts nothing in `data_time` (all of it in
    `queue_time`), a wait that goes on after it counts from the moment it was computed."""
    x = jnp.ones((256, 256)) / 256
    jax.block_until_ready(_slow(x))  # compiled
    timer = StepTimer()
    start = time.perf_counter()
    out0 = _slow(x)
    timer.add(data_s=0.0, waited=(start, start), outputs=out0)  # the first: its whole wait
    out1 = _slow(out0)
    # ended before step 0 was even dispatched: the device never waited on this batch
    timer.add(data_s=0.3, waited=(start - 0.3, start), outputs=out1)
    window = timer.take()
    assert window["data_time"] == 0.0 and window["queue_time"] == pytest.approx(0.15)
    jax.block_until_ready(out1)
    computed = time.perf_counter()  # step 1 is computed by now
    end = computed + 100.0  # a wait that goes on long after it
    out2 = _slow(out1)
    timer.add(data_s=end - start, waited=(start, end), outputs=out2)
    window = timer.take(block_on=out2)
    timer.close()
    assert window["queue_time"] == pytest.approx(end - start)
    # from when step 1 was computed (noted by the watching thread: 10 s for it to wake, at most)
    assert end - computed - 10.0 < window["data_time"] < end - start
