"""The clairvoyant: its planned value is the exact optimum over all action sequences.

(a) Against an independent step-level brute force of the env's semantics on the analytic model
(every action at every step, mid-phase ones included, memoised on the full state), on small
settings, to 1e-9; the plan's actions replayed in the same simulator earn exactly the planned
value. (b) Against the real analytic env: the rollout earns exactly the planned return and no
rule beats it, with ``retention="env"`` (``K >= M``) and ``retention="agent"`` (``K < M``; those
tests skip, saying why, on an env that does not take ``retention``).
"""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym.agents import (
    AlwaysFresh,
    Clairvoyant,
    KeepCurrent,
    Oracle,
    PlanningProblem,
    SimilarityRule,
    rollout,
)
from nsr_gym.agents.clairvoyant import plan
from nsr_gym.learners import AnalyticConfig
from nsr_gym.theory import CyclicSetting, ExpCurve
from nsr_gym.theory.capacity import bank_inf_return, capacity_lower_bound

ENV_ID = "nsr_gym/CyclicSplitDigits-v0"


# --------------------------------------------------------------------------- the brute force


@dataclasses.dataclass(frozen=True)
class Setting:
    schedule: tuple[int, ...]
    M: int
    K: int
    L: int
    U: int = 1
    lam: float = 0.05
    w: float = 1.0
    a_star: float | tuple[float, ...] = 0.95
    D: float | tuple[float, ...] = 0.6
    tau: float | tuple[float, ...] = 2.0
    gamma: float = 0.0
    kappa: float = 1.0
    transfer: float = 0.0
    retention: str = "agent"

    def problem(self) -> PlanningProblem:
        cfg = AnalyticConfig(a_star=self.a_star, D=self.D, tau=self.tau, gamma=self.gamma,
                             kappa=self.kappa, transfer=self.transfer, eval_samples=0)
        return PlanningProblem(np.array(self.schedule), self.M, self.K, self.L, self.U, self.lam,
                               self.w, cfg, self.retention)

    def per_task(self, v) -> np.ndarray:
        return np.broadcast_to(np.asarray(v, dtype=np.float64), (self.M,))


