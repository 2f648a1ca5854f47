"""The capacity study of ``nsr-gym study capacity``: who decides what a too-small bank keeps.

A bank of ``K < M`` slots on Split-Digits (``M = 5``), on a strict cycle
(``CyclicSplitDigits``) and on a random recurrence (``RecurringSplitDigits``), ``K`` in
``{2, 3}``, 6 cycles, both backends. Every agent meets the same bank size and the same streams
(paired seeds):

* the similarity rule with the env's eviction (``retention="env"``): ``similarity+lru``,
  ``similarity+fifo``, ``similarity+lfu``, ``similarity+reject`` (admission control);
* the retention rules under ``retention="agent"``: ``pin``, ``lfu-retain``, ``lru-retain``
  (:mod:`nsr_gym.agents.retention`);
* ``keep-current`` (memoryless), and the ``clairvoyant`` (``retention="agent"``): it reads the
  whole schedule and plans allocation and retention, exactly on the analytic backend
  (:mod:`nsr_gym.agents.clairvoyant`), on ``AnalyticConfig()``'s model on the torch backend.

Each ``(backend, setting, agent, seed)`` is one unit (:func:`capacity_unit`), kept under
``<out>/.units`` by :meth:`nsr_gym.executors.Sweep.run`, so the study resumes. Besides the
agents, every ``(backend, setting, seed)`` runs ``B_inf`` (:data:`BANK_INF`): the oracle with one
slot per task that keeps at first visits, Theorem 3's unbounded Bank, whose return every row
carries as ``bank_inf_return``.

A *hit* (:class:`HitCounter`) is a revisit phase whose first step loads the task's own entry:
the step's allocation is ``LOAD k`` of an occupied slot ``k`` and, after that step's retention
write, slot ``k`` holds an entry owned by the phase's task. From the ground truth before the
step (``env.unwrapped.oracle_info()``) and the action: without a write into ``k``,
``k == next_task_slot`` (the oracle's ground truth, the bank before the write); when
``a[1] = 1 + k`` writes the pending entry into ``k`` (``obs["pending"] = 1``), the pending
entry's owner (the previous phase's task) is the phase's task. A KEEP of an entry that is
already active is not a load and not a hit.
``hits_per_cycle`` is hits over ``n_phases / M``; Belady's MIN with bypass on the schedule
(:func:`nsr_gym.theory.belady_bypass_hits`) bounds it for every agent.

:mod:`nsr_gym.studies.capacity_report` turns the runs into the tables and ``capacity.md``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from nsr_gym.envs import LOAD_OFFSET, WRITE_OFFSET
from nsr_gym.executors import Sweep, Unit

#: Setting name -> benchmark and bank (``M = 5`` tasks of Split-Digits, ``L = 30``).
SETTINGS: dict[str, dict[str, Any]] = {
    "cycle, K=2": dict(benchmark="CyclicSplitDigits", capacity=2, n_cycles=6),
    "cycle, K=3": dict(benchmark="CyclicSplitDigits", capacity=3, n_cycles=6),
    "recurring, K=2": dict(benchmark="RecurringSplitDigits", capacity=2, n_cycles=6),
    "recurring, K=3": dict(benchmark="RecurringSplitDigits", capacity=3, n_cycles=6),
}
#: The small settings of ``quick=True`` (a smoke test).
QUICK: dict[str, dict[str, Any]] = {
    "cycle, K=2": dict(benchmark="CyclicSplitDigits", capacity=2, n_cycles=3, phase_length=6),
    "recurring, K=2": dict(benchmark="RecurringSplitDigits", capacity=2, n_cycles=3,
                           phase_length=6),
}
#: Backends, in table order.
BACKENDS = ("analytic", "torch")
#: Agent name -> (agent spec, its keyword arguments, the env's retention options).
AGENTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "clairvoyant": ("clairvoyant", {}, {"retention": "agent"}),
    "pin": ("pin", {}, {"retention": "agent"}),
    "lfu-retain": ("lfu-retain", {}, {"retention": "agent"}),
    "lru-retain": ("lru-retain", {}, {"retention": "agent"}),
    "similarity+reject": ("similarity", {}, {"retention": "env", "eviction": "reject"}),
    "similarity+lru": ("similarity", {}, {"retention": "env", "eviction": "lru"}),
    "similarity+fifo": ("similarity", {}, {"retention": "env", "eviction": "fifo"}),
    "similarity+lfu": ("similarity", {}, {"retention": "env", "eviction": "lfu"}),
    "keep-current": ("keep-current", {}, {"retention": "env", "eviction": "lru"}),
}
#: The unbounded Bank ``B_inf``: the oracle, one slot per task, KEEP at first visits.
BANK_INF = "bank-inf"
#: Seeds of the torch backend: the first ones of the study's seeds.
TORCH_SEEDS = 5


def env_kwargs(backend: str, setting: dict[str, Any], agent: str) -> dict[str, Any]:
    """The ``gym.make`` keywords of one agent in one setting (``B_inf``: one slot per task)."""
    kw = {"backend": backend, **{k: v for k, v in setting.items() if k != "benchmark"}}
    if agent == BANK_INF:
        kw.pop("capacity")
        return kw
    return {**kw, **AGENTS[agent][2]}


def make_units(settings: dict[str, dict[str, Any]], seeds: list[int], torch_seeds: int
               ) -> list[Unit]:
    """Every ``(backend, setting, agent, seed)`` unit, grouped by env configuration (a process
    builds each env once)."""
    import nsr_gym

    units = []
    for backend in BACKENDS:
        for_backend = seeds if backend == "analytic" else seeds[:torch_seeds]
        for name, setting in settings.items():
            for agent in (*AGENTS, BANK_INF):
                spec, kwargs, _ = AGENTS.get(agent, ("oracle", {"first_visit": "keep"}, {}))
                for seed in for_backend:
                    units.append(Unit(agent, seed, {
                        "env_id": nsr_gym.env_id(setting["benchmark"]),
                        "env_kwargs": env_kwargs(backend, setting, agent), "spec": spec,
                        "spec_kwargs": kwargs, "tags": {"backend": backend, "setting": name}}))
    return sorted(units, key=lambda u: (BACKENDS.index(u.setting["tags"]["backend"]),
                                        list(settings).index(u.setting["tags"]["setting"]),
                                        repr(sorted(u.setting["env_kwargs"].items()))))


class HitCounter:
    """A ``before_step`` hook of :func:`nsr_gym.agents.rollout` that counts hits (module
    docstring): revisit phases whose first step loads the task's own entry."""

    def __init__(self, env: Any) -> None:
        self.env = env.unwrapped  # the ground truth is privileged: read from the env, not info
        self.hits = self.revisits = 0
        self._seen: set[int] = set()
        self._previous = -1

    def __call__(self, obs: dict[str, np.ndarray], info: dict[str, Any], action: Any) -> None:
        if not info["next_is_phase_start"]:
            return
        truth = self.env.oracle_info()
        task, a = int(truth["next_task_id"]), np.asarray(action).reshape(-1)
        if task in self._seen:
            self.revisits += 1
            self.hits += self._loads_own(obs, truth, a, task)
        self._seen.add(task)
        self._previous = task

    def _loads_own(self, obs: dict[str, np.ndarray], truth: dict[str, int], a: np.ndarray,
                   task: int) -> bool:
        k = int(a[0]) - LOAD_OFFSET
        if k < 0:
            return False
        pending = "pending" in obs and obs["pending"][0] > 0
        if pending and len(a) > 1 and int(a[1]) - WRITE_OFFSET == k:
            return self._previous == task
        return bool(obs["occupied"][k] > 0) and k == int(truth["next_task_slot"])


