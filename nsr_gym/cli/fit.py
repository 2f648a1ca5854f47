"""``nsr-gym fit``: fit the analytic backend to logged (torch) runs and measure how well it predicts them.

Input (``--from``): a results folder of ``nsr-gym regret`` or ``nsr-gym run`` (its
``phases.csv[.gz]``, with ``steps.csv[.gz]`` beside it when there is one), or one of those files.
The setting (``M, L, C, lambda``) comes from the ``manifest.json`` beside the input, or is read
off the table. ``theory.fit`` estimates ``a*, D, tau`` from always-fresh's curves (per step when a
steps log is there, from phase summaries otherwise), ``gamma`` from keep-current's first step at
revisits (``rho``), ``kappa`` from the truncation gap ``eps``, and the evaluation noise from the
residual scatter. The result is an ``AnalyticConfig``-compatible JSON (``analytic_config.json``,
which ``nsr-gym regret --learner`` and ``gym.make(..., learner=...)`` take as is).

Then the fitted analytic backend runs the same regret protocol on the same setting, and
``prediction.json`` / ``prediction.md`` put its regret slopes, ratios, ``Delta_switch`` and recovery
times next to the logged ones: absolute and relative errors, and the diagnostics that say why.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.cli import regret as rg
from nsr_gym.cli._common import markdown_table, parse_seeds
from theory.protocol import fit_records


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
    """Stacked phase records (``nsr_gym.cli.regret.phase_record``'s columns) from ``--from``."""
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
        kw = json.loads((folder / "manifest.json").read_text()).get("env_kwargs", {})
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


def compare(observed: dict[str, Any], predicted: dict[str, Any]) -> dict[str, Any]:
    """Logged against predicted: slopes, ratios, Delta, recovery; absolute and relative errors."""
    out: dict[str, Any] = {"policies": {}}
    for a, p in observed["policies"].items():
        q = predicted["policies"].get(a)
        if q is None:
            continue
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
        o_r = observed["recovery"]["per_agent"][a]
        p_r = predicted["recovery"]["per_agent"][a]
        row.update(recovery_logged=o_r["mean"], recovery_predicted=p_r["mean"],
                   recovery_error=p_r["mean"] - o_r["mean"],
                   recovery_rel_error=_rel(p_r["mean"], o_r["mean"]))
        out["policies"][a] = row
    d_o, d_p = observed["delta_switch"]["paired"]["mean"], predicted["delta_switch"]["paired"]["mean"]
    out["delta_switch"] = {"logged": d_o, "predicted": d_p, "rel_error": _rel(d_p, d_o)}
    for k in ("rho", "eps"):
        if observed.get(k) and predicted.get(k):
            out[k] = {"logged": observed[k]["mean"], "predicted": predicted[k]["mean"]}
    t_o, t_p = observed["theorem2_bank"]["slope"]["mean"], predicted["theorem2_bank"]["slope"]["mean"]
    out["theorem2_bank_slope"] = {"logged": t_o, "predicted": t_p}
    mem = [r["slope_rel_error"] for a, r in out["policies"].items()
           if observed["policies"][a]["class"] in ("M0", "M1") and r["slope_rel_error"] is not None]
    out["max_abs_rel_slope_error_memoryless"] = float(np.max(np.abs(mem))) if mem else None
    out["within_10_percent"] = bool(mem) and bool(np.max(np.abs(mem)) <= 0.10)
    return out


def cmd_fit(args: argparse.Namespace) -> int:
    import torch

    from nsr_gym.results import command_line, manifest, provenance_line, write_json

    torch.set_num_threads(1)
    source = Path(args.source)
    try:
        wide = load_records(source)
        st = setting_of(source, wide, args.lam)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    comparator = rg.BANK if rg.BANK in set(wide["agent"]) else "oracle"
    if "cycle" not in wide:
        wide["cycle"] = wide["phase"] // st["M"] + 1
    t0 = time.perf_counter()
    fit = fit_records(wide, st["M"], st["L"], comparator, kappa_source=args.kappa_source)
    config = fit.config()
    out = Path(args.out)
    write_json(out / "analytic_config.json",
               {"config": config, "source": str(source), "setting": st, "fit": fit.as_dict()})
    print(f"fitted analytic config: {json.dumps(config)}")
    if args.no_predict:
        return 0

    # ---- the logged runs through the regret protocol
    seeds_logged = sorted(int(s) for s in wide["seed"].unique())
    present = set(wide["agent"])
    agents = (comparator,) + tuple(a for a in rg.DEFAULT_AGENTS if a in present and a != rg.BANK)
    logged_setup = rg.Setup(st["backend"], st["M"], st["L"], st["C"], st["lam"], st["family"], {},
                            agents)
    observed, _, _ = rg.analyse(wide, logged_setup, seeds_logged, args.resamples,
                                comparator=comparator)
    # ---- the fitted analytic backend on the same setting
    seeds = args.seeds or list(range(200))
    predicted_setup = rg.Setup("analytic", st["M"], st["L"], st["C"], st["lam"], st["family"],
                               dict(config), tuple(a for a in rg.DEFAULT_AGENTS))
    predicted, _ = rg.run_study(predicted_setup, seeds, out / "analytic", resume=not args.no_resume,
                                progress=not args.no_progress, resamples=args.resamples, tol=0.05,
                                max_width=0.5, steps_log=False,
                                extra_meta={"fitted_from": str(source)})
    result = {"setting": st, "config": config, "fit": fit.as_dict(), "comparison": compare(observed, predicted),
              "logged_seeds": seeds_logged, "predicted_seeds": len(seeds)}
    meta = manifest(command_line(), seeds, time.perf_counter() - t0, fitted_from=str(source),
                    logged_seeds=seeds_logged)
    write_json(out / "prediction.json", rg._jsonable(result))
    write_json(out / "manifest.json", meta)
    cmp_ = result["comparison"]
    table = pd.DataFrame([{"agent": a, **{k: v for k, v in r.items() if not isinstance(v, list)}}
                          for a, r in cmp_["policies"].items()])
    fd = fit.as_dict()
    md = (f"# The analytic backend fitted to {source}\n\n{provenance_line(meta)}\n\n"
          f"Fitted config: `{json.dumps(config)}`; curve fit r2 {fd['curve_fit']['r2']:.3f} "
          f"({fd['curve_fit']['source']}).\n\nEstimates: `{json.dumps(rg._jsonable(fd['estimates']))}`; "
          f"diagnostics (effects the model has no parameter for): "
          f"`{json.dumps(rg._jsonable(fd['diagnostics']))}`.\n\n{markdown_table(table)}\n\n"
          f"Delta_switch logged {cmp_['delta_switch']['logged']:.3f}, predicted "
          f"{cmp_['delta_switch']['predicted']:.3f}. Largest relative slope error over the "
          f"memoryless agents: {cmp_['max_abs_rel_slope_error_memoryless']}.\n")
    (out / "prediction.md").write_text(md)
    print(md)
    print(f"wrote {out}/")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit the analytic backend to logged runs and measure its "
                       "prediction error on regret slopes and recovery times")
    p.add_argument("--from", dest="source", required=True,
                   help="a results folder (phases.csv[.gz], steps.csv[.gz]) or one of those files")
    p.add_argument("--out", default="results/fit", help="output folder (default results/fit)")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="switching cost (default: from the input's manifest, else 0.05)")
    p.add_argument("--seeds", type=parse_seeds, default=None,
                   help="seeds of the fitted analytic runs (default 200)")
    p.add_argument("--kappa-source", default="revisit", choices=["revisit", "truncation"],
                   help="kappa from the bank's first revisit step (effective, default) or from "
                        "the truncation gap eps alone (A3)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--no-predict", action="store_true", help="only fit and write the config")
    p.add_argument("--no-resume", action="store_true", help="recompute analytic units")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit)
