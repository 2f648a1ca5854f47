"""nsr-gym: Gymnasium environments for continual learning as memory management.

Importing the package registers the envs, so ``gymnasium.make("nsr_gym/CyclicSplitDigits-v0")``
and ``gymnasium.make("nsr_gym:nsr_gym/CyclicSplitDigits-v0")`` both work, in spawned vector-env
workers too.
"""

from __future__ import annotations

from nsr_gym.bank import BankEntry, BankFormatError, TaskKnowledgeBank, compress_lora
from nsr_gym.envs import (
    BENCHMARKS,
    FRESH,
    KEEP,
    LOAD_OFFSET,
    PAPER_BENCHMARKS,
    AllocationEnv,
    env_id,
    make_paper_env,
    register_envs,
)

__version__ = "0.1.0"

register_envs()

__all__ = [
    "AllocationEnv",
    "BENCHMARKS",
    "BankEntry",
    "BankFormatError",
    "FRESH",
    "KEEP",
    "LOAD_OFFSET",
    "PAPER_BENCHMARKS",
    "TaskKnowledgeBank",
    "compress_lora",
    "env_id",
    "make_paper_env",
    "register_envs",
    "__version__",
]
