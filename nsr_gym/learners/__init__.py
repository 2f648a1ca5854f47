"""Learner backends: ``torch`` (the real continual learner) and ``analytic`` (THEORY.md's model)."""

from nsr_gym.learners.analytic import AnalyticConfig, AnalyticLearner
from nsr_gym.learners.base import Learner, UpdateReport
from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig

__all__ = ["AnalyticConfig", "AnalyticLearner", "Learner", "TorchLearner", "TorchLearnerConfig", "UpdateReport"]
