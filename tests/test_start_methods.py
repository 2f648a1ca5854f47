"""``gym.make_vec(id, 2, vectorization_mode="async")`` and the sharded batched env
(``gym.make_vec(id, 2, shards=2)``) on the torch backend under the ``fork``, ``spawn`` and
``forkserver`` start methods, with torch's default threads (no
``OMP_NUM_THREADS=1``): each run in a fresh interpreter with a timeout, so that a hang fails the
test instead of blocking the suite.

Before the thread policy (:mod:`nsr_gym.threads`), ``fork`` hung forever: the parent's first env
ran matrix products on two OpenMP threads, and each forked worker then waited in its own
constructor for pool threads that do not exist in the child. The script below makes sure the
parent's pool exists first (the user's own two-thread work), whatever the machine's core count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

#: Environment variables that would hide the hang (each pins the thread pools to one thread).
PINNING = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NSR_GYM_TORCH_THREADS")

SCRIPT = r"""
import sys
import numpy as np
import torch
import gymnasium as gym
import nsr_gym

def main(context):
    torch.set_num_threads(max(2, torch.get_num_threads()))
    a = torch.randn(256, 256)
    (a @ a).sum()  # the parent's OpenMP pool now has threads, as after any real torch work
    threads = torch.get_num_threads()
    env = gym.make_vec("nsr_gym/CyclicSplitDigits-v0", 2, vectorization_mode="async",
                       vector_kwargs={"context": context}, phase_length=2, n_cycles=1)
    obs, info = env.reset(seed=0)
    for _ in range(3):
        obs, rewards, terminated, truncated, info = env.step(np.array([1, 0]))
    masks = env.call("action_masks")
    env.close()
    # the batched env over two processes: its worker builds a batched learner after the fork
    sharded = gym.make_vec("nsr_gym/CyclicSplitDigits-v0", 2, shards=2, context=context,
                           phase_length=2, n_cycles=1)
    sharded.reset(seed=0)
    sharded_rewards = sharded.step(np.array([1, 0]))[1]
    sharded.close()
    assert torch.get_num_threads() == threads, "the parent's thread count changed"
    assert rewards.shape == (2,) and len(masks) == 2 and masks[0].shape == (7,)
    assert sharded_rewards.shape == (2,)
    print("ok", context, threads)

if __name__ == "__main__":
    main(sys.argv[1])
"""


def _run(context: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in PINNING}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, context], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own group: a hang kills the workers too
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"gym.make_vec(..., 'async' or shards=2) with context={context!r} hung for "
                    f"{timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("context", [
    "fork",
    pytest.param("spawn", marks=pytest.mark.slow),  # each worker imports torch: ~5-15 s here
    pytest.param("forkserver", marks=pytest.mark.slow),
])
def test_async_vector_env_steps_under_every_start_method(context):
    import multiprocessing

    if context not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{context} is not available on this platform")
    result = _run(context, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"ok {context}")
