"""Retention as the agent's action (``retention="agent"``) and the rules that use it.

Checkers on both backends, spaces and masks, errors, determinism, pickling, the privileged
``task_schedule``; the deferral is reward-neutral (an agent that writes where the env's own
eviction would reproduces it exactly, and so do the rules); pinning hits ``K`` tasks per cycle;
MaskablePPO trains on it through ``nsr-gym train``.
"""

from __future__ import annotations

import pickle
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import nsr_gym
from nsr_gym.agents import RETENTION_AGENTS, make_agent
from nsr_gym.agents.retention import after_write, own_slot
from nsr_gym.envs import DROP, FRESH, KEEP, LOAD_OFFSET, WRITE_OFFSET

CYCLIC = nsr_gym.env_id("CyclicSplitDigits")
RECURRING = nsr_gym.env_id("RecurringSplitDigits")
K = 3
SMALL = dict(phase_length=4, n_cycles=2, capacity=K)


def make(backend: str = "analytic", env_id: str = CYCLIC, **kw) -> gym.Env:
    return gym.make(env_id, backend=backend, **{**SMALL, "retention": "agent", **kw})


def act(a: int, r: int = DROP) -> np.ndarray:
    return np.array([a, r], dtype=np.int64)


def episode(env: gym.Env, policy, seed: int, on_step=None) -> list[float]:
    """Rewards of one episode of ``policy`` (``predict``), with ``on_step(action, info)``."""
    if hasattr(policy, "reset"):
        policy.reset(seed)
    obs, info = env.reset(seed=seed)
    rewards, done = [], False
    while not done:
        action = policy.predict(obs)[0]
        obs, reward, term, trunc, info = env.step(action)
        rewards.append(float(reward))
        if on_step is not None:
            on_step(action, info)
        done = term or trunc
    return rewards


# ---------------------------------------------------------------------------- the API
@pytest.mark.parametrize("backend", ["analytic", "torch"])
def test_both_checkers_pass(backend):
    env = make(backend)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    env.close()


def test_spaces_and_the_default_is_unchanged():
    env, default = make(), gym.make(CYCLIC, backend="analytic", **SMALL)
    explicit = gym.make(CYCLIC, backend="analytic", retention="env", **SMALL)
    assert env.action_space == gym.spaces.MultiDiscrete([K + 2, K + 1])
    assert default.action_space == explicit.action_space == gym.spaces.Discrete(K + 2)
    assert default.observation_space == explicit.observation_space
    extra = set(env.observation_space) - set(default.observation_space)
    assert extra == {"pending", "pending_similarity", "similarity_pending"}
    assert env.observation_space["pending_similarity"].shape == (K,)
    # retention="env" passed explicitly is the default, step for step
    runs = []
    for e in (default, explicit):
        obs, info = e.reset(seed=3)
        out = [(obs["similarity"].tolist(), sorted(info))]
        for t in range(e.unwrapped.n_steps):
            obs, reward, _, _, info = e.step(LOAD_OFFSET + t % K if t % 4 == 0 else KEEP)
            out.append((reward, obs["similarity"].tolist(), list(info),
                        info["action_mask"].tolist()))
        runs.append(out)
    assert runs[0] == runs[1]
    assert "retention" not in runs[0][-1][2] and len(runs[0][-1][3]) == K + 2