class StepSim:
    """The env's semantics, one step at a time, written from the spec (no AnalyticLearner)."""

    def __init__(self, s: Setting) -> None:
        self.s = s
        self.a, self.D, self.tau = s.per_task(s.a_star), s.per_task(s.D), s.per_task(s.tau)

    def pending(self, t: int) -> bool:
        """A compressed subspace awaits its retention decision (first step of phases 1..)."""
        return t > 0 and t % self.s.L == 0

    def step(self, t, h, slots, a0, a1):
        """One step: retention, allocation, U updates, reward. Returns (reward, h, slots)."""
        s = self.s
        m = s.schedule[t // s.L]
        if a1:
            assert self.pending(t) and s.retention == "agent"
            slots = slots[:a1 - 1] + (s.kappa * h,) + slots[a1:]
        elif self.pending(t) and s.retention == "env":
            owner = s.schedule[t // s.L - 1]
            k = self.owners[owner] if owner in self.owners else len(self.owners)
            self.owners.setdefault(owner, k)
            slots = slots[:k] + (s.kappa * h,) + slots[k + 1:]
        switched = a0 == 1 or (a0 >= 2 and slots[a0 - 2] is not None)
        if a0 == 1:
            h = np.zeros(s.M)
        elif switched:
            h = slots[a0 - 2].copy()
        else:
            h = h.copy()
        for _ in range(s.U):
            own = h[m]
            h = h * s.gamma + s.transfer
            h[m] = own + 1.0
        acc = self.a[m] - self.D[m] * math.exp(-h[m] / self.tau[m])
        return s.w * acc - s.lam * switched, h, slots

    def replay(self, actions: np.ndarray) -> float:
        self.owners: dict[int, int] = {}
        h, slots, total = np.zeros(self.s.M), (None,) * self.s.K, 0.0
        for t, (a0, a1) in enumerate(actions):
            r, h, slots = self.step(t, h, slots, int(a0), int(a1))
            total += r
        return total


def _key(v) -> tuple:
    return None if v is None else tuple(np.round(v, 10).tolist())


def brute_force(s: Setting) -> float:
    """The best return over every action sequence (retention="agent"), memoised on the state."""
    sim, n = StepSim(s), len(s.schedule) * s.L
    memo: dict[tuple, float] = {}

    def value(t: int, h: np.ndarray, slots: tuple) -> float:
        if t == n:
            return 0.0
        key = (t, _key(h), tuple(_key(v) for v in slots))
        if key not in memo:
            best = -math.inf
            writes = range(s.K + 1) if sim.pending(t) else (0,)
            for a1 in writes:
                after = slots if a1 == 0 else slots[:a1 - 1] + (s.kappa * h,) + slots[a1:]
                loads = [2 + k for k, v in enumerate(after) if v is not None]
                for a0 in [0, 1, *loads]:
                    r, h2, slots2 = sim.step(t, h, slots, a0, a1)
                    best = max(best, r + value(t + 1, h2, slots2))
            memo[key] = best
        return memo[key]

    return value(0, np.zeros(s.M), (None,) * s.K)


def _cyclic(M: int, C: int) -> tuple[int, ...]:
    return tuple(int(p % M) for p in range(M * C))


def _recurring(M: int, n: int, seed: int) -> tuple[int, ...]:
    return tuple(int(x) for x in np.random.default_rng(seed).integers(0, M, size=n))


SETTINGS = {
    "cyc-M3-K1-C3-L2": Setting(_cyclic(3, 3), 3, 1, 2),
    "cyc-M3-K2-C2-L3-lam0-k0.6": Setting(_cyclic(3, 2), 3, 2, 3, lam=0.0, kappa=0.6),
    "cyc-M3-K1-C3-L3-k0.6": Setting(_cyclic(3, 3), 3, 1, 3, lam=0.03, kappa=0.6),
    "cyc-M4-K2-C2-L2-lam>Delta": Setting(_cyclic(4, 2), 4, 2, 2, lam=0.5),
    "cyc-M4-K2-C3-L2-k0.8": Setting(_cyclic(4, 3), 4, 2, 2, lam=0.1, kappa=0.8),
    "cyc-M4-K1-C3-L2-U2": Setting(_cyclic(4, 3), 4, 1, 2, U=2, lam=0.2, tau=3.0),
    "rec-M3-K2-n7-L2-k0.7-U2": Setting(_recurring(3, 7, 1), 3, 2, 2, U=2, kappa=0.7),
    "rec-M4-K1-n8-L3-transfer": Setting(_recurring(4, 8, 2), 4, 1, 3, lam=0.02, transfer=0.3,
                                        w=2.0),
    "rec-M4-K2-n7-L2-lam0": Setting(_recurring(4, 7, 3), 4, 2, 2, lam=0.0, kappa=0.5),
    "cyc-M3-K2-C3-L2-per-task": Setting(_cyclic(3, 3), 3, 2, 2, a_star=(0.9, 0.97, 0.8),
                                        D=(0.5, 0.7, 0.3), tau=(1.0, 3.0, 2.0), lam=0.15),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_plan_equals_the_brute_force_optimum(name):
    s = SETTINGS[name]
    pl = plan(s.problem())
    assert pl.exact and pl.method == "dp" and pl.reasons == ()
    assert pl.value == pytest.approx(brute_force(s), abs=1e-9)
    # the actions name real slots: replayed step by step they earn the planned value
    assert StepSim(s).replay(pl.actions) == pytest.approx(pl.value, abs=1e-9)
    L = s.L
    assert np.all(pl.actions[np.arange(len(pl.actions)) % L != 0] == 0)  # KEEP inside phases
    assert pl.actions[0, 1] == 0  # nothing pending at the start


def test_with_forgetting_the_plan_is_flagged_and_never_above_the_optimum():
    s = dataclasses.replace(SETTINGS["cyc-M3-K1-C3-L2"], gamma=0.6, lam=0.01)
    pl = plan(s.problem())
    assert not pl.exact and any("gamma" in r for r in pl.reasons)
    assert StepSim(s).replay(pl.actions) == pytest.approx(pl.value, abs=1e-9)
    assert pl.value <= brute_force(s) + 1e-9


def test_the_heuristic_fallback_is_flagged_and_replays():
    for name in ("cyc-M4-K2-C3-L2-k0.8", "rec-M4-K1-n8-L3-transfer"):
        s = SETTINGS[name]
        exact, heur = plan(s.problem()), plan(s.problem(), max_states=5)
        assert heur.method == "heuristic" and not heur.exact
        assert StepSim(s).replay(heur.actions) == pytest.approx(heur.value, abs=1e-9)
        assert heur.value <= exact.value + 1e-9


@pytest.mark.parametrize(("M", "C"), [(3, 2), (2, 3)])
def test_env_retention_plan_equals_brute_force_over_env_storage(M, C):
    s = Setting(_cyclic(M, C), M, M, 2, lam=0.05, kappa=0.7, retention="env")
    pl = plan(s.problem())
    assert pl.exact and np.all(pl.actions[:, 1] == 0)
    assert StepSim(s).replay(pl.actions) == pytest.approx(pl.value, abs=1e-9)
    # with K >= M and env storage, agent retention cannot do better (it can write in place too)
    agent = dataclasses.replace(s, retention="agent")
    assert pl.value == pytest.approx(brute_force(agent), abs=1e-9)
    with pytest.raises(ValueError, match="retention='agent'"):
        dataclasses.replace(s, K=M - 1).problem()


@pytest.mark.parametrize(("M", "K", "C", "L", "lam", "kappa"), [
    (4, 2, 3, 4, 0.05, 1.0), (5, 2, 3, 3, 0.1, 0.7), (4, 3, 3, 5, 0.0, 0.5),
    (5, 3, 3, 3, 0.2, 1.0)])
def test_theorem3_the_clairvoyant_meets_the_capacity_bound(M, K, C, L, lam, kappa):
    """On a strict cycle with Delta_min >= lam the optimum's regret against B_inf is exactly
    Theorem 3's (M - K) sum_c (Delta_c - lam), attained by pinning with keep-on-miss."""
    a, D, tau = 0.93, 0.55, 2.0
    s = Setting(_cyclic(M, C), M, K, L, lam=lam, kappa=kappa, a_star=a, D=D, tau=tau)
    th = CyclicSetting(M, L, C, ExpCurve(a, D, tau), lam, kappa)
    regret = float(bank_inf_return(th).sum()) - plan(s.problem()).value
    assert regret == pytest.approx(capacity_lower_bound(th, K).exact, abs=1e-9)


# --------------------------------------------------------------------------- the real env

LEARNER = dict(a_star=0.93, D=0.55, tau=3.0, gamma=0.0, transfer=0.0, eval_samples=0,
               probe_noise=0.01)


@pytest.mark.parametrize("schedule", ["cyclic", "recurring"])
def test_env_storage_rollout_earns_the_plan_and_beats_every_rule(schedule):
    env = gym.make(ENV_ID, backend="analytic", n_cycles=3, phase_length=6, schedule=schedule,
                   lambda_switch=0.05, learner=dict(LEARNER, kappa=0.8))
    for seed in range(3):
        cv = Clairvoyant()
        got = rollout(env, cv, seed=seed)["reward"].sum()
        assert cv.exact and got == pytest.approx(cv.plan.value, abs=1e-9)
        for rule in (KeepCurrent(), AlwaysFresh(), SimilarityRule(), Oracle("keep"), Oracle()):
            assert rollout(env, rule, seed=seed)["reward"].sum() <= got + 1e-9
    env.close()


class RetentionWrapper:
    """A rule's allocation plus a simple retention: write the pending subspace into the lowest
    empty slot, else over the oldest one (``lru``) or drop it (``pin``)."""

    def __init__(self, rule, retention: str, L: int) -> None:
        self.rule, self.retention, self.L, self.name = rule, retention, L, rule.name
        self._t = 0

    def reset(self, seed=None):
        self._t = 0
        self.rule.reset(seed)

    def observe(self, info):
        self.rule.observe(info)

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        a0 = int(np.asarray(self.rule.predict(obs)[0]).reshape(-1)[0])
        a1 = 0
        if self._t > 0 and self._t % self.L == 0:
            empty = np.flatnonzero(obs["occupied"] == 0)
            if len(empty):
                a1 = 1 + int(empty[0])
            elif self.retention == "lru":
                a1 = 1 + int(np.argmax(obs["age"]))
        self._t += 1
        return np.array([a0, a1], dtype=np.int64), state


def _agent_env(**kw) -> gym.Env:
    try:
        return gym.make(ENV_ID, backend="analytic", retention="agent", **kw)
    except (TypeError, ValueError) as err:
        if "retention" not in str(err):
            raise
        pytest.skip(f"the env does not take retention='agent' yet: {err}")


@pytest.mark.parametrize(("K", "schedule"), [(2, "cyclic"), (3, "cyclic"), (2, "recurring")])
def test_agent_retention_rollout_earns_the_plan(K, schedule):
    env = _agent_env(capacity=K, n_cycles=3, phase_length=5, schedule=schedule,
                     lambda_switch=0.05, learner=dict(LEARNER, kappa=0.8))
    assert isinstance(env.action_space, gym.spaces.MultiDiscrete)
    for seed in range(5):
        cv = Clairvoyant()
        got = rollout(env, cv, seed=seed)["reward"].sum()
        assert cv.exact and got == pytest.approx(cv.plan.value, abs=1e-9)
        for rule in (KeepCurrent(), AlwaysFresh(), SimilarityRule()):
            for retention in ("lru", "pin"):
                agent = RetentionWrapper(rule, retention, 5)
                assert rollout(env, agent, seed=seed)["reward"].sum() <= got + 1e-9
        for agent in _retention_rules():
            assert rollout(env, agent, seed=seed)["reward"].sum() <= got + 1e-9, agent.name
    env.close()


def _retention_rules() -> list:
    """The project's retention rules (pin, LFU, LRU through the action), where they exist."""
    try:
        from nsr_gym.agents.retention import RETENTION_AGENTS
    except ImportError:
        return []
    return [make() for make in RETENTION_AGENTS.values()]


def test_agent_retention_heuristic_and_noise_are_flagged_and_replay_in_the_env():
    env = _agent_env(capacity=2, n_cycles=3, phase_length=4, schedule="recurring",
                     lambda_switch=0.05, learner=dict(LEARNER, kappa=0.8))
    cv = Clairvoyant(max_states=10)
    got = rollout(env, cv, seed=1)["reward"].sum()
    assert cv.plan.method == "heuristic" and not cv.exact
    assert got == pytest.approx(cv.plan.value, abs=1e-9)  # the heuristic's plan, on the model
    assert got <= rollout(env, Clairvoyant(), seed=1)["reward"].sum() + 1e-9
    env.close()
    noisy = _agent_env(capacity=2, n_cycles=2, phase_length=3,
                       learner=dict(LEARNER, eval_samples=50))
    cv = Clairvoyant()
    rollout(noisy, cv, seed=0)
    assert not cv.exact and any("noise" in r for r in cv.plan.reasons)
    noisy.close()


def test_agent_retention_plan_matches_the_brute_force_in_the_env():
    env = _agent_env(n_tasks=5, capacity=2, n_cycles=2, phase_length=2, lambda_switch=0.1,
                     learner=dict(LEARNER, tau=2.0, kappa=0.7))
    cv = Clairvoyant()
    got = rollout(env, cv, seed=0)["reward"].sum()
    s = Setting(_cyclic(5, 2), 5, 2, 2, lam=0.1, a_star=0.93, D=0.55, tau=2.0, kappa=0.7)
    assert got == pytest.approx(brute_force(s), abs=1e-9)
    env.close()


# --------------------------------------------------------------------------- the policy itself


def test_unbound_clairvoyant_refuses_to_guess():
    with pytest.raises(RuntimeError, match="bind"):
        Clairvoyant().predict({})


def test_torch_backend_plans_an_approximation():
    env = gym.make(ENV_ID, backend="torch", n_cycles=1, phase_length=2)
    env.reset(seed=0)
    pb = PlanningProblem.from_env(env)
    assert not pb.model_is_env and pb.config == AnalyticConfig()
    pl = plan(pb)
    assert not pl.exact and any("analytic model" in r for r in pl.reasons)
    env.close()


class _MultiEnv(gym.Env):
    """Three steps of a MultiDiscrete action space, recording what it was given."""

    action_space = gym.spaces.MultiDiscrete([4, 3])
    observation_space = gym.spaces.Box(0, 1, (1,))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.got, self.t = [], 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.got.append(action)
        self.t += 1
        return np.zeros(1, np.float32), 1.0, self.t >= 3, False, {}


class _Fixed:
    name = "fixed"

    def __init__(self):
        self.bound = 0

    def bind(self, env):
        self.bound += 1

    def predict(self, obs, state=None, episode_start=None, deterministic=True):
        return np.array([3, 2]), state


def test_rollout_passes_multidiscrete_actions_and_binds():
    env, policy = _MultiEnv(), _Fixed()
    log = rollout(env, policy, seed=0)
    assert policy.bound == 1
    assert all(a.shape == (2,) and a.dtype == np.int64 and a.tolist() == [3, 2] for a in env.got)
    assert log["action"].tolist() == [3, 3, 3]
