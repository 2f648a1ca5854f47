"""Learner backends: ``torch`` (the real continual learner), ``analytic`` (THEORY.md's model) and
``pretrained`` (paper scale); :func:`make_learner` builds any of them from a name and options."""

from __future__ import annotations

from nsr_gym.learners.analytic import AnalyticConfig, AnalyticLearner
from nsr_gym.learners.base import Learner, UpdateReport
from nsr_gym.learners.config import AdapterConfig
from nsr_gym.learners.factory import BACKENDS, LEARNER_BACKENDS, make_learner
from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig

__all__ = ["AdapterConfig", "AnalyticConfig", "AnalyticLearner", "BACKENDS", "LEARNER_BACKENDS",
           "Learner", "TorchLearner", "TorchLearnerConfig", "UpdateReport", "make_learner"]
