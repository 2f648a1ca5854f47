"""The RL clients a new user reaches for, each used as its documentation says.

First what any client relies on: ids for both backends, ``spec.max_episode_steps``, masks
through the standard wrappers and vector envs. Then smoke tests of rl-zoo3 with the project's
hyperparameter file, TorchRL's ``GymEnv`` by id and Tianshou's ``SubprocVectorEnv`` after a
probe env, each skipped when the client is not installed (``pip install -e ".[clients]"``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import nsr_gym  # noqa: F401 - registers the envs

ROOT = Path(__file__).resolve().parent.parent
ANALYTIC_ID = "nsr_gym/CyclicSplitDigitsAnalytic-v0"
SHORT = dict(phase_length=2, n_cycles=1)  # 10 steps per episode


# ---------------------------------------------------------------------------- any client
def test_every_offline_benchmark_has_an_analytic_id_unless_it_only_changes_the_backbone():
    import gymnasium as gym

    from nsr_gym.envs import BENCHMARKS, VECTOR_ENTRY_POINT, analytic_env_id, env_id

    for name, kwargs in BENCHMARKS.items():
        assert gym.spec(env_id(name)).vector_entry_point == VECTOR_ENTRY_POINT
        if "learner_defaults" in kwargs:  # ViT / pretrained CNN: no analytic twin
            assert env_id(name + "Analytic") not in gym.registry
            continue
        spec = gym.spec(analytic_env_id(name))
        assert spec.kwargs == {**kwargs, "backend": "analytic"}
        assert spec.vector_entry_point == VECTOR_ENTRY_POINT
    env = gym.make(ANALYTIC_ID)
    assert env.unwrapped.backend == "analytic"
    env.close()


def test_spec_knows_the_episode_length_without_cutting_a_longer_one():
    import gymnasium as gym

    env = gym.make(ANALYTIC_ID)
    u = env.unwrapped
    assert env.spec.max_episode_steps == u.n_phases * u.phase_length == 600
    longer = gym.make(ANALYTIC_ID, n_cycles=8, phase_length=2)
    assert longer.spec.max_episode_steps == 80
    longer.reset(seed=0)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = longer.step(0)
        steps += 1
    assert steps == 80 and terminated and not truncated
    remade = gym.make(longer.spec)  # the spec round trip keeps kwargs and length
    assert remade.spec.max_episode_steps == 80 and remade.unwrapped.n_cycles == 8


def test_action_masks_through_the_standard_wrappers_and_vector_envs():
    import gymnasium as gym
    import numpy as np
    from gymnasium.wrappers import FlattenObservation
    from sb3_contrib.common.maskable.utils import get_action_masks
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    expected = np.array([True, True, False, False, False, False, False])
    wrapped = Monitor(FlattenObservation(gym.make(ANALYTIC_ID, **SHORT)))
    _, info = wrapped.reset(seed=0)
    np.testing.assert_array_equal(wrapped.get_wrapper_attr("action_masks")(), expected)
    np.testing.assert_array_equal(info["action_mask"], expected)
    np.testing.assert_array_equal(get_action_masks(wrapped), expected)
    np.testing.assert_array_equal(get_action_masks(DummyVecEnv([lambda: wrapped]))[0], expected)
    for mode, kwargs in (("sync", {}), ("async", {"vector_kwargs": {"context": "fork"}})):
        venv = gym.make_vec(ANALYTIC_ID, 2, vectorization_mode=mode, **kwargs, **SHORT)
        venv.reset(seed=0)
        masks = venv.call("action_masks")
        assert len(masks) == 2 and all((m == expected).all() for m in masks), mode
        venv.close()
    batched = gym.make_vec(ANALYTIC_ID, 2, **SHORT)  # the vector entry point, by default
    batched.reset(seed=0)
    np.testing.assert_array_equal(batched.action_masks(), np.stack([expected, expected]))
    batched.close()


# ---------------------------------------------------------------------------- the clients
@pytest.mark.slow  # rl-zoo3's imports (optuna, its env registry): ~8 s here
def test_rl_zoo3_trains_with_the_project_hyperparameters(tmp_path, monkeypatch):
    """The issue's command, ``python -m rl_zoo3.train --algo ppo --env
    nsr_gym/CyclicSplitDigits-v0 --gym-packages nsr_gym -conf agents/hyperparams/ppo.yml``, on a
    tiny budget (``-n``, ``-params``) and a short stream (``--env-kwargs``)."""
    pytest.importorskip("rl_zoo3")
    from rl_zoo3.train import train

    args = ["--algo", "ppo", "--env", "nsr_gym/CyclicSplitDigits-v0", "--gym-packages",
            "nsr_gym", "-conf", str(ROOT / "agents" / "hyperparams" / "ppo.yml"), "-n", "80",
            "-f", str(tmp_path), "--eval-freq", "-1", "--seed", "0", "--num-threads", "1",
            "--env-kwargs", "phase_length:2", "n_cycles:1",
            "-params", "n_envs:2", "n_steps:20", "batch_size:20", "n_epochs:1"]
    monkeypatch.setattr(sys, "argv", ["rl_zoo3.train", *args])
    train()
    runs = list((tmp_path / "ppo").glob("nsr_gym-CyclicSplitDigits-v0_*"))
    assert len(runs) == 1 and (runs[0] / "nsr_gym-CyclicSplitDigits-v0.zip").exists()
    assert len(list(runs[0].glob("*.monitor.csv"))) == 2


def test_torchrl_reads_observations_infos_and_masks_by_id():
    pytest.importorskip("torchrl")
    import torch
    from torchrl.envs import GymEnv, TransformedEnv
    from torchrl.envs.transforms import ActionMask
    from torchrl.envs.utils import check_env_specs

    env = GymEnv(ANALYTIC_ID)  # TorchRL's own `backend=` names the gym library
    env.auto_register_info_dict()
    check_env_specs(env)
    td = env.rollout(12, break_when_any_done=False)
    assert td["next", "accuracy"].dtype == torch.float64
    assert td["next", "task_id"].dtype == torch.int64
    assert td["next", "action_mask"].shape == (12, 7)

    torch.manual_seed(0)
    rollouts = {}
    for masked in (False, True):
        base = GymEnv(ANALYTIC_ID)
        base.auto_register_info_dict()
        menv = TransformedEnv(base, ActionMask()) if masked else base
        rollouts[masked] = menv.rollout(30)
    assert rollouts[False]["next", "invalid_load"].sum() > 0  # random loads of empty slots
    assert rollouts[True]["next", "invalid_load"].sum() == 0  # ActionMask reads info's mask


TIANSHOU = r"""
import sys
import numpy as np
import torch
import gymnasium as gym
import nsr_gym
from tianshou.env import SubprocVectorEnv

