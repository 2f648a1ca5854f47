"""``nsr-gym regret``: Theorem 1 checked on the env, with paired seeds, a seed bootstrap and a
one-sided test (THEORY.md, "Verifying").

Every agent runs on the same seeds (same stream, same data order) on a strict cycle of ``M``
tasks, ``L`` steps per phase, ``C`` cycles. The comparator is THEORY.md's B, which every output
calls ``bank``: ``Oracle(first_visit="keep")`` (LOAD its task's entry at each revisit, KEEP
otherwise). This module runs the agents (each finished ``(agent, seed)`` unit is kept, so an
interrupted study resumes), reduces every episode to phase records, hands them to
``theory.protocol.analyse_records`` (paired ``Delta_switch``, regret slopes, seed-bootstrap
ratios to the M1 / M0 bounds in the complete-forgetting and the general form, one-sided
verdicts, Theorem 2, recovery times) and writes the results: a CSV per policy, ``seeds.csv``,
``phases.csv.gz`` (``steps.csv.gz`` too on torch), ``verdicts.json``, ``summary.md``,
``regret.png`` and ``manifest.json``. The exit status is 1 only when a bound is violated.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.cli._common import add_executor_options, config_hash, markdown_table, parse_seeds
from theory.protocol import curve_columns

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
        return dict(backend=self.backend, tasks=self.family, n_tasks=self.M, schedule="cyclic",
                    phase_length=self.L, n_cycles=self.C, lambda_switch=self.lam,
                    learner=dict(self.learner))

    def make_env(self):
        import gymnasium as gym

        import nsr_gym  # noqa: F401 - registers the envs

        return gym.make(ENV_ID, **self.env_kwargs())


def default_family(M: int) -> str:
    """Split-Digits where it has ``M`` tasks (1, 2, 5), PermutedDigits otherwise."""
    return "split_digits" if M in (1, 2, 5) else "permuted_digits"


def make_agent(name: str):
    from agents import RULE_AGENTS, Oracle

    if name == BANK:
        return Oracle(first_visit="keep")
    return RULE_AGENTS[name]()


def agent_class(name: str) -> str:
    return "oracle" if name == BANK else make_agent(name).memory_class


# ------------------------------------------------------------------------------------- running
def phase_record(log: pd.DataFrame, agent: str, seed: int, M: int, L: int,
                 curves: bool = True) -> pd.DataFrame:
    """One row per phase of a rollout log: the columns of ``nsr_gym.metrics.phase_table`` (the
    same definitions, recovery included, vectorised over phases), plus the cycle, the truncation
    gap at the phase end, the phase's first action and, with ``curves``, the per-step accuracies
    ``acc_1..acc_L``: everything the analysis reads."""
    from nsr_gym import metrics

    P = len(log) // L
    col = lambda name: log[name].to_numpy().reshape(P, L)  # noqa: E731
    acc = col("accuracy").astype(np.float64)
    task, visit = col("task_id")[:, 0], col("visit")[:, 0]
    recovery, censored = np.full(P, np.nan), np.full(P, np.nan)
    bwt, forgetting = np.full(P, np.nan), np.full(P, np.nan)
    zero_shot = col("zero_shot_accuracy")[:, 0].astype(np.float64)
    ends: dict[int, list[float]] = {}
    pre: dict[int, float] = {}
    for p in range(P):
        m = int(task[p])
        if m in ends:
            recovery[p], c = metrics.recovery_time(acc[p], pre[m], metrics.RECOVERY_EPS)
            censored[p] = float(c)
            bwt[p] = zero_shot[p] - ends[m][-1]
            forgetting[p] = max(ends[m]) - zero_shot[p]
        ends.setdefault(m, []).append(float(acc[p, -1]))
        pre[m] = float(acc[p, -metrics.RECOVERY_WINDOW:].mean())
    table = pd.DataFrame({
        "agent": agent, "seed": seed, "phase": np.arange(P), "cycle": np.arange(P) // M + 1,
        "task_id": task, "visit": visit, "length": L, "acc_mean": acc.mean(axis=1),
        "acc_first": acc[:, 0], "acc_end": acc[:, -1], "zero_shot": zero_shot,
        "return": col("reward").astype(np.float64).sum(axis=1), "switches": col("switched").sum(axis=1),
        "recovery": recovery, "censored": censored, "bwt": bwt, "forgetting": forgetting,
        "truncation_gap": col("truncation_gap")[:, -1].astype(np.float64),
        "start_action": col("action")[:, 0]})
    if not curves:
        return table
    return pd.concat([table, pd.DataFrame(acc, columns=[f"acc_{s}" for s in range(1, L + 1)])], axis=1)


#: Envs built in this process, by configuration: ``reset(seed)`` restarts everything, so the
#: units of one study reuse one env (a Ray worker keeps its own).
_ENVS: dict[str, Any] = {}


def regret_unit(unit) -> tuple[pd.DataFrame, float]:
    """One ``(agent, seed)`` rollout of a study, as its phase records and its rollout seconds;
    a module-level function, so Ray workers import it by reference."""
    import gymnasium as gym

    import nsr_gym  # noqa: F401 - registers the envs in a fresh worker
    from agents import rollout

    s = unit.setting
    key = config_hash(s["env_kwargs"])
    if key not in _ENVS:
        _ENVS.clear()  # one study at a time: drop another configuration's env
        _ENVS[key] = gym.make(ENV_ID, **s["env_kwargs"])
    t0 = time.perf_counter()
    log = rollout(_ENVS[key], make_agent(unit.agent), unit.seed, agent_name=unit.agent)
    seconds = time.perf_counter() - t0
    return phase_record(log, unit.agent, unit.seed, s["M"], s["L"], curves=s["curves"]), seconds


def collect(setup: Setup, seeds: list[int], units_dir: Path | None, resume: bool = True,
            progress: bool = True, all_curves: bool = True, executor: str = "local",
            ray_address: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Run (or reload) every ``(agent, seed)`` unit; return the stacked phase records and a
    count of the units computed and resumed, with the env steps per second of the rollouts.

    Units run on ``executor`` (``"local"`` or ``"ray"``: the same records either way). Each
    finished unit is written to ``units_dir`` at once, so an interrupted study resumes.
    Per-step accuracies are kept for always-fresh (the curve fit reads them) and, with
    ``all_curves``, for every agent (the steps log).
    """
    from nsr_gym.executors import Unit, make_executor, run_units
    from nsr_gym.results import write_csv

    units = [Unit(a, s, {"env_kwargs": setup.env_kwargs(), "M": setup.M, "L": setup.L,
                         "curves": all_curves or a == "always-fresh"})
             for a in setup.agents for s in seeds]
    counts: dict[str, Any] = {"computed": 0, "resumed": 0}
    rollout_s = 0.0

    def path(unit) -> Path | None:
        return None if units_dir is None else units_dir / f"{unit.agent}__seed{unit.seed}.csv"

    def skip(unit):
        p = path(unit)
        if p is None or not resume or not p.exists():
            return None
        counts["resumed"] += 1
        return pd.read_csv(p), 0.0

    def save(unit, result) -> None:
        nonlocal rollout_s
        counts["computed"] += 1
        rollout_s += result[1]
        if path(unit) is not None:
            write_csv(path(unit), result[0], float_format="%.17g")

    try:
        with make_executor(executor, ray_address) as ex:
            results = run_units(ex, regret_unit, units, skip=skip, on_done=save,
                                progress=progress, desc=f"regret/{setup.backend}")
    finally:
        for env in _ENVS.values():
            env.close()
        _ENVS.clear()
    steps = counts["computed"] * setup.M * setup.L * setup.C
    counts.update(env_steps=steps, rollout_s=round(rollout_s, 2),
                  steps_per_s_in_rollouts=round(steps / rollout_s) if rollout_s > 0 else None)
    return pd.concat([frame for frame, _ in results], ignore_index=True), counts


