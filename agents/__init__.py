"""Allocation policies (rules, the oracle, SB3 controllers) and the evaluation loop."""

from agents.evaluation import STEP_COLUMNS, evaluate, rollout
from agents.policies import (
    RULE_AGENTS,
    AdaptiveSimilarityRule,
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
from agents.sb3_policy import SB3Policy, load_sb3_policy
from agents.specs import make_agent
from agents.train import TrainConfig, train

__all__ = [
    "RULE_AGENTS", "STEP_COLUMNS", "AdaptiveSimilarityRule", "AlwaysFresh", "FixedSlot", "KeepCurrent", "Oracle", "Policy",
    "RandomSlot", "RoundRobin", "SB3Policy", "SimilarityRule", "TrainConfig", "evaluate",
    "load_sb3_policy", "make_agent", "make_policy", "rollout", "train",
]