def main():
    torch.set_num_threads(max(2, torch.get_num_threads()))
    task = "nsr_gym/CyclicSplitDigits-v0"
    probe = gym.make(task, phase_length=2, n_cycles=1)  # as Tianshou's examples do, first
    probe.reset(seed=0)
    probe.step(1)
    envs = SubprocVectorEnv([lambda: gym.make(task, phase_length=2, n_cycles=1)
                             for _ in range(2)], context="fork")
    obs, info = envs.reset(seed=0)
    assert len(obs) == 2 and set(obs[0]) == set(probe.observation_space.spaces)
    for _ in range(10):
        obs, rew, terminated, truncated, info = envs.step(np.array([1, 0]))
    assert terminated.all() and rew.shape == (2,) and info[0]["action_mask"].dtype == bool
    envs.close()
    print("ok")

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow  # a fresh interpreter and three torch envs: ~10 s here
def test_tianshou_subproc_workers_after_a_probe_env_on_the_torch_backend():
    """The hang of issue 14: a probe env in the parent, then forked workers; default threads."""
    pytest.importorskip("tianshou")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NSR_GYM_TORCH_THREADS")}
    proc = subprocess.Popen([sys.executable, "-c", TIANSHOU], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("Tianshou's SubprocVectorEnv hung after a probe env")
    assert proc.returncode == 0, err[-2000:]
    assert out.strip().endswith("ok")