def test_pending_observation_and_masks():
    env = make().unwrapped
    obs, info = env.reset(seed=0)
    n_alloc = K + LOAD_OFFSET
    mask = env.action_masks()
    assert mask.shape == (n_alloc + K + WRITE_OFFSET,) and mask.dtype == bool
    assert mask.tolist() == [True, True] + [False] * K + [True] + [False] * K
    assert np.array_equal(info["action_mask"], mask)
    assert obs["pending"][0] == 0 and not obs["pending_similarity"].any()
    for _ in range(SMALL["phase_length"]):  # the first phase
        obs, _, _, _, info = env.step(act(KEEP))
    assert info["phase_end"] == 1 and obs["pending"][0] == 1 and info["bank_entries"] == 0
    assert info["retention"] == -1 and info["stored_slot"] == -1
    mask = info["action_mask"]
    assert mask[n_alloc:].all() and not mask[LOAD_OFFSET:n_alloc].any()  # nothing stored yet
    assert np.array_equal(mask, env.action_masks())
    # write it into slot 1 and load slot 1 in the same step: the load sees the bank after the write
    obs, _, _, _, info = env.step(act(LOAD_OFFSET + 1, WRITE_OFFSET + 1))
    assert (info["retention"], info["stored_slot"], info["invalid_load"]) == (2, 1, 0)
    assert info["switched"] == 1 and info["bank_entries"] == 1 and env.bank.slots[1].owner == 0
    assert obs["pending"][0] == 0 and obs["occupied"].tolist() == [0, 1, 0]
    assert info["action_mask"].tolist() == [True, True, False, True, False, True] + [False] * K
    for _ in range(SMALL["phase_length"] - 1):  # task 1's phase ends
        obs, _, _, _, info = env.step(act(KEEP))
    # the pending entry (task 1) against the slot keys: task 0's only
    sims = obs["pending_similarity"]
    assert sims[0] == 0 and sims[2] == 0 and sims[1] == pytest.approx(
        env.bank.similarities(env._pending.key)[1])
    assert obs["similarity_pending"][0] == pytest.approx(
        float(env._embedding @ env._pending.key
              / np.linalg.norm(env._embedding) / np.linalg.norm(env._pending.key)), abs=1e-6)


def test_writes_drops_in_place_updates_and_evictions():
    env = make(n_cycles=3).unwrapped  # tasks 0 1 2 3 4, three times
    env.reset(seed=1)

    def phase(action: np.ndarray) -> dict:
        """The phase's first step takes ``action`` (its retention decides the pending entry)."""
        info = env.step(action)[-1]
        for _ in range(env.phase_length - 1):
            env.step(act(KEEP))
        return info

    phase(act(FRESH))                                 # task 0
    phase(act(FRESH, WRITE_OFFSET + 2))               # task 1; task 0 -> slot 2
    info = phase(act(FRESH, DROP))                    # task 2; task 1 dropped
    assert (info["retention"], info["stored_slot"], info["evicted_task"]) == (0, -1, -1)
    assert [e is None for e in env.bank.slots] == [True, True, False]
    info = phase(act(FRESH, WRITE_OFFSET + 2))        # task 3; task 2 over task 0's entry
    assert (info["stored_slot"], info["evicted_task"]) == (2, 0)
    assert env.bank.slots[2].owner == 2
    for _ in range(3):                                # tasks 4, 0, 1; 3, 4, 0 dropped
        phase(act(KEEP, DROP))
    info = phase(act(LOAD_OFFSET + 2, WRITE_OFFSET))  # task 2 loads its entry; 1 -> slot 0
    assert info["switched"] == 1 and env.bank.slots[0].owner == 1
    entry = env.bank.slots[2]
    assert entry.usage == 1
    order = entry.inserted_order
    info = env.step(act(KEEP, WRITE_OFFSET + 2))[-1]  # task 3; task 2 over its own entry
    assert (info["stored_slot"], info["evicted_task"]) == (2, -1)
    entry = env.bank.slots[2]
    assert (entry.owner, entry.usage, entry.inserted_order, entry.tasks_served) == (2, 1, order,
                                                                                    [2])
    # retention while nothing is pending: a flagged no-op, as a load of an empty slot is
    before = [id(e) for e in env.bank.slots]
    info = env.step(act(KEEP, WRITE_OFFSET + 1))[-1]
    assert (info["invalid_retention"], info["retention"], info["stored_slot"]) == (1, -1, -1)
    assert [id(e) for e in env.bank.slots] == before


@pytest.mark.parametrize("bad", [0, np.int64(1), [1], [1, 2, 3], [[0, 0]], [K + 2, 0], [-1, 0],
                                 [0, K + 1], [0, -1], [np.nan, 0], [1.5, 0], ["1", "0"],
                                 [True, False], None])
def test_invalid_actions_get_clear_errors(bad):
    env = make()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(bad)
    env.step([1.0, 0.0])  # integer-valued floats and lists are fine


def test_invalid_configuration():
    with pytest.raises(ValueError, match="pass reserve='owner'"):
        make(reserve="active")
    with pytest.raises(ValueError, match="retention must be one of"):
        make(retention="lru")
    with pytest.raises(ValueError, match="retention must be one of"):
        gym.make(CYCLIC, backend="analytic", retention=None)


