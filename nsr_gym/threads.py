"""Torch's thread count: the env's own policy, and scoped settings for the rest.

The policy (what :func:`env_threads` applies to every method of the torch learner):

* The env's own torch computation runs on **one intra-op thread**, set on entry and restored on
  exit (two ``torch.set_num_threads`` calls, well under a microsecond). Its operations are tiny
  (a default step is ~5 MFLOP in a few dozen kernel launches): a second OpenMP thread only adds a
  barrier per kernel, and under CPU load those barriers wait for a descheduled thread: on a
  shared 2-core machine, two threads stepped the torch env two orders of magnitude slower than
  one (issue 14's measurement, single env and ``gym.make_vec(..., 4, "sync")`` alike).
  :func:`set_env_threads` changes the count (``None`` leaves torch's setting alone); it sets
  :data:`THREADS_VAR` too, so that ``spawn`` and ``forkserver`` workers follow.
* In a process made by ``fork`` the env always runs on one thread, whatever the setting. GNU
  OpenMP's thread pool does not survive ``fork``: the child inherits a pool whose threads do not
  exist, and the first parallel region with more than one thread waits for them forever (what
  hung ``gym.make_vec(id, 2, vectorization_mode="async")`` with default threads: the parent's
  first env had run matrix products on two threads, and each forked worker blocked in its own
  constructor). A parallel region of one thread never touches the pool, so one thread is safe
  whatever the parent did; the child is marked by an ``os.register_at_fork`` handler.

A learner class with ``own_threads = True`` (the paper-scale
:class:`~nsr_gym.learners.pretrained.PretrainedLearner`, whose ViT-B/16 kernels are large) keeps
torch's own count instead, outside forked processes.

Code outside the env (a training loop, a study) chooses its own count with
:func:`torch_threads` or :func:`limited_threads`, which restore the previous settings after.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

__all__ = ["THREADS_VAR", "env_thread_count", "env_threads", "limited_threads",
           "set_env_threads", "single_threaded", "torch_threads"]

#: Environment variable holding the env's thread count (``0``: leave torch's setting alone).
THREADS_VAR = "NSR_GYM_TORCH_THREADS"

F = TypeVar("F", bound=Callable[..., Any])


def _read_setting() -> int | None:
    text = os.environ.get(THREADS_VAR, "").strip()
    if not text:
        return 1
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:  # a bad variable must not stop `import nsr_gym`: say so and keep the default
        warnings.warn(f"{THREADS_VAR}={text!r} ignored: expected an integer >= 0 (0 leaves "
                      "torch's thread count alone); the env runs on 1 thread", stacklevel=2)
        return 1
    return n or None


#: The configured count (None: leave torch's alone) and whether this process was forked.
_setting: int | None = _read_setting()
_forked = False


def _after_fork_in_child() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_env_threads(n: int | None) -> None:
    """Set the torch intra-op threads of the env's own computation (default 1).

    Args:
        n: Threads, ``>= 1``; ``None`` leaves torch's process-wide setting alone (a forked
            worker still runs the env on one thread, see the module docstring).
    """
    global _setting
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"env threads must be an int >= 1 or None, got {n!r}")
    _setting = n
    os.environ[THREADS_VAR] = str(n or 0)


def env_thread_count() -> int | None:
    """The count :func:`env_threads` applies here: 1 in a forked process, else the setting."""
    return 1 if _forked else _setting


@contextmanager
def env_threads() -> Iterator[None]:
    """Run the block on :func:`env_thread_count` torch threads; restore the count after."""
    want = env_thread_count()
    have = torch.get_num_threads()
    if want is None or want == have:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(have)


def single_threaded(method: F) -> F:
    """Decorate ``method`` to run under :func:`env_threads` (the cheap form: no generator; a
    nested call finds the count already set and adds one ``torch.get_num_threads``)."""

    @functools.wraps(method)
    def scoped(*args: Any, **kwargs: Any) -> Any:
        # a learner whose kernels are large (``own_threads = True``: the paper-scale backbones)
        # keeps torch's own count, except in a forked process, where one thread is what is safe
        own = bool(args) and getattr(args[0], "own_threads", False)
        want = 1 if _forked else None if own else _setting
        have = torch.get_num_threads()
        if want is None or want == have:
            return method(*args, **kwargs)
        torch.set_num_threads(want)
        try:
            return method(*args, **kwargs)
        finally:
            torch.set_num_threads(have)

    scoped.__wrapped_by_env_threads__ = True  # type: ignore[attr-defined]
    return scoped  # type: ignore[return-value]


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; restore the previous count after.

    Args:
        n: Torch intra-op threads inside the block.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def limited_threads(n: int = 1) -> Iterator[None]:
    """Torch intra-op threads and the BLAS / OpenMP pools (``threadpoolctl``) at ``n`` inside the
    block; both restored after.

    Args:
        n: Threads of torch and of numpy's BLAS inside the block.
    """
    from threadpoolctl import threadpool_limits

    with torch_threads(n), threadpool_limits(limits=n):
        yield
