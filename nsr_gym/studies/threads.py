"""Scoped thread settings for a study's own computation, restored when it is done.

A study that pins torch (and numpy's BLAS) to a few threads should not leave the whole process
pinned: a notebook or a test that calls it afterwards gets its previous settings back. The
context managers live in the core (:mod:`nsr_gym.threads`, beside the env's own thread policy);
this module keeps the studies' import path.
"""

from __future__ import annotations

from nsr_gym.threads import limited_threads, torch_threads

__all__ = ["limited_threads", "torch_threads"]