def test_task_schedule_is_privileged_and_matches_the_stream():
    env = make(env_id=RECURRING).unwrapped
    with pytest.raises(gym.error.ResetNeeded):
        env.task_schedule()
    obs, info = env.reset(seed=5)
    schedule = env.task_schedule()
    assert schedule.dtype == np.int64 and schedule.shape == (env.n_phases,)
    schedule[0] = -7  # a copy
    seen, done = [], False
    while not done:
        obs, _, done, _, info = env.step(act(KEEP))
        if info["step_in_phase"] == 0:
            seen.append(info["task_id"])
    assert seen == env.task_schedule().tolist()
    assert not any("schedule" in k for k in (*obs, *info))
    # and it is there under retention="env" too
    plain = gym.make(RECURRING, backend="analytic", **SMALL).unwrapped
    plain.reset(seed=5)
    assert plain.task_schedule().tolist() == seen


def _random_trajectory(backend: str, seed: int) -> list:
    env = make(backend)
    rng = np.random.default_rng(11)
    obs, _ = env.reset(seed=seed)
    out, done = [], False
    while not done:
        mask = env.unwrapped.action_masks()
        a = rng.choice(np.flatnonzero(mask[:K + 2]))
        r = rng.choice(np.flatnonzero(mask[K + 2:]))
        obs, reward, term, trunc, info = env.step(act(a, r))
        out.append((int(a), int(r), reward, info["stored_slot"], info["evicted_task"],
                    obs["pending_similarity"].tolist(), obs["similarity_pending"].tolist()))
        done = term or trunc
    env.close()
    return out


@pytest.mark.parametrize("backend", ["analytic", "torch"])
def test_same_seed_same_trajectory(backend):
    assert _random_trajectory(backend, 4) == _random_trajectory(backend, 4)


def test_pickle_spec_and_vector_env():
    env = make("torch")
    assert env.spec.kwargs["retention"] == "agent"
    env.reset(seed=0)
    clone = pickle.loads(pickle.dumps(env.unwrapped))
    assert env.unwrapped.step(act(FRESH))[1] == clone.step(act(FRESH))[1]
    assert gym.spec(CYCLIC).kwargs.get("retention", "env") == "env"
    remade = gym.make(env.spec)
    assert remade.action_space == env.action_space
    envs = gym.make_vec(CYCLIC, num_envs=2, vectorization_mode="sync", backend="analytic",
                        retention="agent", **SMALL)
    envs.reset(seed=[0, 1])
    _, rewards, *_ = envs.step(np.array([[KEEP, DROP], [FRESH, DROP]]))
    assert rewards.shape == (2,)
    envs.close()


def test_render_names_the_write():
    env = make(render_mode="ansi")
    env.reset(seed=0)
    for _ in range(SMALL["phase_length"]):
        env.step(act(KEEP))
    env.step(act(KEEP, WRITE_OFFSET + 1))
    assert "write[1]" in env.render()


# ---------------------------------------------------------------------------- equal terms
class WhereTheEnvWould:
    """Privileged test agent: allocates like ``Oracle`` on the bank after the write, and writes
    the pending entry exactly where ``eviction="lru"`` would insert it (its own task's slot, else
    the lowest empty one, else the least recently used, ties by insertion order)."""

    def __init__(self, env):
        self.env = env

    def predict(self, obs):
        env = self.env
        r = DROP
        if env._pending is not None:
            owner = env._pending.owner
            slots = env.bank.slots
            own = next((k for k, e in enumerate(slots) if e is not None and e.owner == owner),
                       None)
            empty = [k for k, e in enumerate(slots) if e is None]
            slot = own if own is not None else empty[0] if empty else min(
                (k for k in range(len(slots))),
                key=lambda k: (slots[k].last_used_step, slots[k].inserted_order))
            r = WRITE_OFFSET + slot
        return act(self.allocation(r), r), None

    def allocation(self, r: int) -> int:
        env = self.env
        if env._t % env.phase_length:
            return KEEP
        task = env._stream.task_at(env._t)
        owners = {k: e.owner for k, e in enumerate(env.bank.slots) if e is not None}
        if r != DROP:
            owners[r - WRITE_OFFSET] = env._pending.owner
        slot = min((k for k, o in owners.items() if o == task), default=None)
        active = r - WRITE_OFFSET if r != DROP else env._active_slot
        if slot is None:
            return FRESH
        return KEEP if slot == active else LOAD_OFFSET + slot


