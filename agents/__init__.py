"""Allocation policies (rules, the oracle, SB3 controllers) and the evaluation loop."""

from agents.evaluation import STEP_COLUMNS, evaluate, rollout
from agents.policies import (
    RULE_AGENTS,
    AlwaysFresh,
    FixedSlot,
    KeepCurrent,
    Oracle,
    Policy,
    RandomSlot,
    RoundRobin,
    SimilarityRule,
    make_policy,
)

__all__ = [
    "RULE_AGENTS", "STEP_COLUMNS", "AlwaysFresh", "FixedSlot", "KeepCurrent", "Oracle", "Policy",
    "RandomSlot", "RoundRobin", "SimilarityRule", "evaluate", "make_policy", "rollout",
]
