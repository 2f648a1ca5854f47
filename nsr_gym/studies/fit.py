"""What ``nsr-gym fit`` computes: the analytic backend fitted to logged (torch) runs, and how well
it predicts them.

Input: a results folder of ``nsr-gym regret`` or ``nsr-gym run`` (its ``phases.csv[.gz]``, with
``steps.csv[.gz]`` beside it when there is one), or one of those files. The setting
(``M, L, C, lambda``) comes from the ``manifest.json`` beside the input, or is read off the
table. ``theory.protocol.fit_records`` estimates ``a*, D, tau`` from always-fresh's curves (per
step when a steps log is there, from phase summaries otherwise), ``gamma`` from keep-current's
first step at revisits (``rho``), ``kappa`` from the truncation gap ``eps``, and the evaluation
noise from the residual scatter. The result is an ``AnalyticConfig``-compatible JSON
(``analytic_config.json``, which ``nsr-gym regret --learner`` and ``gym.make(..., learner=...)``
take as is).

Then the fitted analytic backend runs the same regret protocol (:mod:`nsr_gym.studies.regret`)
on the same setting, and ``prediction.json`` / ``prediction.md`` put its regret slopes, ratios,
``Delta_switch`` and recovery times next to the logged ones: absolute and relative errors, and
the diagnostics that say why. Where the logs have blind agents, ``prediction.json``'s
``negative_transfer`` adds a second prediction (:mod:`nsr_gym.studies.fit_transfer`): the same
fit plus negative transfer at a wrong load, for the logged setting and for each
``--capacity-from`` folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.executors import Sweep
from nsr_gym.jsonio import read_json
from nsr_gym.studies import regret as rg


@dataclass(frozen=True)
class FitConfig:
    """Settings of one ``nsr-gym fit``."""

    source: str
    """A results folder (``phases.csv[.gz]``, ``steps.csv[.gz]``) or one of those files."""
    out: str = "results/fit"
    """Output folder."""
    lam: float | None = None
    """Switching cost (default: from the input's manifest, else 0.05)."""
    seeds: tuple[int, ...] | None = None
    """Seeds of the fitted analytic runs (default 0..199)."""
    kappa_source: str = "revisit"
    """``kappa`` from the bank's first revisit step (``revisit``) or the truncation gap alone."""
    resamples: int = 2000
    """Bootstrap resamples."""
    predict: bool = True
    """Run the fitted analytic backend and compare (off: only fit and write the config)."""
    sweep: Sweep = field(default_factory=Sweep)
    """How the fitted analytic units run, and whether finished ones are reused."""
    capacity_from: tuple[str, ...] = ()
    """``nsr-gym regret --capacity`` folders whose slopes the negative-transfer model predicts."""


def fit_transfer_agents(wide: pd.DataFrame) -> list[str]:
    """The blind agents whose wrong loads the negative-transfer term is fitted to."""
    return [a for a in ("fixed-slot", "random-slot") if a in set(wide["agent"])]


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).exists()), None)


def locate(source: Path) -> tuple[Path | None, Path | None]:
    """``(phases, steps)`` files for ``--from``: a folder, a phases table or a steps log."""
    phases_names, steps_names = ("phases.csv.gz", "phases.csv"), ("steps.csv.gz", "steps.csv")
    if source.is_dir():
        return _first(source, phases_names), _first(source, steps_names)
    if not source.exists():
        raise FileNotFoundError(f"--from {source}: no such file or folder")
    if "steps" in source.name:
        return _first(source.parent, phases_names), source
    return source, _first(source.parent, steps_names)


def load_records(source: Path) -> pd.DataFrame:
    """Stacked phase records (:func:`nsr_gym.studies.regret.phase_record`'s columns)."""
    phases_path, steps_path = locate(source)
    steps = pd.read_csv(steps_path) if steps_path is not None else None
    if phases_path is None:
        if steps is None or "reward" not in steps:
            raise ValueError(f"{source}: need a phases table, or a full per-step log with rewards")
        M = int(steps["task_id"].nunique())
        L = int(steps["step_in_phase"].max()) + 1
        return pd.concat([rg.phase_record(g.sort_values("t"), a, s, M, L)
                          for (a, s), g in steps.groupby(["agent", "seed"], sort=False)],
                         ignore_index=True)
    wide = pd.read_csv(phases_path)
    if steps is not None and "accuracy" in steps:
        curves = steps.pivot_table(index=["agent", "seed", "phase"], columns="step_in_phase",
                                   values="accuracy")
        curves.columns = [f"acc_{int(c) + 1}" for c in curves.columns]
        wide = wide.merge(curves.reset_index(), on=["agent", "seed", "phase"], how="left")
    return wide


