"""The controller study's tables: per-seed metrics, the summary with bootstrap CIs, the
analytic-to-torch transfer gap, paired differences against the rule, and accuracy around task
switches. Pure functions of the step logs that :mod:`nsr_gym.studies.controllers` collects.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from nsr_gym import metrics
from nsr_gym.agents.policies import RULE_AGENTS
from nsr_gym.stats import mean_ci

#: The memoryless agents (THEORY.md's M0 and M1); the table shows the best of them.
MEMORYLESS = ("keep-current", "always-fresh", "fixed-slot", "random-slot")


def summarize(steps: pd.DataFrame) -> pd.DataFrame:
    """Per-(setting, backend, agent, seed) metrics, regret against the oracle on the same seed."""
    parts = []
    for (setting, backend), g in steps.groupby(["setting", "backend"], sort=False):
        parts.append(
            metrics.summarize(g, reference="oracle").assign(setting=setting, backend=backend)
        )
    runs = pd.concat(parts, ignore_index=True)
    return runs[
        ["setting", "backend"] + [c for c in runs.columns if c not in ("setting", "backend")]
    ]


def best_memoryless(runs: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(setting, backend) -> the memoryless agent with the highest mean return there."""
    mem = runs[runs["agent"].isin(MEMORYLESS)]
    means = mem.groupby(["setting", "backend", "agent"])["episode_return"].mean()
    return {key: g.droplevel([0, 1]).idxmax() for key, g in means.groupby(level=[0, 1])}


def agent_class(agent: str) -> str:
    if agent in RULE_AGENTS:
        return RULE_AGENTS[agent]().memory_class
    return "learned"


def table(runs: pd.DataFrame, main_agents: Iterable[str]) -> pd.DataFrame:
    """One row per (setting, backend, agent) of the study's agents plus the best memoryless one."""
    best = best_memoryless(runs)
    wanted = list(main_agents)
    rows = []
    for (setting, backend), g in runs.groupby(["setting", "backend"], sort=False):
        agents = [a for a in wanted if a in set(g["agent"])]
        mem = best.get((setting, backend))
        for agent in agents + ([mem] if mem else []):
            r = g[g["agent"] == agent]
            ret, ret_lo, ret_hi = mean_ci(r["episode_return"].to_numpy())
            rec, rec_lo, rec_hi = mean_ci(r["recovery"].to_numpy())
            reg, reg_lo, reg_hi = (
                mean_ci(r["regret"].to_numpy()) if "regret" in r else (np.nan,) * 3
            )
            rows.append(
                {
                    "setting": setting,
                    "backend": backend,
                    "agent": agent if agent != mem else f"{agent} (best memoryless)",
                    "class": agent_class(agent),
                    "seeds": len(r),
                    "recovery": rec,
                    "recovery_ci": f"[{rec_lo:.2f}, {rec_hi:.2f}]",
                    "recovery_censored": float(r["recovery_censored"].mean()),
                    "acc_online": float(r["acc_online"].mean()),
                    "return": ret,
                    "return_ci": f"[{ret_lo:.1f}, {ret_hi:.1f}]",
                    "regret": reg,
                    "regret_ci": f"[{reg_lo:.1f}, {reg_hi:.1f}]",
                    "switches": float(r["switches"].mean()),
                }
            )
    return pd.DataFrame(rows)


def _returns(runs: pd.DataFrame, setting: str, backend: str, agent: str) -> pd.Series:
    g = runs[(runs["setting"] == setting) & (runs["backend"] == backend) & (runs["agent"] == agent)]
    return g.set_index("seed")["episode_return"]


