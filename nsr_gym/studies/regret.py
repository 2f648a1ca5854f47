"""What ``nsr-gym regret`` computes: Theorem 1 checked on the env, with paired seeds, a seed
bootstrap and a one-sided test (THEORY.md, "Verifying").

Every agent runs on the same seeds (same stream, same data order) on a strict cycle of ``M``
tasks, ``L`` steps per phase, ``C`` cycles. The comparator is THEORY.md's B, which every output
calls ``bank``: ``Oracle(first_visit="keep")`` (LOAD its task's entry at each revisit, KEEP
otherwise). Each ``(agent, seed)`` episode is one executor unit (:func:`regret_unit`) reduced to
its *phase records* (:func:`phase_record`: :func:`nsr_gym.metrics.phase_table` plus the cycle,
the truncation gap, the first action and the per-step accuracies); finished units are kept
under ``<out>/.units/`` so an interrupted study resumes. ``theory.protocol.analyse_records``
turns the records into verdicts (paired ``Delta_switch``, regret slopes, seed-bootstrap ratios
to the M1 / M0 bounds, one-sided verdicts, Theorem 2, recovery times), and :func:`write_outputs`
(:mod:`nsr_gym.studies.regret_report`, re-exported here) writes them: a CSV per policy,
``seeds.csv``, ``phases.csv.gz`` (``steps.csv.gz`` too on torch), ``verdicts.json``,
``summary.md``, ``regret.png`` and ``manifest.json``. ``nsr-gym regret --capacity K``
(Theorem 3) is :mod:`nsr_gym.studies.regret_capacity`.

Use :func:`plan_regret` to check a :class:`RegretConfig` (``ValueError`` says what is wrong),
then :func:`run_study`; ``nsr-gym fit`` (:mod:`nsr_gym.studies.fit`) reuses both halves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym import metrics
from nsr_gym.executors import FrameStore, Sweep, Unit, config_hash
from nsr_gym.studies.regret_report import (
    plot,
    steps_from_records,
    strict_json,
    summary_markdown,
    summary_table,
    write_csv_gz,
    write_outputs,
)

__all__ = ["BACKEND_DEFAULTS", "BANK", "DEFAULT_AGENTS", "QUICK", "RegretConfig", "RegretPlan",
           "Setup", "analyse", "collect", "default_family", "phase_record", "plan_regret",
           "plot", "regret_unit", "run_regret", "run_study", "steps_from_records", "strict_json",
           "study_of", "summary_markdown", "summary_table", "write_csv_gz", "write_outputs"]

#: THEORY.md's comparator B; ``bank`` in every output.
BANK = "bank"
DEFAULT_AGENTS = (BANK, "always-fresh", "keep-current", "fixed-slot", "random-slot", "similarity")
BACKEND_DEFAULTS = {"analytic": dict(seeds=200, cycles=6, phase_length=30),
                    "torch": dict(seeds=10, cycles=5, phase_length=30)}
QUICK = {"analytic": dict(seeds=8, cycles=3, phase_length=8),
         "torch": dict(seeds=2, cycles=3, phase_length=5)}
#: Binomial evaluation noise of the analytic runs: a held-out set the size of a digits task's.
ANALYTIC_LEARNER = {"eval_samples": 100}
ENV_ID = "nsr_gym/CyclicSplitDigits-v0"
#: Columns of :func:`phase_record` before the per-step accuracies ``acc_1..acc_L``.
RECORD_COLUMNS = ["agent", "seed", "phase", "cycle", *metrics.PHASE_COLUMNS[1:],
                  "truncation_gap", "start_action"]


@dataclass(frozen=True)
class Setup:
    """The cyclic setting of one regret study."""

    backend: str
    M: int
    L: int
    C: int
    lam: float
    family: str
    learner: dict[str, Any] = field(default_factory=dict)
    agents: tuple[str, ...] = DEFAULT_AGENTS

    def env_kwargs(self) -> dict[str, Any]:
        """The ``gym.make`` keywords of the setting."""
        return dict(backend=self.backend, tasks=self.family, n_tasks=self.M, schedule="cyclic",
                    phase_length=self.L, n_cycles=self.C, lambda_switch=self.lam,
                    learner=dict(self.learner))

    def make_env(self) -> Any:
        """A fresh env of the setting."""
        import gymnasium as gym

        import nsr_gym  # noqa: F401 - registers the envs

        return gym.make(ENV_ID, **self.env_kwargs())


@dataclass(frozen=True)
class RegretConfig:
    """Settings of one ``nsr-gym regret`` study; ``None`` takes the backend's default."""

    backend: str = "analytic"
    """``analytic`` or ``torch``."""
    seeds: tuple[int, ...] | None = None
    """Seeds (default 200 analytic, 10 torch; ``quick``: 8 / 2)."""
    tasks: int = 5
    """``M``, tasks in the cycle."""
    cycles: int | None = None
    """``C`` (default 6 analytic, 5 torch; ``quick``: 3); at least 3."""
    phase_length: int | None = None
    """``L``, steps per phase (default 30; ``quick``: 8 analytic, 5 torch)."""
    lam: float = 0.05
    """Switching cost ``lambda``."""
    family: str | None = None
    """Task family (default :func:`default_family`)."""
    learner: dict[str, Any] = field(default_factory=dict)
    """Learner overrides, on top of :data:`ANALYTIC_LEARNER` on the analytic backend."""
    agents: tuple[str, ...] = DEFAULT_AGENTS
    """Agents; must include ``bank`` and ``always-fresh``."""
    resamples: int = 2000
    """Bootstrap resamples."""
    tol: float = 0.05
    """A bound is violated when its ratio's CI lies below ``1 - tol``."""
    max_width: float | None = 0.5
    """A verdict is inconclusive when the CI is wider."""
    steps_log: bool = False
    """Also write ``steps.csv.gz`` (always on torch)."""
    out: str | None = None
    """Output folder (default ``results/[quick/]regret/<backend>``)."""
    quick: bool = False
    """A tiny study under ``results/quick/regret/``."""
    sweep: Sweep = field(default_factory=Sweep)
    """Where the units run, and whether finished ones are reused."""


