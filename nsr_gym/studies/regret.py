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
writes them: a CSV per policy, ``seeds.csv``, ``phases.csv.gz`` (``steps.csv.gz`` too on torch),
``verdicts.json``, ``summary.md``, ``regret.png`` and ``manifest.json``.

Use :func:`plan_regret` to check a :class:`RegretConfig` (``ValueError`` says what is wrong),
then :func:`run_study`; ``nsr-gym fit`` (:mod:`nsr_gym.studies.fit`) reuses both halves.
"""

from __future__ import annotations

import gzip
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym import metrics
from nsr_gym.executors import FrameStore, Sweep, Unit, config_hash

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


# ------------------------------------------------------------------------------------- outputs
def summary_table(verdicts: dict[str, Any]) -> pd.DataFrame:
    """One row per agent: slope, the ratios of both forms of each bound, verdict, recovery."""
    rows = []
    for a, p in verdicts["policies"].items():
        s = p["slope_vs_bank"]
        row: dict[str, Any] = {"agent": a, "class": p["class"], "slope": s["mean"],
                               "slope_ci": f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]"}
        for b in ("M1", "M0"):
            e = p.get("bounds", {}).get(b)
            for form, tag in (("complete_forgetting", ""), ("general", "_general")):
                f = e[form] if e else None
                row[f"ratio_{b}{tag}"] = f["ratio"] if f else float("nan")
                row[f"ci_{b}{tag}"] = f"[{f['ci_low']:.3f}, {f['ci_high']:.3f}]" if f else ""
            exp = e["complete_forgetting"].get("expected_ratio") if e else None
            row[f"expected_{b}"] = float("nan") if exp is None else exp
        row["verdict"] = p.get("verdict", "-")
        row["recovery"] = verdicts["recovery"]["per_agent"][a]["mean"]
        rows.append(row)
    return pd.DataFrame(rows)


def _band(ax: Any, cycles: np.ndarray, g: Any, **kw: Any) -> Any:
    """Plot the mean of a per-cycle groupby with a 1.96 standard-error band."""
    m, sd, k = g.mean().to_numpy(), g.std(ddof=1).fillna(0.0).to_numpy(), g.count().to_numpy()
    line, = ax.plot(cycles, m, marker="o", **kw)
    half = 1.96 * sd / np.sqrt(k)
    ax.fill_between(cycles, m - half, m + half, alpha=0.2, color=line.get_color())
    return line


def plot(path: Path, verdicts: dict[str, Any], per_agent: dict[str, pd.DataFrame],
         title: str) -> None:
    """``regret.png``: cumulative regret against the bank with the bounds, and Theorem 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = verdicts["setting"]
    M, C, lam = st["M"], st["C"], st["lambda"]
    delta = verdicts["delta_switch"]["slope_weighted"]["mean"]
    cycles = np.arange(1, C + 1)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for a, frame in per_agent.items():
        if a != BANK:
            _band(ax, cycles, frame.groupby("cycle")["cum_regret_vs_bank"], label=a)
    ax.plot(cycles, (cycles - 1) * (M - 1) * (delta - lam), "k--",
            label="M1 bound (M-1)(Δ-λ) per cycle")
    ax.plot(cycles, (cycles - 1) * M * (delta - lam), "k:", label="M0 bound M(Δ-λ) per cycle")
    gen = verdicts["delta_switch"]["general"]
    if gen["h_bar_witness"] != "always-fresh":
        ax.plot(cycles, (cycles - 1) * (M - 1) * (gen["mean"] - lam), color="grey", ls="-.",
                label=f"M1 bound, general Δ={gen['mean']:.2f} (h̄ from {gen['h_bar_witness']})")
    ax.set_xticks(cycles)
    ax.set(xlabel="cycle", ylabel="cumulative regret vs bank (reward units)",
           title=f"Theorem 1 ({st['backend']}: M={M}, L={st['L']}, λ={lam}, Δ={delta:.2f})")
    ax.legend(fontsize=7)
    bank = per_agent.get(BANK)
    if bank is not None:
        _band(ax2, cycles, bank.groupby("cycle")["cum_regret_vs_prescient"], color="C0",
              label="bank vs prescient (a* every step)")
        bound = verdicts["theorem2_bank"]["bound_kappa1_fit"]
        ax2.axhline(bound, color="k", ls="--", label="M Φ(0) / (1 - q^L) (κ = 1, fitted curve)")
        ax2.set_xticks(cycles)
        ax2.set(xlabel="cycle", ylabel="cumulative accuracy regret",
                title="Theorem 2: the bank pays first visits only")
        ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv_gz(path: Path, frame: pd.DataFrame, float_format: str = "%.10g") -> None:
    """A gzipped CSV (no timestamp in the header, so equal tables give equal bytes), atomic."""
    from nsr_gym.atomic import atomic_write_bytes

    text = frame.to_csv(index=False, float_format=float_format)
    atomic_write_bytes(path, gzip.compress(text.encode(), mtime=0))


