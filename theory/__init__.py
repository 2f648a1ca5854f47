"""Theorem 1 of the NSR paper, stated so it can be tested: model, bounds, estimation, verification.

Pure math and statistics on numpy / pandas arrays. Nothing here imports ``nsr_gym`` envs or
``agents``; they may import this package. Modules, one concept each:

* ``theory.model``: the exponential experience curve, the phase deficit ``Phi``, Bank experience
  ``H_c``, recovery times.
* ``theory.theorem1``: the cyclic setting, ``Delta_switch``, Theorem 1' lower bounds, Theorem 2,
  exact regrets of the tight policies against the Bank oracle.
* ``theory.simulate``: a tiny reference simulator of the env's semantics, for checking them.
* ``theory.capacity``: hits per cycle when the bank holds fewer entries than tasks.
* ``theory.estimate``: ``Delta_switch``, curve fits, forgetting and truncation from logs.
* ``theory.verify``: regret slopes, the seed bootstrap, the one-sided verdict.
* ``theory.fit``: the analytic learner's parameters fitted to logged curves (torch runs).
* ``theory.protocol``: the whole verification protocol on logged phase records.

See THEORY.md (the shared spec) for the statement; the module docstrings carry the proofs and
say which readings of the abstract are interpretations.
"""

from __future__ import annotations

from theory.capacity import CACHE_POLICIES, hits_per_cycle, simulate_hits
from theory.estimate import (
    ExpFit,
    fit_exponential,
    forgetting_ratio,
    paired_delta_switch,
    truncation_gap,
)
from theory.fit import AnalyticFit, fit_analytic, fit_curve_from_summaries
from theory.model import (
    ExpCurve,
    bank_experience,
    phase_deficit,
    phase_deficit_bruteforce,
    pre_switch_accuracy,
    recovery_time,
    recovery_time_fresh,
)
from theory.protocol import Study, analyse_records
from theory.simulate import (
    FRESH,
    KEEP,
    POLICY_NAMES,
    CyclicTrace,
    Policy,
    StepContext,
    load,
    make_policy,
    simulate_cyclic,
    simulated_regret_per_cycle,
    trace_cyclic,
)
from theory.theorem1 import (
    CLOSED_FORM_POLICIES,
    CyclicSetting,
    LowerBound,
    bank_experiences,
    bank_regret_bound_kappa1,
    bank_regret_slope,
    bank_regret_vs_prescient,
    delta_switch,
    delta_switch_asymptotic,
    delta_switch_min,
    lower_bound_m0,
    lower_bound_m1,
    regret_always_fresh,
    regret_bank,
    regret_fixed_slot,
    regret_keep_current,
    regret_per_cycle,
    regret_random_slot,
)
from theory.verify import (
    SlopeRatio,
    Verdict,
    bootstrap_slope_ratio,
    cum_regret_by_cycle,
    one_sided_verdict,
    regret_slope,
)

__all__ = [
    "AnalyticFit",
    "CACHE_POLICIES",
    "CLOSED_FORM_POLICIES",
    "FRESH",
    "KEEP",
    "POLICY_NAMES",
    "CyclicSetting",
    "CyclicTrace",
    "ExpCurve",
    "ExpFit",
    "LowerBound",
    "Policy",
    "SlopeRatio",
    "StepContext",
    "Study",
    "Verdict",
    "analyse_records",
    "bank_experience",
    "bank_experiences",
    "bank_regret_bound_kappa1",
    "bank_regret_slope",
    "bank_regret_vs_prescient",
    "bootstrap_slope_ratio",
    "cum_regret_by_cycle",
    "delta_switch",
    "delta_switch_asymptotic",
    "delta_switch_min",
    "fit_analytic",
    "fit_curve_from_summaries",
    "fit_exponential",
    "forgetting_ratio",
    "hits_per_cycle",
    "load",
    "lower_bound_m0",
    "lower_bound_m1",
    "make_policy",
    "one_sided_verdict",
    "paired_delta_switch",
    "phase_deficit",
    "phase_deficit_bruteforce",
    "pre_switch_accuracy",
    "recovery_time",
    "recovery_time_fresh",
    "regret_always_fresh",
    "regret_bank",
    "regret_fixed_slot",
    "regret_keep_current",
    "regret_per_cycle",
    "regret_random_slot",
    "regret_slope",
    "simulate_cyclic",
    "simulate_hits",
    "simulated_regret_per_cycle",
    "trace_cyclic",
    "truncation_gap",
]
