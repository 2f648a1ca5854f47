"""What ``nsr-gym regret --capacity K --retention-rule RULE`` computes: Theorem 3 (capacity)
checked on the env, with the paired seeds, seed bootstrap and one-sided verdicts of Theorem 1's
study (:mod:`nsr_gym.studies.regret`).

On a strict cycle of ``M`` tasks with a bank of ``K < M`` slots, every agent runs on the same
seeds as the comparator ``bank-inf``: THEORY.md's Bank oracle ``Oracle(first_visit="keep")``
with an unbounded bank (``capacity = M``), the ``B_inf`` of Theorem 3. How each retention rule
(``theory.capacity.RETENTION_RULES``) maps onto the env (:data:`RULE_ENV`):

=========  ==================================================================================
``pin``    ``retention="env"``, ``eviction="reject"``: admission control, the first ``K`` tasks
           keep their entries (updated in place) and nothing else is stored (the ``pin``
           retention agent under ``retention="agent"`` does the same, with its own allocation)
``lru``    ``retention="env"``, ``eviction="lru"`` (forced insertion; loads count as uses)
``fifo``   ``retention="env"``, ``eviction="fifo"`` (forced insertion)
``belady`` ``retention="agent"``: every agent's allocation with :class:`BeladyRetention`'s
           writes (forced insertion: in place, else an empty slot, else over the resident
           whose task comes back last; it reads the schedule, as the clairvoyant does)
=========  ==================================================================================

``bank`` is the oracle allocation (LOAD the task's own entry when the bank holds it, KEEP
otherwise) under the rule; the memoryless rules and the similarity rule run under it too;
``clairvoyant`` always runs with ``retention="agent"`` and plans its own retention (the rule
does not apply to it). Each ``(agent, seed)`` episode is one executor unit reduced to phase
records plus ``hit`` (the phase's first action loaded an entry of its own task);
``theory.capacity_protocol.analyse_capacity`` turns them into verdicts and
:func:`nsr_gym.studies.regret_report.write_capacity_outputs` writes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.executors import FrameStore, Sweep, Unit, config_hash
from nsr_gym.studies import regret as rg

COMPARATOR = "bank-inf"
CAPACITY_AGENTS = (COMPARATOR, rg.BANK, "always-fresh", "keep-current", "fixed-slot",
                   "random-slot", "similarity", "clairvoyant")
#: Retention rule -> the env options that realise it (module docstring).
RULE_ENV: dict[str, dict[str, Any]] = {
    "pin": {"retention": "env", "eviction": "reject"},
    "lru": {"retention": "env", "eviction": "lru"},
    "fifo": {"retention": "env", "eviction": "fifo"},
    "belady": {"retention": "agent"},
}
#: The bound each agent attains by the theorems, per rule (``T3``: (M - K)(Delta - lam)).
CLAIMS = {"pin": {rg.BANK: "T3"}, "lru": {rg.BANK: "M0"}, "fifo": {rg.BANK: "M0"}, "belady": {}}
COLUMNS = [*rg.RECORD_COLUMNS, "hit"]


@dataclass(frozen=True)
class CapacityConfig:
    """Settings of one ``nsr-gym regret --capacity`` study; ``None`` takes the default."""

    capacity: int
    """``K``, bank slots; ``1 <= K < M``."""
    rule: str
    """Retention rule, one of ``theory.capacity.RETENTION_RULES``."""
    backend: str = "analytic"
    seeds: tuple[int, ...] | None = None
    """Seeds (default 200 analytic, 10 torch; ``quick``: 8 / 2)."""
    tasks: int = 5
    cycles: int | None = None
    phase_length: int | None = None
    lam: float = 0.05
    family: str | None = None
    learner: dict[str, Any] = field(default_factory=dict)
    agents: tuple[str, ...] = CAPACITY_AGENTS
    """Agents; must include ``bank-inf`` and ``always-fresh``."""
    resamples: int = 2000
    tol: float = 0.05
    max_width: float | None = 0.5
    steps_log: bool = False
    out: str | None = None
    """Output folder (default ``results/[quick/]regret/capacity/<backend>/<rule>_K<K>``)."""
    quick: bool = False
    sweep: Sweep = field(default_factory=Sweep)


@dataclass(frozen=True)
class CapacityPlan:
    """A checked :class:`CapacityConfig`."""

    setup: rg.Setup
    """The strict cycle (``agents`` are the capacity study's)."""
    K: int
    rule: str
    seeds: list[int]
    out: Path
    config: CapacityConfig

    def env_kwargs(self, agent: str) -> dict[str, Any]:
        """The ``gym.make`` keywords of ``agent``'s runs."""
        kw = self.setup.env_kwargs()
        if agent == COMPARATOR:
            return kw
        if agent == "clairvoyant":
            return {**kw, "capacity": self.K, "retention": "agent"}
        return {**kw, "capacity": self.K, **RULE_ENV[self.rule]}


def plan_capacity(cfg: CapacityConfig) -> CapacityPlan:
    """Check ``cfg`` and resolve its defaults, making each env once.

    Raises:
        ValueError: ``K`` outside ``1..M-1``, an unknown rule or agent, a missing agent, fewer
            than 3 cycles, or an env configuration error.
    """
    from nsr_gym.agents import RULE_AGENTS
    from nsr_gym.theory.capacity import RETENTION_RULES

    if cfg.rule not in RETENTION_RULES:
        raise ValueError(f"unknown retention rule {cfg.rule!r}; known: {RETENTION_RULES}")
    if not 1 <= cfg.capacity < cfg.tasks:
        raise ValueError(f"--capacity must be in 1..{cfg.tasks - 1} (K < M = {cfg.tasks}): "
                         "Theorem 3 is about a bank smaller than the cycle")
    known = {COMPARATOR, rg.BANK, "clairvoyant", *RULE_AGENTS}
    unknown = [a for a in cfg.agents if a not in known]
    missing = [a for a in (COMPARATOR, "always-fresh") if a not in cfg.agents]
    if unknown:
        raise ValueError(f"unknown agent(s) {unknown}; known: {', '.join(sorted(known))}")
    if missing:
        raise ValueError(f"--agents must include {missing}")
    base = rg.plan_regret(rg.RegretConfig(
        backend=cfg.backend, seeds=cfg.seeds, tasks=cfg.tasks, cycles=cfg.cycles,
        phase_length=cfg.phase_length, lam=cfg.lam, family=cfg.family, learner=cfg.learner,
        quick=cfg.quick))
    s = base.setup
    setup = rg.Setup(s.backend, s.M, s.L, s.C, s.lam, s.family, s.learner, tuple(cfg.agents))
    out = Path(cfg.out or (Path("results") / ("quick" if cfg.quick else "") / "regret"
                           / "capacity" / cfg.backend / f"{cfg.rule}_K{cfg.capacity}"))
    plan = CapacityPlan(setup, cfg.capacity, cfg.rule, base.seeds, out, cfg)
    for agent in {a if a in (COMPARATOR, "clairvoyant") else rg.BANK for a in cfg.agents}:
        try:
            make_env(plan.env_kwargs(agent)).close()
        except (ValueError, TypeError) as err:
            raise ValueError(str(err)) from err
    return plan


def make_env(env_kwargs: dict[str, Any]) -> Any:
    import gymnasium as gym

    import nsr_gym  # noqa: F401 - registers the envs

    return gym.make(rg.ENV_ID, **env_kwargs)


# ------------------------------------------------------------------------------------- agents
class BeladyRetention:
    """Belady's eviction with forced insertion, as an agent's retention (``retention="agent"``)
    around any allocation policy.

    A pending entry goes over its own task's entry when it has one, else into the lowest empty
    slot, else over the resident whose task comes back last (ties: the lowest slot): the env's
    semantics of ``theory.capacity.simulate_capacity(..., "belady")``. It reads the schedule in
    :meth:`bind` (privileged, as the clairvoyant's), and the inner policy chooses the allocation
    on the observation as it will be after the write (``agents.retention.after_write``).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "policy")
        self.memory_class = getattr(inner, "memory_class", "history")
        self._owner: dict[int, int] = {}
        self._schedule = np.zeros(0, dtype=np.int64)
        self._phase, self._K = 0, 1

    def reset(self, seed: int | None = None) -> None:
        if hasattr(self.inner, "reset"):
            self.inner.reset(seed)
        self._owner, self._phase = {}, 0

    def bind(self, env: Any) -> None:
        u = env.unwrapped
        self._schedule, self._K = u.task_schedule(), int(u.capacity)
        if hasattr(self.inner, "bind"):
            self.inner.bind(env)

    def observe(self, info: dict[str, Any]) -> None:
        if hasattr(self.inner, "observe"):
            self.inner.observe(info)

    def retain(self, task: int, phase: int) -> int:
        """The slot (``0..K-1``) the entry of ``task``, trained in phase ``phase - 1``, goes to."""
        own = [k for k, t in self._owner.items() if t == task]
        if own:
            return own[0]
        empty = [k for k in range(self._K) if k not in self._owner]
        if empty:
            return empty[0]
        nxt = [self._next_use(self._owner[k], phase) for k in range(self._K)]
        return int(np.argmax(nxt))

    def _next_use(self, task: int, phase: int) -> float:
        later = np.flatnonzero(self._schedule[phase:] == task)
        return float(phase + later[0]) if len(later) else float("inf")

    def predict(self, observation: dict[str, np.ndarray], state: Any = None,
                episode_start: Any = None, deterministic: bool = True) -> tuple[np.ndarray, Any]:
        from nsr_gym.agents.retention import after_write
        from nsr_gym.envs import DROP, WRITE_OFFSET

        retention = DROP
        if observation["pending"][0] > 0:
            self._phase += 1
            task = int(self._schedule[self._phase - 1])
            slot = self.retain(task, self._phase)
            self._owner[slot] = task
            retention = WRITE_OFFSET + slot
        action, state = self.inner.predict(after_write(observation, retention), state,
                                           episode_start, deterministic)
        return np.array([int(np.asarray(action).reshape(-1)[0]), retention], np.int64), state


def make_capacity_agent(name: str, rule: str) -> Any:
    """``bank-inf`` / ``bank``: ``Oracle(first_visit="keep")``; else ``agents.make_agent``;
    wrapped in :class:`BeladyRetention` under ``belady`` (the clairvoyant excepted)."""
    from nsr_gym.agents import Oracle, make_agent

    policy = Oracle(first_visit="keep") if name in (COMPARATOR, rg.BANK) else make_agent(name)
    if rule == "belady" and name not in (COMPARATOR, "clairvoyant"):
        return BeladyRetention(policy)
    return policy


def agent_class(name: str) -> str:
    if name in (COMPARATOR, rg.BANK):
        return "oracle"
    return "clairvoyant" if name == "clairvoyant" else rg.agent_class(name)


# ------------------------------------------------------------------------------------- running
class _HitLog:
    """``before_step`` hook: at each phase start, whether the allocation loaded an entry owned
    by the phase's task (a load of the slot the same step writes is the pending, other task's)."""

    def __init__(self, env: Any) -> None:
        self.env, self.hits = env, []

    def __call__(self, obs: Any, info: dict[str, Any], action: Any) -> None:
        if not info.get("next_is_phase_start", 0):
            return
        a = np.asarray(action).reshape(-1)
        alloc, hit = int(a[0]), 0
        if alloc >= 2 and not (len(a) > 1 and int(a[1]) - 1 == alloc - 2):
            entry = self.env.unwrapped.bank.slots[alloc - 2]
            task = self.env.unwrapped.oracle_info()["next_task_id"]
            hit = int(entry is not None and entry.owner == int(task))
        self.hits.append(hit)


def capacity_unit(unit: Unit) -> tuple[pd.DataFrame, float]:
    """One ``(agent, seed)`` rollout as phase records with ``hit``, and its rollout seconds."""
    from nsr_gym.agents import rollout
    from nsr_gym.studies.benchmark import cached_env

    s = unit.setting
    env = cached_env(rg.ENV_ID, s["env_kwargs"])
    hook = _HitLog(env)
    t0 = time.perf_counter()
    log = rollout(env, make_capacity_agent(unit.agent, s["rule"]), unit.seed,
                  agent_name=unit.agent, before_step=hook)
    seconds = time.perf_counter() - t0
    rec = rg.phase_record(log, unit.agent, unit.seed, s["M"], s["L"], curves=s["curves"])
    rec.insert(len(rg.RECORD_COLUMNS), "hit", np.asarray(hook.hits[:len(rec)], dtype=np.int64))
    return rec, seconds


class _CapacityStore(FrameStore):
    """A unit's records as ``<agent>__seed<seed>.csv`` (the regret study's store, plus ``hit``)."""

    def __init__(self, folder: Path, plan: CapacityPlan) -> None:
        super().__init__(folder, name=lambda u: f"{u.agent}__seed{u.seed}", check=self._check)
        self.plan = plan

    def _check(self, frame: pd.DataFrame, unit: Unit) -> str | None:
        st = self.plan.setup
        curves = [f"acc_{s}" for s in range(1, st.L + 1)] if unit.setting["curves"] else []
        if list(frame.columns) != COLUMNS + curves:
            return "other columns"
        if len(frame) != st.M * st.C:
            return f"{len(frame)} of {st.M * st.C} phases"
        return None

    def load(self, unit: Unit) -> tuple[pd.DataFrame, float] | None:
        frame = super().load(unit)
        return None if frame is None else (frame, 0.0)

    def save(self, unit: Unit, result: tuple[pd.DataFrame, float]) -> None:
        super().save(unit, result[0])


def collect(plan: CapacityPlan, all_curves: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run (or reload) every unit; the stacked records and the unit counts."""
    from nsr_gym.studies.benchmark import close_cached_envs

    st = plan.setup
    units = [Unit(a, s, {"env_kwargs": plan.env_kwargs(a), "M": st.M, "L": st.L,
                         "rule": plan.rule, "curves": all_curves or a == "always-fresh"})
             for a in st.agents for s in plan.seeds]
    folder = plan.out / ".units" / config_hash({a: plan.env_kwargs(a) for a in st.agents})
    try:
        results, resumed = plan.config.sweep.run(capacity_unit, units,
                                                 _CapacityStore(folder, plan),
                                                 desc=f"regret-capacity/{st.backend}")
    finally:
        close_cached_envs()
    rollout_s = sum(sec for _, sec in results)
    computed = len(units) - resumed
    steps = computed * st.M * st.L * st.C
    counts = {"computed": computed, "resumed": resumed, "env_steps": steps,
              "rollout_s": round(rollout_s, 2),
              "steps_per_s_in_rollouts": round(steps / rollout_s) if rollout_s > 0 else None}
    return pd.concat([f for f, _ in results], ignore_index=True), counts