class OracleOnTheEnv:
    """The same allocation on a ``retention="env"`` env (its bank already holds the reserve)."""

    def __init__(self, env):
        self.env = env

    def predict(self, obs):
        env = self.env
        if env._t % env.phase_length:
            return KEEP, None
        slot = env.bank.view.owner_slot.get(env._stream.task_at(env._t))
        if slot is None:
            return FRESH, None
        return (KEEP if slot == env._active_slot else LOAD_OFFSET + slot), None


@pytest.mark.parametrize("env_id", [CYCLIC, RECURRING])
@pytest.mark.parametrize("capacity", [2, 3])
def test_deferring_the_reserve_is_reward_neutral(env_id, capacity):
    kw = dict(backend="analytic", phase_length=5, n_cycles=4, capacity=capacity,
              learner={"eval_samples": 50})  # noisy evaluation: the RNG streams must agree too
    for seed in range(3):
        agent = gym.make(env_id, retention="agent", **kw).unwrapped
        plain = gym.make(env_id, eviction="lru", **kw).unwrapped
        evicted: dict[str, list[int]] = {"agent": [], "env": []}
        a = episode(agent, WhereTheEnvWould(agent), seed,
                    lambda _, i, log=evicted["agent"]: log.append(i["evicted_task"]))
        b = episode(plain, OracleOnTheEnv(plain), seed,
                    lambda _, i, log=evicted["env"]: log.append(i["evicted_task"]))
        assert a == b  # exactly
        # the same evictions, each reported one step later (at the write), but the last phase's
        # (an agent never decides it)
        assert [e for e in evicted["agent"] if e >= 0] == [e for e in evicted["env"][:-1]
                                                           if e >= 0]


@pytest.mark.parametrize("rule, eviction", [("pin", "reject"), ("lfu-retain", "lfu"),
                                            ("lru-retain", "lru")])
@pytest.mark.parametrize("env_id", [CYCLIC, RECURRING])
def test_rules_equal_the_envs_own_eviction_on_the_analytic_backend(rule, eviction, env_id):
    kw = dict(backend="analytic", n_cycles=4, capacity=3)
    agent = gym.make(env_id, retention="agent", **kw)
    plain = gym.make(env_id, eviction=eviction, **kw)
    for seed in range(3):
        assert episode(agent, make_agent(rule), seed) == episode(plain, make_agent("similarity"),
                                                                 seed)


