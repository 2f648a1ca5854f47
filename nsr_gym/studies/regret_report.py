"""The files ``nsr-gym regret`` writes (:mod:`nsr_gym.studies.regret` computes them): the
per-agent summary table, ``regret.png``, ``summary.md``, gzipped CSVs with reproducible bytes,
and strict JSON; ``nsr-gym regret --capacity`` (:mod:`nsr_gym.studies.regret_capacity`) and
``nsr-gym fit`` reuse them."""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from nsr_gym.studies.regret import Setup

#: THEORY.md's comparator B; ``bank`` in every output (the same name as ``regret.BANK``).
BANK = "bank"


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


# ------------------------------------------------------------------------------------- capacity
def capacity_table(verdicts: dict[str, Any]) -> pd.DataFrame:
    """One row per agent of a capacity study: slope, hits, each bound's ratio, claim, verdict."""
    rows = []
    for a, p in verdicts["policies"].items():
        s, h = p["slope_vs_bank_inf"], p.get("hits_per_revisit_cycle") or {}
        row: dict[str, Any] = {"agent": a, "class": p["class"], "slope": s["mean"],
                               "slope_ci": f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]",
                               "hits": h.get("mean", float("nan"))}
        for b in ("T3", "M1", "M0"):
            e = p.get("bounds", {}).get(b)
            cf = e["complete_forgetting"] if e else None
            row[f"ratio_{b}"] = cf["ratio"] if cf else float("nan")
            row[f"ci_{b}"] = f"[{cf['ci_low']:.3f}, {cf['ci_high']:.3f}]" if cf else ""
            exp = cf.get("expected_ratio") if cf else None
            row[f"expected_{b}"] = float("nan") if exp is None else exp
            row[f"ratio_{b}_general"] = e["general"]["ratio"] if e else float("nan")
        claim = p.get("claim")
        row["claim"] = f"attains {claim['bound']}: {claim['attainment']}" if claim else ""
        row["verdict"] = p.get("verdict", "-")
        rows.append(row)
    return pd.DataFrame(rows)


