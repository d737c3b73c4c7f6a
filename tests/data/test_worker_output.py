"""What a user sees when a command reading data with Grain worker processes is stopped with
Ctrl-C: the terminal sends SIGINT to every process of the group, and without care each worker
prints a KeyboardInterrupt traceback and the resource tracker warns of leaked shared memory.
Here: one `interrupted` line, exit 130."""

import os
import select
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A command run by `cli.run` that draws batches from a 2-worker pipeline until stopped.
PROGRAM = """
import sys
from wallwm_jax import cli
from tests.configs import tiny_config

def main(argv):
    from wallwm_jax.data.pipeline import make_pipeline
    cfg = tiny_config(sys.argv[1]).data
    cfg.num_workers = 2
    pipeline = make_pipeline(cfg, global_batch=8, seed=0)
    for n in range(10**9):
        next(pipeline)
        if n == 2:
            print("drawing", flush=True)

cli.run(main)
"""


def test_ctrl_c_with_grain_workers_is_one_line(tiny_dataset):
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM, tiny_dataset], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group, as a terminal's job
    try:
        assert select.select([proc.stdout], [], [], 300)[0], "no batch within 300 s"
        line = proc.stdout.readline()
        assert line == "drawing\n", line
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    assert err == "interrupted\n"