def steps_from_records(wide: pd.DataFrame) -> pd.DataFrame:
    """The long per-step accuracy log (``agent, seed, phase, step_in_phase, task_id, visit,
    accuracy``) from stacked phase records."""
    from nsr_gym.theory.protocol import curve_columns

    long = wide.melt(id_vars=["agent", "seed", "phase", "task_id", "visit"],
                     value_vars=curve_columns(wide), var_name="step_in_phase",
                     value_name="accuracy")
    long["step_in_phase"] = long["step_in_phase"].str[4:].astype(int) - 1
    return long.sort_values(["agent", "seed", "phase", "step_in_phase"], ignore_index=True)


def summary_markdown(setup: Setup, seeds: list[int], verdicts: dict[str, Any],
                     provenance: str) -> str:
    """``summary.md``: the verdict, the setting, the estimates and :func:`summary_table`."""
    from nsr_gym.results import markdown_table

    d = verdicts["delta_switch"]
    rho, eps = verdicts["rho"], verdicts["eps"]
    t2 = verdicts["theorem2_bank"]
    forgetting = "established" if verdicts["premise_complete_forgetting"] else "NOT established"
    rho_text = f"{rho['mean']:.3f} [{rho['ci_low']:.3f}, {rho['ci_high']:.3f}]" if rho else "n/a"
    return (
        f"# Theorem 1 on the {setup.backend} backend: {verdicts['overall']}\n\n{provenance}\n\n"
        f"M = {setup.M}, L = {setup.L}, C = {setup.C}, lambda = {setup.lam}, {len(seeds)} seeds; "
        f"Delta_switch paired {d['paired']['mean']:.3f} [{d['paired']['ci_low']:.3f}, "
        f"{d['paired']['ci_high']:.3f}], general (h_bar witness {d['general']['h_bar_witness']}) "
        f"{d['general']['mean']:.3f}, exponential fit {d['exp_fit']['delta']:.3f} "
        f"(r2 {d['exp_fit']['r2']:.3f}); rho {rho_text} (complete forgetting {forgetting}); "
        f"eps {eps['mean']:.4f}.\n\n{markdown_table(summary_table(verdicts))}\n\nslope: OLS "
        f"regret per cycle against the bank (cycles 2..C); ratio_M1 = slope / ((M-1)(Delta-"
        f"lambda)), ratio_M0 = slope / (M (Delta-lambda)) with the paired Delta (h_bar = 0); "
        f"*_general with the general Delta (h_bar > 0); 95% seed-bootstrap CIs; expected: the "
        f"closed form (analytic, noise-free). Theorem 2 (a* = {t2['a_star_source']}): the bank's "
        f"regret against a* grows by {t2['slope']['mean']:.4f} per cycle "
        f"[{t2['slope']['ci_low']:.4f}, {t2['slope']['ci_high']:.4f}]. Recovery: "
        f"{verdicts['recovery']['convention']}.\n")


def write_outputs(out: Path, setup: Setup, seeds: list[int], wide: pd.DataFrame,
                  verdicts: dict[str, Any], per_agent: dict[str, pd.DataFrame],
                  per_seed: pd.DataFrame, meta: dict[str, Any], steps_log: bool) -> str:
    """Write every file of a study (see the module docstring); returns ``summary.md``'s text."""
    from nsr_gym.atomic import atomic_write_text
    from nsr_gym.results import provenance_line, write_csv, write_json
    from nsr_gym.theory.protocol import curve_columns

    out.mkdir(parents=True, exist_ok=True)
    for a, frame in per_agent.items():
        write_csv(out / f"policy_{a}.csv", frame)
    write_csv(out / "seeds.csv", per_seed)
    write_csv_gz(out / "phases.csv.gz", wide.drop(columns=curve_columns(wide)))
    if steps_log:
        write_csv_gz(out / "steps.csv.gz", steps_from_records(wide))
    write_json(out / "verdicts.json", strict_json(verdicts))
    prov = provenance_line(meta)
    plot(out / "regret.png", verdicts, per_agent, prov.replace("`", ""))
    md = summary_markdown(setup, seeds, verdicts, prov)
    atomic_write_text(out / "summary.md", md)
    write_json(out / "manifest.json", meta)
    return md


def strict_json(obj: Any) -> Any:
    """``obj`` made strict JSON: NaN / inf become None, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


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