# ------------------------------------------------------------------------------------- analysis
def closed_form_setting(setup: Setup):
    """THEORY.md's ``CyclicSetting`` when the analytic learner is exactly the theorem's model."""
    from nsr_gym.learners.analytic import AnalyticConfig
    from theory import CyclicSetting, ExpCurve

    if setup.backend != "analytic":
        return None
    cfg = AnalyticConfig(**{k: v for k, v in setup.learner.items() if k in AnalyticConfig.__dataclass_fields__})
    if any(np.ndim(v) for v in (cfg.a_star, cfg.D, cfg.tau)) or cfg.transfer:
        return None
    return CyclicSetting(setup.M, setup.L, setup.C, ExpCurve(float(cfg.a_star), float(cfg.D), float(cfg.tau)),
                         setup.lam, cfg.kappa, cfg.gamma)


def study_of(setup: Setup, comparator: str = BANK):
    """The ``theory.protocol.Study`` of a setup: classes, known a*, the closed-form model."""
    from nsr_gym import metrics
    from nsr_gym.learners.analytic import AnalyticConfig
    from theory.protocol import Study

    a_star = None
    if setup.backend == "analytic":
        a_cfg = setup.learner.get("a_star", AnalyticConfig.a_star)
        a_star = tuple(np.broadcast_to(np.asarray(a_cfg, dtype=np.float64), (setup.M,)).tolist())
    return Study(setup.M, setup.L, setup.C, setup.lam,
                 classes={a: agent_class(a) for a in setup.agents}, comparator=comparator,
                 a_star=a_star, closed_form=closed_form_setting(setup),
                 recovery_eps=metrics.RECOVERY_EPS, recovery_window=metrics.RECOVERY_WINDOW,
                 recovery_convention=metrics.recovery_convention(),
                 report={"backend": setup.backend, "family": setup.family, "learner": setup.learner})


