"""Shared fixtures: small, fast env settings for every test."""

from __future__ import annotations

import pytest
import torch

# Tests run on 2 CPU cores: one intra-op thread is faster for these tiny models and keeps the
# per-test timings stable.
torch.set_num_threads(1)

#: A short stream: 5 tasks x 2 cycles x 6 steps = 60 steps.
SMALL = dict(phase_length=6, n_cycles=2)


@pytest.fixture
def small_kwargs() -> dict:
    return dict(SMALL)