def study_of(plan: CapacityPlan) -> Any:
    """The ``theory.capacity_protocol.CapacityStudy`` of a plan."""
    from nsr_gym.theory.capacity_protocol import CapacityStudy

    st = plan.setup
    claims = {**CLAIMS[plan.rule], "keep-current": "M0", "clairvoyant": "T3"}
    expected = {rg.BANK: "capacity", "always-fresh": "always_fresh",
                "keep-current": "keep_current", "clairvoyant": "bound"}
    if plan.rule == "pin":
        expected["fixed-slot"] = "fixed_slot"  # slot 0 stays task 0's: as with K >= M
    cf = rg.closed_form_setting(st)
    a_star = None
    if st.backend == "analytic":
        from nsr_gym.learners.analytic import AnalyticConfig

        a_star = float(np.mean(st.learner.get("a_star", AnalyticConfig.a_star)))
    return CapacityStudy(st.M, st.L, st.C, plan.K, st.lam, plan.rule,
                         classes={a: agent_class(a) for a in st.agents}, comparator=COMPARATOR,
                         claims={a: b for a, b in claims.items() if a in st.agents},
                         expected={a: e for a, e in expected.items() if a in st.agents},
                         a_star=a_star, closed_form=cf,
                         report={"backend": st.backend, "family": st.family,
                                 "learner": st.learner, "env": RULE_ENV[plan.rule]})