def transfer_gap(runs: pd.DataFrame, learned: Iterable[str]) -> pd.DataFrame:
    """Each learned controller's return as a percentage of the similarity rule's, per backend.

    ``gap_points`` = percentage on the backend it was trained on minus the percentage on the
    other one (paired by seed): how much of its standing a controller loses when it moves from
    the learner it was trained with to the other (analytic -> torch for most; torch -> analytic
    for the torch-trained one).
    """
    rows = []
    for setting in runs["setting"].unique():
        backends = set(runs.loc[runs["setting"] == setting, "backend"])
        if not {"analytic", "torch"} <= backends:
            continue
        for agent in learned:
            pct = {}
            for b in ("analytic", "torch"):
                rule = _returns(runs, setting, b, "similarity")
                pct[b] = 100 * _returns(runs, setting, b, agent) / rule
            if pct["analytic"].dropna().empty or pct["torch"].dropna().empty:
                continue
            home = "torch" if "torch-trained" in agent else "analytic"
            away = "analytic" if home == "torch" else "torch"
            gap, lo, hi = mean_ci((pct[home] - pct[away]).dropna().to_numpy())
            rows.append(
                {
                    "setting": setting,
                    "agent": agent,
                    "trained_on": home,
                    "pct_of_rule_analytic": float(pct["analytic"].mean()),
                    "pct_of_rule_torch": float(pct["torch"].mean()),
                    "gap_points": gap,
                    "gap_ci": f"[{lo:.2f}, {hi:.2f}]",
                }
            )
    return pd.DataFrame(rows)


def paired_vs(runs: pd.DataFrame, learned: Iterable[str], reference: str | None) -> pd.DataFrame:
    """Each learned controller's return minus a reference's, paired by seed, with a CI.

    Args:
        reference: An agent name, or ``None`` for the best memoryless agent of each
            (setting, backend).
    """
    best = best_memoryless(runs)
    rows = []
    for setting, backend in runs[["setting", "backend"]].drop_duplicates().itertuples(index=False):
        ref = reference or best.get((setting, backend))
        base = _returns(runs, setting, backend, ref) if ref else pd.Series(dtype=float)
        for agent in learned:
            a = _returns(runs, setting, backend, agent)
            if a.empty or base.empty:
                continue
            diff = (a - base).dropna().to_numpy()
            m, lo, hi = mean_ci(diff)
            rows.append(
                {
                    "setting": setting,
                    "backend": backend,
                    "agent": agent,
                    "reference": ref,
                    "seeds": len(diff),
                    "diff": m,
                    "ci_low": lo,
                    "ci_high": hi,
                    "pct_of_reference": 100 * float((a / base).dropna().mean()),
                }
            )
    return pd.DataFrame(rows)


def switch_curves(steps: pd.DataFrame, before: int = 5, after: int = 20) -> pd.DataFrame:
    """Accuracy around the start of each revisit: mean over seeds with a 95% bootstrap band.

    For each (setting, backend, agent, seed) the accuracy at offsets ``-before .. after - 1``
    from every revisit's first step is averaged over revisits; then over seeds.
    """
    per_seed = []
    for key, g in steps.groupby(["setting", "backend", "agent", "seed"], sort=False):
        acc = g.sort_values("t")["accuracy"].to_numpy()
        starts = g.loc[(g["step_in_phase"] == 0) & (g["is_revisit"] == 1), "t"].to_numpy()
        if not len(starts):
            continue
        offs = np.arange(-before, after)
        mat = np.array(
            [[acc[t + o] if 0 <= t + o < len(acc) else np.nan for o in offs] for t in starts]
        )
        per_seed.append(
            pd.DataFrame(
                {
                    "setting": key[0],
                    "backend": key[1],
                    "agent": key[2],
                    "seed": key[3],
                    "offset": offs,
                    "accuracy": np.nanmean(mat, axis=0),
                }
            )
        )
    seeds = pd.concat(per_seed, ignore_index=True)
    rows = []
    for (setting, backend, agent, off), g in seeds.groupby(
        ["setting", "backend", "agent", "offset"], sort=False
    ):
        m, lo, hi = mean_ci(g["accuracy"].to_numpy(), n_boot=500)
        rows.append(
            {
                "setting": setting,
                "backend": backend,
                "agent": agent,
                "offset": off,
                "accuracy": m,
                "ci_low": lo,
                "ci_high": hi,
                "seeds": len(g),
            }
        )
    return pd.DataFrame(rows)