def setting_of(source: Path, wide: pd.DataFrame, lam: float | None) -> dict[str, Any]:
    """``M, L, C, lambda, family, backend`` from the manifest beside the input, else the table."""
    folder = source if source.is_dir() else source.parent
    kw: dict[str, Any] = {}
    if (folder / "manifest.json").exists():
        kw = read_json(folder / "manifest.json", what="results manifest").get("env_kwargs", {})
    one = wide[(wide["agent"] == wide["agent"].iloc[0]) & (wide["seed"] == wide["seed"].iloc[0])]
    M = int(kw.get("n_tasks", wide["task_id"].nunique()))
    L = int(kw.get("phase_length", wide["length"].iloc[0]))
    return {
        "M": M, "L": L, "C": int(kw.get("n_cycles", len(one) // M)),
        "lam": float(lam if lam is not None else kw.get("lambda_switch", 0.05)),
        "family": kw.get("tasks", rg.default_family(M)), "backend": kw.get("backend", "torch"),
    }


def _rel(pred: float, obs: float) -> float | None:
    return None if obs == 0 or not np.isfinite(obs) else (pred - obs) / abs(obs)


def _compare_policy(p: dict[str, Any], q: dict[str, Any], o_r: dict[str, Any],
                    p_r: dict[str, Any]) -> dict[str, Any]:
    """One agent's logged (``p``, recovery ``o_r``) against predicted (``q``, ``p_r``)."""
    o_s, p_s = p["slope_vs_bank"], q["slope_vs_bank"]
    row = {"slope_logged": o_s["mean"], "slope_logged_ci": [o_s["ci_low"], o_s["ci_high"]],
           "slope_predicted": p_s["mean"], "slope_error": p_s["mean"] - o_s["mean"],
           "slope_rel_error": _rel(p_s["mean"], o_s["mean"]),
           "predicted_in_logged_ci": bool(o_s["ci_low"] <= p_s["mean"] <= o_s["ci_high"])}
    for b in ("M1", "M0"):
        if b in p.get("bounds", {}):
            row[f"ratio_{b}_logged"] = p["bounds"][b]["ratio"]
            row[f"ratio_{b}_predicted"] = q["bounds"][b]["ratio"]
            row[f"ratio_{b}_general_logged"] = p["bounds"][b]["general"]["ratio"]
            row[f"ratio_{b}_general_predicted"] = q["bounds"][b]["general"]["ratio"]
    row.update(recovery_logged=o_r["mean"], recovery_predicted=p_r["mean"],
               recovery_error=p_r["mean"] - o_r["mean"],
               recovery_rel_error=_rel(p_r["mean"], o_r["mean"]))
    return row


def compare(observed: dict[str, Any], predicted: dict[str, Any]) -> dict[str, Any]:
    """Logged against predicted: slopes, ratios, Delta, recovery; absolute and relative errors."""
    out: dict[str, Any] = {"policies": {}}
    for a, p in observed["policies"].items():
        q = predicted["policies"].get(a)
        if q is not None:
            out["policies"][a] = _compare_policy(p, q, observed["recovery"]["per_agent"][a],
                                                 predicted["recovery"]["per_agent"][a])
    d_o = observed["delta_switch"]["paired"]["mean"]
    d_p = predicted["delta_switch"]["paired"]["mean"]
    out["delta_switch"] = {"logged": d_o, "predicted": d_p, "rel_error": _rel(d_p, d_o)}
    for k in ("rho", "eps"):
        if observed.get(k) and predicted.get(k):
            out[k] = {"logged": observed[k]["mean"], "predicted": predicted[k]["mean"]}
    t_o = observed["theorem2_bank"]["slope"]["mean"]
    t_p = predicted["theorem2_bank"]["slope"]["mean"]
    out["theorem2_bank_slope"] = {"logged": t_o, "predicted": t_p}
    mem = [r["slope_rel_error"] for a, r in out["policies"].items()
           if observed["policies"][a]["class"] in ("M0", "M1") and r["slope_rel_error"] is not None]
    out["max_abs_rel_slope_error_memoryless"] = float(np.max(np.abs(mem))) if mem else None
    out["within_10_percent"] = bool(mem) and bool(np.max(np.abs(mem)) <= 0.10)
    return out


def _prediction_markdown(source: Path, config: dict[str, Any], fit: dict[str, Any],
                         cmp_: dict[str, Any], provenance: str) -> str:
    from nsr_gym.results import markdown_table

    table = pd.DataFrame([{"agent": a, **{k: v for k, v in r.items() if not isinstance(v, list)}}
                          for a, r in cmp_["policies"].items()])
    return (f"# The analytic backend fitted to {source}\n\n{provenance}\n\n"
            f"Fitted config: `{json.dumps(config)}`; curve fit r2 {fit['curve_fit']['r2']:.3f} "
            f"({fit['curve_fit']['source']}).\n\nEstimates: "
            f"`{json.dumps(rg.strict_json(fit['estimates']))}`; diagnostics (effects the model "
            f"has no parameter for): `{json.dumps(rg.strict_json(fit['diagnostics']))}`.\n\n"
            f"{markdown_table(table)}\n\nDelta_switch logged "
            f"{cmp_['delta_switch']['logged']:.3f}, predicted "
            f"{cmp_['delta_switch']['predicted']:.3f}. Largest relative slope error over the "
            f"memoryless agents: {cmp_['max_abs_rel_slope_error_memoryless']}.\n")


@dataclass(frozen=True)
class Fitted:
    """The fit of one input: its records, setting, comparator and fitted analytic config."""

    source: Path
    wide: pd.DataFrame
    """Stacked phase records of the input."""
    setting: dict[str, Any]
    """``M, L, C, lam, family, backend`` (:func:`setting_of`)."""
    comparator: str
    """``bank`` where the input has it (``nsr-gym regret``), else ``oracle``."""
    fit: Any
    """``theory.fit.AnalyticFit``."""
    started: float
    """``time.perf_counter()`` when the fit started (the manifest's wall time counts from it)."""

    @property
    def config(self) -> dict[str, Any]:
        """The fitted ``AnalyticConfig`` keywords."""
        return self.fit.config()


def fit_source(cfg: FitConfig) -> Fitted:
    """Fit the analytic backend to ``cfg.source`` and write ``<out>/analytic_config.json``.

    Raises:
        OSError, ValueError: when the input is missing or cannot be read as phase records.
    """
    from nsr_gym.results import write_json
    from nsr_gym.theory.protocol import fit_records

    source = Path(cfg.source)
    wide = load_records(source)
    st = setting_of(source, wide, cfg.lam)
    comparator = rg.BANK if rg.BANK in set(wide["agent"]) else "oracle"
    if "cycle" not in wide:
        wide["cycle"] = wide["phase"] // st["M"] + 1
    started = time.perf_counter()
    fit = fit_records(wide, st["M"], st["L"], comparator, kappa_source=cfg.kappa_source)
    write_json(Path(cfg.out) / "analytic_config.json",
               {"config": fit.config(), "source": str(source), "setting": st,
                "fit": fit.as_dict()})
    return Fitted(source, wide, st, comparator, fit, started)


def predict(cfg: FitConfig, fitted: Fitted, command: str | None = None) -> str:
    """Run the fitted analytic backend on the input's setting and compare it with the logged
    runs; writes ``prediction.json`` / ``.md``, ``manifest.json`` and ``analytic/``.

    Args:
        cfg: The settings.
        fitted: From :func:`fit_source`.
        command: The command line recorded in the manifests (default: this process's).

    Returns:
        ``prediction.md``'s text.
    """
    from nsr_gym.atomic import atomic_write_text
    from nsr_gym.results import command_line, manifest, provenance_line, write_json

    wide, st, comparator, config = fitted.wide, fitted.setting, fitted.comparator, fitted.config
    source, out = fitted.source, Path(cfg.out)
    # ---- the logged runs through the regret protocol
    seeds_logged = sorted(int(s) for s in wide["seed"].unique())
    present = set(wide["agent"])
    agents = (comparator,) + tuple(a for a in rg.DEFAULT_AGENTS if a in present and a != rg.BANK)
    logged_setup = rg.Setup(st["backend"], st["M"], st["L"], st["C"], st["lam"], st["family"],
                            {}, agents)
    observed, _, _ = rg.analyse(wide, logged_setup, seeds_logged, cfg.resamples,
                                comparator=comparator)
    # ---- the fitted analytic backend on the same setting
    seeds = list(cfg.seeds) if cfg.seeds else list(range(200))
    predicted_setup = rg.Setup("analytic", st["M"], st["L"], st["C"], st["lam"], st["family"],
                               dict(config), tuple(rg.DEFAULT_AGENTS))
    predicted, _ = rg.run_study(predicted_setup, seeds, out / "analytic", cfg.sweep,
                                resamples=cfg.resamples, tol=0.05, max_width=0.5, steps_log=False,
                                extra_meta={"fitted_from": str(source)}, command=command)
    from nsr_gym.studies.fit_transfer import transfer_prediction

    result = {"setting": st, "config": config, "fit": fitted.fit.as_dict(),
              "comparison": compare(observed, predicted), "logged_seeds": seeds_logged,
              "predicted_seeds": len(seeds)}
    if set(fit_transfer_agents(wide)):
        result["negative_transfer"] = transfer_prediction(fitted.fit, wide, st, observed,
                                                          tuple(cfg.capacity_from))
    meta = manifest(command or command_line(), seeds, time.perf_counter() - fitted.started,
                    fitted_from=str(source), logged_seeds=seeds_logged)
    write_json(out / "prediction.json", rg.strict_json(result))
    write_json(out / "manifest.json", meta)
    md = _prediction_markdown(source, config, fitted.fit.as_dict(), result["comparison"],
                              provenance_line(meta))
    if "negative_transfer" in result:
        from nsr_gym.studies.fit_transfer import transfer_markdown

        md += transfer_markdown(result["negative_transfer"])
    atomic_write_text(out / "prediction.md", md)
    return md