def run_capacity(plan: CapacityPlan, command: str | None = None) -> tuple[dict[str, Any], str]:
    """Collect, analyse and write one capacity study; returns ``(verdicts, summary.md)``."""
    from nsr_gym.results import command_line, manifest
    from nsr_gym.studies.regret_report import write_capacity_outputs
    from nsr_gym.theory.capacity_protocol import analyse_capacity

    cfg = plan.config
    steps_log = cfg.steps_log or cfg.backend == "torch"
    t0 = time.perf_counter()
    wide, counts = collect(plan, all_curves=steps_log)
    verdicts, tables = analyse_capacity(wide, study_of(plan), plan.seeds, cfg.resamples,
                                        cfg.tol, cfg.max_width)
    meta = manifest(command or command_line(), plan.seeds, time.perf_counter() - t0,
                    env_id=rg.ENV_ID, env_kwargs={a: plan.env_kwargs(a) for a in plan.setup.agents},
                    capacity=plan.K, retention_rule=plan.rule, rule_env=RULE_ENV[plan.rule],
                    agents=list(plan.setup.agents),
                    comparator=f"{COMPARATOR} = Oracle(first_visit='keep'), capacity M",
                    resamples=cfg.resamples, tol=cfg.tol, max_width=cfg.max_width, units=counts)
    md = write_capacity_outputs(plan.out, verdicts, tables, wide, meta, steps_log)
    return verdicts, md