def analyse(wide: pd.DataFrame, setup: Setup, seeds: list[int], resamples: int = 2000,
            tol: float = 0.05, max_width: float | None = 0.5, comparator: str = BANK,
            rho_max: float = 0.1) -> tuple[dict[str, Any], dict[str, pd.DataFrame], pd.DataFrame]:
    """``theory.protocol.analyse_records`` for a setup: ``(verdicts, per-agent, per-seed)``."""
    from theory.protocol import analyse_records

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


def plot(path: Path, verdicts: dict[str, Any], per_agent: dict[str, pd.DataFrame], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = verdicts["setting"]
    M, C, lam = st["M"], st["C"], st["lambda"]
    delta = verdicts["delta_switch"]["slope_weighted"]["mean"]
    cycles = np.arange(1, C + 1)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for a, frame in per_agent.items():
        if a == BANK:
            continue
        g = frame.groupby("cycle")["cum_regret_vs_bank"]
        m, sd, k = g.mean(), g.std(ddof=1).fillna(0.0), g.count()
        line, = ax.plot(cycles, m.to_numpy(), marker="o", label=a)
        half = 1.96 * (sd / np.sqrt(k)).to_numpy()
        ax.fill_between(cycles, m.to_numpy() - half, m.to_numpy() + half, alpha=0.2, color=line.get_color())
    ax.plot(cycles, (cycles - 1) * (M - 1) * (delta - lam), "k--", label="M1 bound (M-1)(Δ-λ) per cycle")
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
        g = bank.groupby("cycle")["cum_regret_vs_prescient"]
        m, sd, k = g.mean().to_numpy(), g.std(ddof=1).fillna(0.0).to_numpy(), g.count().to_numpy()
        ax2.plot(cycles, m, marker="o", color="C0", label="bank vs prescient (a* every step)")
        ax2.fill_between(cycles, m - 1.96 * sd / np.sqrt(k), m + 1.96 * sd / np.sqrt(k), alpha=0.2)
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
    """A gzipped CSV written atomically (temporary sibling, then ``os.replace``)."""
    data = gzip.compress(frame.to_csv(index=False, float_format=float_format).encode(), mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def steps_from_records(wide: pd.DataFrame) -> pd.DataFrame:
    """The long per-step accuracy log (``agent, seed, phase, step_in_phase, task_id, visit,
    accuracy``) from stacked phase records."""
    cols = curve_columns(wide)
    long = wide.melt(id_vars=["agent", "seed", "phase", "task_id", "visit"], value_vars=cols,
                     var_name="step_in_phase", value_name="accuracy")
    long["step_in_phase"] = long["step_in_phase"].str[4:].astype(int) - 1
    return long.sort_values(["agent", "seed", "phase", "step_in_phase"], ignore_index=True)


def write_outputs(out: Path, setup: Setup, seeds: list[int], wide: pd.DataFrame,
                  verdicts: dict[str, Any], per_agent: dict[str, pd.DataFrame],
                  per_seed: pd.DataFrame, meta: dict[str, Any], steps_log: bool) -> str:
    from nsr_gym.results import provenance_line, write_csv, write_json

    out.mkdir(parents=True, exist_ok=True)
    for a, frame in per_agent.items():
        write_csv(out / f"policy_{a}.csv", frame)
    write_csv(out / "seeds.csv", per_seed)
    narrow = wide.drop(columns=curve_columns(wide))
    write_csv_gz(out / "phases.csv.gz", narrow)
    if steps_log:
        write_csv_gz(out / "steps.csv.gz", steps_from_records(wide))
    write_json(out / "verdicts.json", _jsonable(verdicts))
    prov = provenance_line(meta)
    plot(out / "regret.png", verdicts, per_agent, prov.replace("`", ""))
    table = markdown_table(summary_table(verdicts))
    d = verdicts["delta_switch"]
    rho, eps = verdicts["rho"], verdicts["eps"]
    t2 = verdicts["theorem2_bank"]
    md = (f"# Theorem 1 on the {setup.backend} backend: {verdicts['overall']}\n\n{prov}\n\n"
          f"M = {setup.M}, L = {setup.L}, C = {setup.C}, lambda = {setup.lam}, {len(seeds)} seeds; "
          f"Delta_switch paired {d['paired']['mean']:.3f} [{d['paired']['ci_low']:.3f}, "
          f"{d['paired']['ci_high']:.3f}], general (h_bar witness {d['general']['h_bar_witness']}) "
          f"{d['general']['mean']:.3f}, exponential fit {d['exp_fit']['delta']:.3f} "
          f"(r2 {d['exp_fit']['r2']:.3f}); rho "
          + (f"{rho['mean']:.3f} [{rho['ci_low']:.3f}, {rho['ci_high']:.3f}]" if rho else "n/a")
          + f" (complete forgetting {'established' if verdicts['premise_complete_forgetting'] else 'NOT established'}); "
          f"eps {eps['mean']:.4f}.\n\n{table}\n\nslope: OLS regret per cycle against the bank "
          f"(cycles 2..C); ratio_M1 = slope / ((M-1)(Delta-lambda)), ratio_M0 = slope / "
          f"(M (Delta-lambda)) with the paired Delta (h_bar = 0); *_general with the general "
          f"Delta (h_bar > 0); 95% seed-bootstrap CIs; expected: the closed form (analytic, "
          f"noise-free). Theorem 2 (a* = {t2['a_star_source']}): the bank's regret against a* grows by {t2['slope']['mean']:.4f} "
          f"per cycle [{t2['slope']['ci_low']:.4f}, {t2['slope']['ci_high']:.4f}]. Recovery: "
          f"{verdicts['recovery']['convention']}.\n")
    (out / "summary.md").write_text(md)
    write_json(out / "manifest.json", meta)
    return md


def _jsonable(obj: Any) -> Any:
    """NaN / inf become None, numpy scalars plain floats, so the file is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def parse_learner(text: str | None) -> dict[str, Any]:
    """``--learner``: a JSON object or the path of a JSON file (``nsr-gym fit``'s
    ``analytic_config.json`` works as is)."""
    if not text:
        return {}
    path = Path(text)
    raw = json.loads(path.read_text()) if path.exists() else json.loads(text)
    if not isinstance(raw, dict):
        raise argparse.ArgumentTypeError("--learner takes a JSON object (or a file holding one)")
    return raw.get("config", raw)


# ------------------------------------------------------------------------------------- command
def run_study(setup: Setup, seeds: list[int], out: Path, resume: bool, progress: bool,
              resamples: int, tol: float, max_width: float | None, steps_log: bool,
              extra_meta: dict[str, Any] | None = None, executor: str = "local",
              ray_address: str | None = None) -> tuple[dict[str, Any], str]:
    """Collect, analyse and write one study; returns ``(verdicts, summary markdown)``."""
    from nsr_gym.results import command_line, manifest

    units_dir = out / ".units" / config_hash(setup.env_kwargs())
    t0 = time.perf_counter()
    wide, counts = collect(setup, seeds, units_dir, resume=resume, progress=progress,
                           all_curves=steps_log, executor=executor, ray_address=ray_address)
    verdicts, per_agent, per_seed = analyse(wide, setup, seeds, resamples, tol, max_width)
    wall = time.perf_counter() - t0
    meta = manifest(command_line(), seeds, wall, env_id=ENV_ID, env_kwargs=setup.env_kwargs(),
                    agents=list(setup.agents), comparator="bank = Oracle(first_visit='keep')",
                    resamples=resamples, tol=tol, max_width=max_width,
                    units=counts,
                    **(extra_meta or {}))
    md = write_outputs(out, setup, seeds, wide, verdicts, per_agent, per_seed, meta, steps_log)
    return verdicts, md


def cmd_regret(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)  # one thread is fastest for these small networks
    backend = args.backend
    base = dict(BACKEND_DEFAULTS[backend])
    if args.quick:
        base.update(QUICK[backend])
    seeds = args.seeds if args.seeds is not None else list(range(base["seeds"]))
    M = args.tasks
    C = args.cycles or base["cycles"]
    L = args.phase_length or base["phase_length"]
    if C < 3:
        print("error: the regret slope over cycles 2..C needs --cycles >= 3", file=sys.stderr)
        return 2
    learner = dict(ANALYTIC_LEARNER) if backend == "analytic" else {}
    try:
        learner.update(parse_learner(args.learner))
    except (ValueError, argparse.ArgumentTypeError) as err:
        print(f"error: --learner: {err}", file=sys.stderr)
        return 2
    agents = tuple(a.strip() for a in args.agents.split(",") if a.strip())
    from agents import RULE_AGENTS

    unknown = [a for a in agents if a != BANK and a not in RULE_AGENTS]
    missing = [a for a in (BANK, "always-fresh") if a not in agents]
    if unknown or missing:
        print(f"error: unknown agent(s) {unknown}; known: {BANK}, {', '.join(sorted(RULE_AGENTS))}"
              if unknown else f"error: --agents must include {missing}", file=sys.stderr)
        return 2
    setup = Setup(backend, M, L, C, float(args.lam), args.family or default_family(M), learner, agents)
    try:
        setup.make_env().close()  # configuration errors before any work
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or (Path("results") / ("quick" if args.quick else "") / "regret" / backend))
    verdicts, md = run_study(setup, seeds, out, resume=not args.no_resume,
                             progress=not args.no_progress, resamples=args.resamples, tol=args.tol,
                             max_width=args.max_width, steps_log=args.steps_log or backend == "torch",
                             executor=args.executor, ray_address=args.ray_address)
    print(md)
    print(f"wrote {out}/")
    return 1 if verdicts["overall"] == "violated" else 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("regret", help="check Theorem 1: regret slopes of memoryless agents "
                       "against the bank, with seed-bootstrap CIs and a one-sided test")
    p.add_argument("--backend", default="analytic", choices=["analytic", "torch"])
    p.add_argument("--seeds", type=parse_seeds, default=None,
                   help="a count or a list (default 200 analytic, 10 torch; --quick: 8 / 2)")
    p.add_argument("--tasks", type=int, default=5, help="M, tasks in the cycle (default 5)")
    p.add_argument("--cycles", type=int, default=None, help="C (default 6 analytic, 5 torch)")
    p.add_argument("--phase-length", type=int, default=None, help="L, steps per phase (default 30)")
    p.add_argument("--lambda", dest="lam", type=float, default=0.05, help="switching cost (default 0.05)")
    p.add_argument("--family", default=None, help="task family (default: split_digits when M is "
                   "1, 2 or 5, permuted_digits otherwise)")
    p.add_argument("--learner", default=None, help="learner overrides: JSON object or file "
                   f"(analytic default {json.dumps(ANALYTIC_LEARNER)})")
    p.add_argument("--agents", default=",".join(DEFAULT_AGENTS),
                   help=f"comma-separated; must include {BANK} (THEORY.md's B) and always-fresh")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--tol", type=float, default=0.05, help="violated when ci_high < 1 - tol")
    p.add_argument("--max-width", type=float, default=0.5, help="inconclusive when the CI is wider")
    p.add_argument("--steps-log", action="store_true", help="also write steps.csv.gz (always on torch)")
    p.add_argument("--out", default=None, help="output directory (default results/regret/<backend>)")
    p.add_argument("--quick", action="store_true", help="a tiny study under results/quick/regret/")
    p.add_argument("--no-resume", action="store_true", help="recompute units already finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_options(p, "(agent, seed) units")
    p.set_defaults(func=cmd_regret)