def _hits_per_cycle(rule: str, tasks: str, n_tasks: int, capacity: int, n_cycles: int,
                    seed: int) -> list:
    env = gym.make(CYCLIC, backend="analytic", tasks=tasks, n_tasks=n_tasks, capacity=capacity,
                   n_cycles=n_cycles, phase_length=10, retention="agent").unwrapped
    hits = np.zeros(n_cycles, dtype=int)

    def on_step(action, info):  # a hit: the phase starts by loading its own task's entry
        if info["step_in_phase"] == 0 and info["switched"] and action[0] >= LOAD_OFFSET:
            if env.bank.slots[action[0] - LOAD_OFFSET].owner == info["task_id"]:
                assert info["is_revisit"] and info["zero_shot_accuracy"] > 0.8
                hits[info["phase"] // n_tasks] += 1

    episode(env, make_agent(rule), seed, on_step)
    return hits.tolist()


@pytest.mark.parametrize("tasks, n_tasks, capacity, lru_hits", [("split_digits", 5, 3, 0),
                                                                ("split_digits", 5, 2, 0),
                                                                ("permuted_digits", 4, 1, 0),
                                                                ("permuted_digits", 8, 5, 1)])
def test_pinning_hits_k_tasks_per_cycle_and_lru_none(tasks, n_tasks, capacity, lru_hits):
    """Theorem 3's setting: a strict cycle with K < M. Pinning hits K tasks in every cycle after
    the first; LRU retention evicts each entry just before its task returns, unless recall loads
    another task's entry (a use that keeps it: one task per cycle with these 8 analytic keys)."""
    for seed in range(2):
        hits = _hits_per_cycle("pin", tasks, n_tasks, capacity, 4, seed)
        assert hits == [0] + [capacity] * 3
        lru = _hits_per_cycle("lru-retain", tasks, n_tasks, capacity, 4, seed)
        assert lru == [0] + [lru_hits] * 3


# ---------------------------------------------------------------------------- the rules
def test_rules_by_name_and_their_actions():
    assert sorted(RETENTION_AGENTS) == ["lfu-retain", "lru-retain", "pin"]
    env = make(n_cycles=3)
    for name in RETENTION_AGENTS:
        rule = make_agent(name, same_task=0.9)
        assert rule.name == name and rule.same_task == 0.9
        rule.reset(0)
        obs, _ = env.reset(seed=0)
        done = False
        while not done:
            action, _ = rule.predict(obs)
            assert action.shape == (2,) and action.dtype == np.int64
            mask = env.unwrapped.action_masks()
            assert mask[action[0]] and mask[K + 2 + action[1]]
            obs, _, done, _, info = env.step(action)
            assert info["invalid_retention"] == 0 and info["invalid_load"] == 0
    plain = gym.make(CYCLIC, backend="analytic", **SMALL)
    obs, _ = plain.reset(seed=0)
    with pytest.raises(ValueError, match="retention='agent'"):
        make_agent("pin").predict(obs)
    with pytest.raises(ValueError, match="lru-retain"):
        make_agent("nope")


def test_own_slot_and_after_write():
    obs = {"occupied": np.array([1, 1, 0], np.float32),
           "pending_similarity": np.array([0.3, 0.95, 0.0], np.float32),
           "similarity": np.array([0.1, 0.2, 0.0], np.float32),
           "similarity_pending": np.array([0.7], np.float32),
           "active": np.array([0, 1, 0, 0], np.float32), "pending": np.ones(1, np.float32)}
    assert own_slot(obs) == 1 and own_slot(obs, threshold=0.99) is None
    after = after_write(obs, WRITE_OFFSET + 2)
    assert after["occupied"].tolist() == [1, 1, 1] and after["similarity"][2] == np.float32(0.7)
    assert after["active"].tolist() == [0, 0, 0, 1] and obs["occupied"][2] == 0  # not changed
    assert after_write(obs, DROP)["active"].tolist() == [1, 0, 0, 0]


# ---------------------------------------------------------------------------- learning
def _train(monkeypatch, tmp_path, algo: str, backend: str, timesteps: int) -> str:
    from nsr_gym.cli import main

    out = tmp_path / f"{algo}-{backend}"
    args = ["train", "--algo", algo, "--backend", backend, "--timesteps", str(timesteps),
            "--n-envs", "1", "--n-evals", "1", "--out", str(out), "--env-kwargs",
            '{"capacity": 3, "retention": "agent", "phase_length": 4, "n_cycles": 2}',
            "--hyperparams", '{"n_steps": 40, "batch_size": 40, "n_epochs": 1}']
    monkeypatch.setattr(sys, "argv", ["nsr-gym", *args])
    assert main(args) == 0
    return str(out)


@pytest.mark.parametrize("algo, backend", [("maskable-ppo", "analytic"), ("ppo", "analytic"),
                                           ("maskable-ppo", "torch")])
def test_training_through_the_cli(monkeypatch, tmp_path, capsys, algo, backend):
    import json

    out = _train(monkeypatch, tmp_path, algo, backend, 80)
    assert "wrote" in capsys.readouterr().out
    config = json.loads((tmp_path / f"{algo}-{backend}" / "config.json").read_text())
    assert config["action_nvec"] == [K + 2, K + 1] and config["n_actions"] == 2 * K + 3
    policy = make_agent(f"{algo}:{out}")
    env = make(backend)
    obs, info = env.reset(seed=0)
    done = False
    while not done:
        action, _ = policy.predict(obs)
        assert action.shape == (2,)
        if algo == "maskable-ppo":  # never a masked action
            assert info["action_mask"][action[0]] and info["action_mask"][K + 2 + action[1]]
        obs, _, done, _, info = env.step(action)
