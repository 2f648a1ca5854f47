"""Allocation policies (rules, the oracle, the clairvoyant, SB3 controllers), factory and rollout.

Installed and imported as ``nsr_gym.agents`` (the folder sits at the top of the repository).
:func:`make_agent` builds any agent from its name or ``ALGO:PATH`` spec; :func:`rollout` is the
one episode loop; :func:`evaluate` runs a comparison; :func:`train` trains a controller.
"""

from __future__ import annotations

from nsr_gym.agents.clairvoyant import Clairvoyant, Plan, PlanningProblem
from nsr_gym.agents.evaluation import STEP_COLUMNS, evaluate, rollout
from nsr_gym.agents.policies import (
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
from nsr_gym.agents.retention import (
    REFERENCE_RETENTION_AGENTS,
    RETENTION_AGENTS,
    BeladyRetention,
    LFURetention,
    LRURetention,
    PinRule,
)
from nsr_gym.agents.sb3_policy import SB3Policy, load_sb3_policy
from nsr_gym.agents.sb3_vec import SB3VecEnv
from nsr_gym.agents.specs import make_agent
from nsr_gym.agents.train import TrainConfig, train

__all__ = [
    "RULE_AGENTS", "STEP_COLUMNS", "AdaptiveSimilarityRule", "AlwaysFresh", "Clairvoyant",
    "FixedSlot", "KeepCurrent", "Oracle", "Plan", "PlanningProblem", "Policy", "RandomSlot",
    "RoundRobin", "SB3Policy", "SimilarityRule", "TrainConfig", "evaluate", "load_sb3_policy",
    "make_agent", "make_policy", "rollout", "train",
    "REFERENCE_RETENTION_AGENTS", "RETENTION_AGENTS", "BeladyRetention", "LFURetention",
    "LRURetention", "PinRule", "SB3VecEnv",
]
