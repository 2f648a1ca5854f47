"""The task-free mode (``task_free=True``, issue 18's fourth kind) and its registered id: drawn
phase lengths, no boundary signal, a probe batch per step, and reserving as the agent's action.
The checks every registered id passes (checkers, determinism, pickle, vector envs, the batched
env's equality) run on ``TaskFreePermutedDigits`` in ``test_envs``, ``test_hard_track`` and
``test_batched_env``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import nsr_gym
from nsr_gym.agents import Clairvoyant, make_agent, rollout
from nsr_gym.agents.policies import SHIFT_THRESHOLD
from nsr_gym.envs import TASK_FREE_HIDDEN, AllocationEnv
from nsr_gym.streams import TaskStream, make_stream, random_phase_lengths

EID = nsr_gym.env_id("TaskFreePermutedDigits")
SMALL = dict(tasks="permuted_digits", n_tasks=3, schedule="recurring", phase_length=6, n_cycles=3,
             retention="agent", task_free=True, backend="analytic")


def test_random_phase_lengths_keep_the_episode_length_and_a_floor():
    rng = np.random.default_rng(0)
    lengths = random_phase_lengths(20, 30, rng)
    assert lengths.sum() == 600 and lengths.min() >= 10 and lengths.dtype == np.int64
    assert lengths.std() > 5  # a step counter cannot time a boundary
    again = random_phase_lengths(20, 30, np.random.default_rng(0))
    np.testing.assert_array_equal(lengths, again)


def test_a_stream_with_drawn_lengths_maps_steps_to_phases():
    stream = make_stream("recurring", 5, 30, 4, rng=np.random.default_rng(3),
                         random_lengths=True)
    starts = stream.phase_starts()
    assert starts[0] == 0 and len(starts) == stream.n_phases
    for p, start in enumerate(starts):
        assert stream.phase_at(int(start)) == (p, 0) and stream.is_phase_start(int(start))
        assert stream.task_at(int(start)) == stream.schedule[p]
        if start > 0:
            assert stream.phase_at(int(start) - 1)[0] == p - 1
    assert not stream.is_phase_start(stream.n_steps)
    with pytest.raises(ValueError, match="summing to"):
        TaskStream(np.arange(3), 4, 3, np.array([4, 4, 5]))


def test_task_free_needs_agent_retention():
    with pytest.raises(ValueError, match="task_free=True needs retention='agent'"):
        AllocationEnv(**{**SMALL, "retention": "env"})
    with pytest.raises(ValueError, match="task_free must be True or False"):
        AllocationEnv(**{**SMALL, "task_free": "yes"})


def test_no_boundary_in_the_observation_or_the_default_info():
    env = AllocationEnv(**SMALL)
    obs, info = env.reset(seed=0)
    assert "trained_steps" in obs and obs["trained_steps"][0] == 0.0
    assert not set(TASK_FREE_HIDDEN) & set(info)
    starts = set(env.phase_starts().tolist())
    assert len(set(np.diff(sorted(starts)).tolist())) > 1  # phases of drawn lengths
    shifts = []
    for t in range(env.n_steps):
        obs, _, done, _, step_info = env.step(np.array([0, 0]))
        assert set(step_info) == set(info)
        shifts.append((t + 1 in starts, float(obs["task_shift"][0])))
        if done:
            break
    inside = [s for boundary, s in shifts if not boundary]
    assert min(inside) > 0.0  # a probe batch per step: the shift moves at every step
    full = AllocationEnv(**{**SMALL, "privileged_info": True})
    _, info = full.reset(seed=0)
    assert set(TASK_FREE_HIDDEN) <= set(info)


def test_the_agent_writes_the_active_subspace():
    env = AllocationEnv(**{**SMALL, "privileged_info": True})
    env.reset(seed=1)
    K = env.capacity
    assert env.action_masks()[K + 2:].tolist() == [True] + [False] * K  # nothing trained yet
    _, _, _, _, info = env.step(np.array([0, 2]))  # write before any update: a no-op
    assert info["invalid_retention"] == 1 and info["bank_entries"] == 0
    assert env.action_masks()[K + 2:].all()
    task = int(info["task_id"])
    obs, _, _, _, info = env.step(np.array([0, 2]))  # write into slot 1, then keep
    assert (info["stored_slot"], info["bank_entries"], info["invalid_retention"]) == (1, 1, 0)
    entry = env.bank.slots[1]
    assert entry.owner == task and obs["active"][2] == 1.0
    assert obs["pending"][0] == 1.0 and obs["pending_similarity"][1] > 0.9


def test_the_clairvoyant_plans_drawn_phases_exactly():
    env = gym.make("nsr_gym/TaskFreePermutedDigits-v0", backend="analytic",
                   phase_length=5, n_cycles=2)
    policy = Clairvoyant()
    log = rollout(env, policy, seed=4)
    assert policy.plan.exact
    assert abs(log["reward"].sum() - policy.plan.value) < 1e-9


def test_the_rules_write_only_at_the_shifts_they_see():
    env = gym.make(EID, backend="analytic", phase_length=8, n_cycles=2)
    seen = []
    rollout(env, make_agent("lru-retain"), seed=2,
            before_step=lambda obs, info, a: seen.append(
                (float(obs["task_shift"][0]) > SHIFT_THRESHOLD, obs["pending"][0] > 0,
                 int(a[1]) > 0, int(a[0]))))
    assert any(w for _, _, w, _ in seen)
    assert all((shift and pending) == write for shift, pending, write, _ in seen)
    assert all(alloc == 0 for shift, _, _, alloc in seen if not shift)  # keep between shifts
    with pytest.raises(ValueError, match="task-free"):
        rollout(env, make_agent("belady-retain"), seed=2)


def test_nsr_gym_run_refuses_an_allocation_only_rule_that_needs_a_bank(tmp_path):
    from nsr_gym.cli import main

    code = main(["run", "--benchmark", "TaskFreePermutedDigits", "--backend", "analytic",
                 "--seeds", "1", "--agents", "similarity", "--quick", "--no-progress",
                 "--out", str(tmp_path)])
    assert code != 0
    assert main(["run", "--benchmark", "TaskFreePermutedDigits", "--backend", "analytic",
                 "--seeds", "1", "--agents", "keep-current,lru-retain", "--quick",
                 "--no-progress", "--out", str(tmp_path)]) == 0