@dataclass(frozen=True)
class RegretPlan:
    """A checked :class:`RegretConfig`: the setting, seeds and output folder."""

    setup: Setup
    seeds: list[int]
    out: Path
    config: RegretConfig


def default_family(M: int) -> str:
    """Split-Digits where it has ``M`` tasks (1, 2, 5), PermutedDigits otherwise."""
    return "split_digits" if M in (1, 2, 5) else "permuted_digits"


def make_regret_agent(name: str) -> Any:
    """``bank`` (THEORY.md's B, ``Oracle(first_visit="keep")``) or what ``agents.make_agent``
    builds from ``name``."""
    from nsr_gym.agents import Oracle, make_agent

    return Oracle(first_visit="keep") if name == BANK else make_agent(name)


def agent_class(name: str) -> str:
    """Memory class of an agent of the study (the bank counts as the oracle)."""
    return "oracle" if name == BANK else make_regret_agent(name).memory_class


def plan_regret(cfg: RegretConfig) -> RegretPlan:
    """Resolve the defaults of ``cfg`` and check it, making the env once.

    Raises:
        ValueError: fewer than 3 cycles, unknown or missing agents, or an env configuration
            error.
    """
    from nsr_gym.agents import RULE_AGENTS

    base = dict(BACKEND_DEFAULTS[cfg.backend])
    if cfg.quick:
        base.update(QUICK[cfg.backend])
    seeds = list(cfg.seeds) if cfg.seeds is not None else list(range(base["seeds"]))
    C = cfg.cycles or base["cycles"]
    L = cfg.phase_length or base["phase_length"]
    if C < 3:
        raise ValueError("the regret slope over cycles 2..C needs --cycles >= 3")
    learner = dict(ANALYTIC_LEARNER) if cfg.backend == "analytic" else {}
    learner.update(cfg.learner)
    unknown = [a for a in cfg.agents if a != BANK and a not in RULE_AGENTS]
    missing = [a for a in (BANK, "always-fresh") if a not in cfg.agents]
    if unknown:
        raise ValueError(f"unknown agent(s) {unknown}; known: {BANK}, "
                         f"{', '.join(sorted(RULE_AGENTS))}")
    if missing:
        raise ValueError(f"--agents must include {missing}")
    setup = Setup(cfg.backend, cfg.tasks, L, C, float(cfg.lam),
                  cfg.family or default_family(cfg.tasks), learner, tuple(cfg.agents))
    try:
        setup.make_env().close()  # configuration errors before any work
    except (ValueError, TypeError) as err:
        raise ValueError(str(err)) from err
    out = Path(cfg.out or (Path("results") / ("quick" if cfg.quick else "") / "regret"
                           / cfg.backend))
    return RegretPlan(setup, seeds, out, cfg)


