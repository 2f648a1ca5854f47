"""The same seed gives the same per-step log, byte for byte, in separate processes (CPU).

Two fresh interpreters (different ``PYTHONHASHSEED``, so nothing may depend on set or dict-of-str
order) each roll out the same seeded episodes on both backends and print every step: action,
reward, the numeric info, and a hash of the observation's bytes. The outputs must be identical.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import hashlib, sys
import numpy as np, torch
torch.set_num_threads(1)
import gymnasium as gym, nsr_gym
from nsr_gym.agents import RULE_AGENTS

def rollout(backend, seed, agent):
    env = gym.make("nsr_gym/RecurringSplitDigits-v0", backend=backend, phase_length=3,
                   n_cycles=2, capacity=3, learner={"eval_samples": 50} if backend == "analytic"
                   else None)
    policy = RULE_AGENTS[agent]() if agent != "random" else None
    if policy is not None and hasattr(policy, "reset"):
        policy.reset(seed)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    if policy is not None and hasattr(policy, "observe"):
        policy.observe(info)
    done, t = False, 0
    while not done:
        if policy is None:
            action = int(rng.choice(np.flatnonzero(env.unwrapped.action_masks())))
        else:
            action = int(np.asarray(policy.predict(obs, deterministic=True)[0]).reshape(-1)[0])
        obs, reward, term, trunc, info = env.step(action)
        if policy is not None and hasattr(policy, "observe"):
            policy.observe(info)
        h = hashlib.sha256(b"".join(obs[k].tobytes() for k in sorted(obs))).hexdigest()[:16]
        vals = " ".join(f"{k}={info[k]!r}" for k in sorted(info) if np.isscalar(info[k]))
        print(f"{backend} {agent} {seed} t={t} a={action} r={reward!r} obs={h} {vals}")
        done, t = term or trunc, t + 1
    env.close()

for backend in ("torch", "analytic"):
    for agent in ("random", "similarity", "random-slot"):
        rollout(backend, 3, agent)
"""


def _run(hash_seed: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


@pytest.mark.slow
def test_same_seed_same_log_across_processes_both_backends():
    procs = [_run("0"), _run("12345")]  # both at once: the interpreter start is most of the time
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
    (a, _), (b, _) = outs
    lines = a.decode().splitlines()
    assert len(lines) == 2 * 3 * 30  # 2 backends x 3 agents x 30 steps
    assert {ln.split()[0] for ln in lines} == {"torch", "analytic"}
    assert "skipped_updates=" in lines[0] and "bank_bytes=" in lines[0]
    assert a == b  # byte for byte