def closed_form_setting(backend: str, setting: dict[str, Any]) -> tuple[Any, list[str]]:
    """Theorem 3's ``CyclicSetting`` of a study setting, and the assumptions it breaks.

    The model is the analytic learner's (``AnalyticConfig()``: on the torch backend an
    approximation). Returns ``(None, reasons)`` when there is no closed form (not a strict
    cycle, per-task curves).
    """
    import gymnasium as gym

    import nsr_gym
    from nsr_gym.theory import CyclicSetting, ExpCurve

    kw = {k: v for k, v in setting.items() if k != "benchmark"}
    env = gym.make(nsr_gym.env_id(setting["benchmark"]), **{**kw, "backend": "analytic"})
    u, reasons = env.unwrapped, []
    cfg = u.learner.config
    env.close()
    if u.schedule_kind != "cyclic":
        return None, ["not a strict cycle (Belady-with-bypass bounds the hits instead)"]
    if any(np.ndim(v) for v in (cfg.a_star, cfg.D, cfg.tau)):
        return None, ["per-task curves"]
    if backend != "analytic":
        reasons.append("the torch learner, not the analytic model the closed form is of")
    reasons += [text for bad, text in (
        (cfg.gamma != 0, "gamma > 0"), (cfg.transfer != 0, "transfer > 0"),
        (cfg.eval_samples > 0, "evaluation noise"), (u.updates_per_step != 1, "U != 1"))
        if bad]
    s = CyclicSetting(u.n_tasks, u.phase_length, u.n_cycles,
                      ExpCurve(float(cfg.a_star), float(cfg.D), float(cfg.tau)),
                      u.lambda_switch, cfg.kappa, cfg.gamma)
    return s, reasons