# ------------------------------------------------------------------------------------- running
def phase_record(log: pd.DataFrame, agent: str, seed: int, M: int, L: int,
                 curves: bool = True) -> pd.DataFrame:
    """One row per phase of a strict-cycle rollout log: everything the analysis reads.

    Args:
        log: One episode's per-step log in time order, ``P * L`` rows.
        agent: Name for the ``agent`` column.
        seed: Value of the ``seed`` column.
        M: Tasks per cycle.
        L: Steps per phase.
        curves: Append the per-step accuracies ``acc_1..acc_L``.

    Returns:
        ``(P, ...)``: :data:`RECORD_COLUMNS` (:func:`nsr_gym.metrics.phase_table`'s columns with
        the cycle, the truncation gap at the phase end and the phase's first action), then
        ``acc_1..acc_L`` with ``curves``.
    """
    table = metrics.phase_table(log)
    P = len(table)
    col = lambda name: log[name].to_numpy().reshape(P, L)  # noqa: E731
    table.insert(0, "agent", agent)
    table.insert(1, "seed", seed)
    table.insert(3, "cycle", np.arange(P) // M + 1)
    table["truncation_gap"] = col("truncation_gap")[:, -1].astype(np.float64)
    table["start_action"] = col("action")[:, 0]
    if not curves:
        return table
    acc = pd.DataFrame(col("accuracy").astype(np.float64),
                       columns=[f"acc_{s}" for s in range(1, L + 1)])
    return pd.concat([table, acc], axis=1)


def regret_unit(unit: Unit) -> tuple[pd.DataFrame, float]:
    """One ``(agent, seed)`` rollout of a study, as its phase records and its rollout seconds;
    a module-level function, so Ray workers import it by reference."""
    from nsr_gym.agents import rollout
    from nsr_gym.studies.benchmark import cached_env

    s = unit.setting
    env = cached_env(ENV_ID, s["env_kwargs"])
    t0 = time.perf_counter()
    log = rollout(env, make_regret_agent(unit.agent), unit.seed, agent_name=unit.agent)
    seconds = time.perf_counter() - t0
    return phase_record(log, unit.agent, unit.seed, s["M"], s["L"], curves=s["curves"]), seconds


class _RecordStore(FrameStore):
    """A unit's phase records as ``<agent>__seed<seed>.csv``; the rollout seconds are not kept
    (a resumed unit counts 0 s)."""

    def __init__(self, folder: Path, setup: Setup) -> None:
        super().__init__(folder, name=lambda u: f"{u.agent}__seed{u.seed}", check=self._check)
        self.setup = setup

    def _check(self, frame: pd.DataFrame, unit: Unit) -> str | None:
        curves = [f"acc_{s}" for s in range(1, self.setup.L + 1)] if unit.setting["curves"] else []
        if list(frame.columns) != RECORD_COLUMNS + curves:
            return "other columns"
        if len(frame) != self.setup.M * self.setup.C:
            return f"{len(frame)} of {self.setup.M * self.setup.C} phases"
        if not ((frame["agent"] == unit.agent).all() and (frame["seed"] == unit.seed).all()):
            return "another unit's rows"
        return None

    def load(self, unit: Unit) -> tuple[pd.DataFrame, float] | None:
        frame = super().load(unit)
        return None if frame is None else (frame, 0.0)

    def save(self, unit: Unit, result: tuple[pd.DataFrame, float]) -> None:
        super().save(unit, result[0])


def collect(setup: Setup, seeds: list[int], units_dir: Path, sweep: Sweep | None = None,
            all_curves: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run (or reload) every ``(agent, seed)`` unit; return the stacked phase records and a
    count of the units computed and resumed, with the env steps per second of the rollouts.

    Units run as ``sweep`` says (here or on Ray: the same records either way). Each finished
    unit is written to ``units_dir`` at once, so an interrupted study resumes.
    Per-step accuracies are kept for always-fresh (the curve fit reads them) and, with
    ``all_curves``, for every agent (the steps log).
    """
    from nsr_gym.studies.benchmark import close_cached_envs

    units = [Unit(a, s, {"env_kwargs": setup.env_kwargs(), "M": setup.M, "L": setup.L,
                         "curves": all_curves or a == "always-fresh"})
             for a in setup.agents for s in seeds]
    try:
        results, resumed = (sweep or Sweep()).run(regret_unit, units,
                                                   _RecordStore(units_dir, setup),
                                                   desc=f"regret/{setup.backend}")
    finally:
        close_cached_envs()
    rollout_s = sum(seconds for _, seconds in results)
    computed = len(units) - resumed
    steps = computed * setup.M * setup.L * setup.C
    counts: dict[str, Any] = {
        "computed": computed, "resumed": resumed, "env_steps": steps,
        "rollout_s": round(rollout_s, 2),
        "steps_per_s_in_rollouts": round(steps / rollout_s) if rollout_s > 0 else None}
    return pd.concat([frame for frame, _ in results], ignore_index=True), counts


# ------------------------------------------------------------------------------------- analysis
def closed_form_setting(setup: Setup) -> Any:
    """THEORY.md's ``CyclicSetting`` when the analytic learner is exactly the theorem's model."""
    from nsr_gym.learners.analytic import AnalyticConfig
    from nsr_gym.theory import CyclicSetting, ExpCurve

    if setup.backend != "analytic":
        return None
    fields = AnalyticConfig.__dataclass_fields__
    cfg = AnalyticConfig(**{k: v for k, v in setup.learner.items() if k in fields})
    if any(np.ndim(v) for v in (cfg.a_star, cfg.D, cfg.tau)) or cfg.transfer:
        return None
    return CyclicSetting(setup.M, setup.L, setup.C,
                         ExpCurve(float(cfg.a_star), float(cfg.D), float(cfg.tau)),
                         setup.lam, cfg.kappa, cfg.gamma)


def study_of(setup: Setup, comparator: str = BANK) -> Any:
    """The ``theory.protocol.Study`` of a setup: classes, known a*, the closed-form model."""
    from nsr_gym.learners.analytic import AnalyticConfig
    from nsr_gym.theory.protocol import Study

    a_star = None
    if setup.backend == "analytic":
        a_cfg = setup.learner.get("a_star", AnalyticConfig.a_star)
        a_star = tuple(np.broadcast_to(np.asarray(a_cfg, dtype=np.float64), (setup.M,)).tolist())
    return Study(setup.M, setup.L, setup.C, setup.lam,
                 classes={a: agent_class(a) for a in setup.agents}, comparator=comparator,
                 a_star=a_star, closed_form=closed_form_setting(setup),
                 recovery_eps=metrics.RECOVERY_EPS, recovery_window=metrics.RECOVERY_WINDOW,
                 recovery_convention=metrics.recovery_convention(),
                 report={"backend": setup.backend, "family": setup.family,
                         "learner": setup.learner})


def analyse(wide: pd.DataFrame, setup: Setup, seeds: list[int], resamples: int = 2000,
            tol: float = 0.05, max_width: float | None = 0.5, comparator: str = BANK,
            rho_max: float = 0.1) -> tuple[dict[str, Any], dict[str, pd.DataFrame], pd.DataFrame]:
    """``theory.protocol.analyse_records`` for a setup: ``(verdicts, per-agent, per-seed)``."""
    from nsr_gym.theory.protocol import analyse_records

    return analyse_records(wide, study_of(setup, comparator), seeds, resamples, tol, max_width,
                           rho_max)


# ------------------------------------------------------------------------------------- the study
def run_study(setup: Setup, seeds: list[int], out: Path, sweep: Sweep, resamples: int,
              tol: float, max_width: float | None, steps_log: bool,
              extra_meta: dict[str, Any] | None = None,
              command: str | None = None) -> tuple[dict[str, Any], str]:
    """Collect, analyse and write one study; returns ``(verdicts, summary markdown)``.

    Args:
        setup: The setting and agents.
        seeds: Seeds, the same for every agent (paired).
        out: Output folder (units kept under ``out/.units/<config hash>/``).
        sweep: Where the units run, and whether kept ones are reused.
        resamples: Bootstrap resamples.
        tol: A bound is violated when its CI lies below ``1 - tol``.
        max_width: A verdict is inconclusive when the CI is wider.
        steps_log: Keep every agent's per-step accuracies and write ``steps.csv.gz``.
        extra_meta: More manifest fields.
        command: The command line recorded in the manifest (default: this process's).
    """
    from nsr_gym.results import command_line, manifest

    units_dir = out / ".units" / config_hash(setup.env_kwargs())
    t0 = time.perf_counter()
    wide, counts = collect(setup, seeds, units_dir, sweep, all_curves=steps_log)
    verdicts, per_agent, per_seed = analyse(wide, setup, seeds, resamples, tol, max_width)
    wall = time.perf_counter() - t0
    meta = manifest(command or command_line(), seeds, wall, env_id=ENV_ID,
                    env_kwargs=setup.env_kwargs(), agents=list(setup.agents),
                    comparator="bank = Oracle(first_visit='keep')", resamples=resamples, tol=tol,
                    max_width=max_width, units=counts, **(extra_meta or {}))
    md = write_outputs(out, setup, seeds, wide, verdicts, per_agent, per_seed, meta, steps_log)
    return verdicts, md


def run_regret(plan: RegretPlan) -> tuple[dict[str, Any], str]:
    """:func:`run_study` for a checked plan; ``steps.csv.gz`` always on torch."""
    cfg = plan.config
    return run_study(plan.setup, plan.seeds, plan.out, cfg.sweep, resamples=cfg.resamples,
                     tol=cfg.tol, max_width=cfg.max_width,
                     steps_log=cfg.steps_log or cfg.backend == "torch")