def capacity_plot(path: Path, verdicts: dict[str, Any], tables: dict[str, pd.DataFrame],
                  title: str) -> None:
    """``regret.png`` of a capacity study: cumulative regret against ``B_inf`` with Theorem 3's
    bound and the M0 rate, and hits per cycle against ``K``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = verdicts["setting"]
    M, K, C, lam = st["M"], st["K"], st["C"], st["lambda"]
    delta = verdicts["delta_switch"]["slope_weighted"]["mean"]
    cycles = np.arange(1, C + 1)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for a, frame in tables.items():
        if a == "bank-inf":
            continue
        line = _band(ax, cycles, frame.groupby("cycle")["cum_regret_vs_bank_inf"], label=a)
        if "hits" in frame:
            ax2.plot(cycles, frame.groupby("cycle")["hits"].mean().to_numpy(), marker="o",
                     color=line.get_color(), label=a)
    ax.plot(cycles, (cycles - 1) * (M - K) * (delta - lam), "k--",
            label="Theorem 3: (M-K)(Δ-λ) per cycle")
    ax.plot(cycles, (cycles - 1) * M * (delta - lam), "k:", label="M0 rate M(Δ-λ) per cycle")
    ax.set_xticks(cycles)
    ax.set(xlabel="cycle", ylabel="cumulative regret vs B_inf (reward units)",
           title=f"Theorem 3 ({st['backend']}: M={M}, K={K}, {st['retention_rule']}, "
                 f"L={st['L']}, λ={lam}, Δ={delta:.2f})")
    ax.legend(fontsize=7)
    ax2.axhline(K, color="k", ls="--", label="K: most hits any policy gets per cycle")
    ax2.set_xticks(cycles)
    ax2.set(xlabel="cycle", ylabel="hits per cycle (mean over seeds)",
            title="Theorem 3 (i): hits per cycle")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def capacity_markdown(verdicts: dict[str, Any], provenance: str) -> str:
    """``summary.md`` of a capacity study."""
    from nsr_gym.results import markdown_table

    st, d, rho = verdicts["setting"], verdicts["delta_switch"], verdicts["rho"]
    rho_text = f"{rho['mean']:.3f} [{rho['ci_low']:.3f}, {rho['ci_high']:.3f}]" if rho else "n/a"
    forgetting = "established" if verdicts["premise_complete_forgetting"] else "NOT established"
    bound = verdicts.get("closed_form_bound")
    bound_text = (f" Closed form: every policy's regret against B_inf is at least "
                  f"{bound['exact']:.3f} over the run (simplified {bound['simplified']:.3f})."
                  if bound else "")
    env = ", ".join(f"{k}={v!r}" for k, v in st["env"].items())
    return (
        f"# Theorem 3 on the {st['backend']} backend, K = {st['K']}, rule {st['retention_rule']}"
        f": {verdicts['overall']}\n\n{provenance}\n\n"
        f"M = {st['M']}, K = {st['K']}, L = {st['L']}, C = {st['C']}, lambda = {st['lambda']}, "
        f"{st['n_seeds']} seeds; rule {st['retention_rule']} = env {env} (clairvoyant: "
        f"retention='agent', its own plan); comparator {st['comparator']}. Delta_switch against "
        f"B_inf: paired {d['paired']['mean']:.3f} [{d['paired']['ci_low']:.3f}, "
        f"{d['paired']['ci_high']:.3f}], general (h_bar witness {d['general']['h_bar_witness']})"
        f" {d['general']['mean']:.3f}; rho {rho_text} (complete forgetting {forgetting})."
        f"{bound_text}\n\n{markdown_table(capacity_table(verdicts))}\n\n"
        f"slope: OLS regret per cycle against B_inf (cycles 2..C); hits: entries of the phase's "
        f"own task loaded per revisit cycle (Theorem 3 (i): at most K); ratio_T3 = slope / ((M-K)"
        f"(Delta-lambda)) (Theorem 3 (ii), every policy), ratio_M1 = slope / ((M-1)(Delta-"
        f"lambda)), ratio_M0 = slope / (M (Delta-lambda)); Delta paired against always-fresh "
        f"(h_bar = 0); *_general against the weakest observed miss; 95% seed-bootstrap CIs; "
        f"expected: the closed form (analytic, noise-free). A lower bound is violated only when "
        f"its CI lies below 1 - tol; claim: where the theorem says the agent attains a bound "
        f"(pinning: T3; LRU, FIFO and keep-current: M0; the clairvoyant, the optimum: T3), "
        f"'tight' when the CI reaches into [1 - tol, 1 + tol].\n")


def write_capacity_outputs(out: Path, verdicts: dict[str, Any], tables: dict[str, pd.DataFrame],
                           wide: pd.DataFrame, meta: dict[str, Any], steps_log: bool) -> str:
    """Every file of a capacity study: ``policy_<agent>.csv``, ``phases.csv.gz`` (and
    ``steps.csv.gz``), ``verdicts.json``, ``summary.md``, ``regret.png``, ``manifest.json``."""
    from nsr_gym.atomic import atomic_write_text
    from nsr_gym.results import provenance_line, write_csv, write_json
    from nsr_gym.theory.protocol import curve_columns

    out.mkdir(parents=True, exist_ok=True)
    for a, frame in tables.items():
        write_csv(out / f"policy_{a}.csv", frame)
    write_csv_gz(out / "phases.csv.gz", wide.drop(columns=curve_columns(wide)))
    if steps_log:
        write_csv_gz(out / "steps.csv.gz", steps_from_records(wide))
    write_json(out / "verdicts.json", strict_json(verdicts))
    prov = provenance_line(meta)
    capacity_plot(out / "regret.png", verdicts, tables, prov.replace("`", ""))
    md = capacity_markdown(verdicts, prov)
    atomic_write_text(out / "summary.md", md)
    write_json(out / "manifest.json", meta)
    return md