def capacity_unit(unit: Unit) -> dict[str, Any]:
    """One episode of a unit of :func:`make_units` (picklable, for any executor).

    Returns:
        Its tags, ``agent``, ``seed``, ``episode_return``, ``switches``, ``hits``,
        ``revisits``, ``hits_per_cycle``, ``belady_per_cycle`` (MIN with bypass's hits per
        cycle on this schedule and bank), the clairvoyant's plan (``plan_exact``,
        ``plan_method``, ``plan_value``, ``plan_states``; empty for other agents), ``wall_s``.
    """
    from nsr_gym.agents import make_agent, rollout
    from nsr_gym.studies.benchmark import cached_env
    from nsr_gym.theory import belady_bypass_hits
    from nsr_gym.threads import torch_threads

    s = unit.setting
    with torch_threads(1):
        t0 = time.perf_counter()
        env = cached_env(s["env_id"], s["env_kwargs"])
        policy = make_agent(s["spec"], **s["spec_kwargs"])
        hits = HitCounter(env)
        log = rollout(env, policy, unit.seed, agent_name=unit.agent, before_step=hits)
        wall = time.perf_counter() - t0
    u = env.unwrapped
    schedule = u.task_schedule()
    plan = getattr(policy, "plan", None)
    return {**s["tags"], "agent": unit.agent, "seed": unit.seed,
            "episode_return": float(log["reward"].sum()),
            "switches": int(log["switched"].sum()), "hits": hits.hits, "revisits": hits.revisits,
            "hits_per_cycle": hits.hits * u.n_tasks / len(schedule),
            "belady_per_cycle": float(belady_bypass_hits(schedule, u.capacity).sum())
            * u.n_tasks / len(schedule),
            "plan_exact": None if plan is None else bool(plan.exact),
            "plan_method": None if plan is None else plan.method,
            "plan_value": None if plan is None else float(plan.value),
            "plan_states": None if plan is None else int(plan.n_states),
            "wall_s": round(wall, 4)}


def run_study(seeds: list[int], out: Path, *, quick: bool = False,
              torch_seeds: int = TORCH_SEEDS, executor: str = "local",
              ray_address: str | None = None, resume: bool = True, progress: bool = True) -> str:
    """Run every unit and write ``runs.csv``, ``summary.csv``, ``theorem3.csv``,
    ``clairvoyant.csv``, ``capacity.md`` and ``manifest.json`` under ``out``.

    Args:
        seeds: Episode seeds of the analytic backend, the same for every agent (paired).
        out: Output directory (created).
        quick: The small :data:`QUICK` settings (a smoke test).
        torch_seeds: The torch backend runs the first ``torch_seeds`` of ``seeds``.
        executor: ``"local"`` or ``"ray"``; ``ray_address`` the cluster to join.
        resume: Reuse the finished units kept under ``out/.units``.
        progress: Show a progress bar.

    Returns:
        The markdown report (also ``out/capacity.md``).
    """
    import pandas as pd

    from nsr_gym.studies import capacity_report
    from nsr_gym.studies.benchmark import close_cached_envs

    if torch_seeds < 1 or not seeds:
        raise ValueError("the study needs at least one seed on each backend")
    settings = QUICK if quick else SETTINGS
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    units = make_units(settings, list(seeds), torch_seeds)
    sweep = Sweep(executor=executor, ray_address=ray_address, resume=resume, progress=progress)
    try:
        rows, resumed = sweep.run(capacity_unit, units, out / ".units", desc="capacity")
    finally:
        close_cached_envs()
    order = {name: i for i, name in enumerate((*AGENTS, BANK_INF))}
    runs = pd.DataFrame(rows).sort_values(
        ["backend", "setting", "agent", "seed"], kind="stable", ignore_index=True,
        key=lambda col: col.map({**{b: i for i, b in enumerate(BACKENDS)},
                                 **{n: i for i, n in enumerate(settings)}, **order})
        if col.name != "seed" else col)
    counts = {"computed": len(units) - resumed, "resumed": resumed,
              "unit_wall_s": round(float(runs.pop("wall_s").sum()), 1)}
    return capacity_report.write_report(runs, settings, out, list(seeds), torch_seeds, counts,
                                        time.perf_counter() - t0, executor)
