"""Checks that reject wrong input before any work starts, with a message that says what to do.

* :func:`env_config_problems`: the env's own arguments (sizes, weights, names), and
  :func:`parse_action` / :func:`parse_retention_action`: an action, before anything happens.
* :func:`learner_option_problems`: values of the ``learner={...}`` overrides of either backend,
  by the rule each config field carries (:mod:`nsr_gym.learners.config`; :data:`LEARNER_RULES`
  lists them, derived from the fields, never written out here).
* :func:`payload_is_finite`: the guard that keeps NaN/inf out of the bank.

Whether a saved bank fits an env lives with the bank (:mod:`nsr_gym.bank.geometry`); its names
are re-exported here for callers of the old place. Everything raises or returns plain messages;
nothing here trains, loads a model or touches data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nsr_gym.bank import EVICTION_POLICIES
from nsr_gym.bank.geometry import (
    GEOMETRY_FILE,
    check_bank_fits,
    env_geometry,
    read_geometry,
    write_geometry,
)
from nsr_gym.learners.config import Rule, option_problems
from nsr_gym.learners.factory import BACKENDS, LEARNER_CONFIGS, learner_rules
from nsr_gym.streams import SCHEDULES

__all__ = ["GEOMETRY_FILE", "LEARNER_RULES", "check_bank_fits", "env_config_problems",
           "env_geometry", "learner_option_problems", "parse_action", "parse_retention_action",
           "payload_is_finite", "read_geometry", "write_geometry"]

#: backend -> option -> (test, what it must be), from the config fields' metadata.
LEARNER_RULES: dict[str, dict[str, Rule]] = learner_rules()


def learner_option_problems(backend: str, options: Mapping[str, Any]) -> list[str]:
    """One message per bad value in ``options`` (names are checked by the learner factory)."""
    config_cls = LEARNER_CONFIGS.get(backend)
    return [] if config_cls is None else option_problems(config_cls, options)


def env_config_problems(*, n_tasks: Any, phase_length: Any, n_cycles: Any, capacity: Any,
                        updates_per_step: Any, lambda_switch: Any, acc_weight: Any,
                        schedule: Any, eviction: Any, backend: Any, reserve: Any,
                        reserve_modes: Sequence[str], render_mode: Any,
                        render_modes: Sequence[str], retention: Any = "env",
                        retention_modes: Sequence[str] = ("env",)) -> list[str]:
    """One message per bad argument of ``AllocationEnv`` (``reserve_modes``, ``render_modes``
    and ``retention_modes``: the values it accepts, besides ``render_mode=None``); [] when all
    fit. ``retention="agent"`` needs ``reserve="owner"``."""
    problems = []
    for name, v in (("n_tasks", n_tasks), ("phase_length", phase_length), ("n_cycles", n_cycles),
                    ("capacity", capacity), ("updates_per_step", updates_per_step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            problems.append(f"{name} must be an integer >= 1 (got {v!r})")
    for name, v in (("lambda_switch", lambda_switch), ("acc_weight", acc_weight)):
        if not isinstance(v, (int, float, np.floating)) or not np.isfinite(v) or v < 0:
            problems.append(f"{name} must be a finite number >= 0 (got {v!r})")
    for name, v, allowed in (("schedule", schedule, SCHEDULES),
                             ("eviction", eviction, EVICTION_POLICIES),
                             ("backend", backend, BACKENDS),
                             ("reserve", reserve, tuple(reserve_modes)),
                             ("retention", retention, tuple(retention_modes))):
        if v not in allowed:
            problems.append(f"{name} must be one of {allowed} (got {v!r})")
    if retention == "agent" and reserve != "owner":
        problems.append(f"retention='agent' decides where each task's own entry goes, so it "
                        f"needs reserve='owner' (got reserve={reserve!r}); pass reserve='owner'")
    if render_mode is not None and render_mode not in render_modes:
        allowed = " or ".join(["None", *map(repr, render_modes)])
        problems.append(f"render_mode must be {allowed} (got {render_mode!r})")
    return problems


def parse_action(action: Any, n: int) -> int:
    """``action`` as an int in ``[0, n)`` (keep, fresh, then ``n - 2`` load actions).

    Raises:
        ValueError: naming the valid range, for anything but one integer in range (a float
            with an integer value counts; NaN, bools, arrays of more values do not).
    """
    if type(action) is int or isinstance(action, np.integer):  # the common case, cheaply
        if 0 <= action < n:
            return int(action)
    arr = np.asarray(action)
    if arr.size != 1 or arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise ValueError(f"action must be one integer in [0, {n}), got {action!r}")
    value = arr.reshape(()).item()
    if isinstance(value, float) and (not np.isfinite(value) or value != int(value)):
        raise ValueError(f"action must be an integer in [0, {n}), got {action!r}")
    value = int(value)
    if not 0 <= value < n:
        raise ValueError(f"action {value} is out of range: use 0 (keep), 1 (fresh) or "
                         f"2..{n - 1} (load slot 0..{n - 3})")
    return value


def parse_retention_action(action: Any, capacity: int) -> tuple[int, int]:
    """A ``retention="agent"`` action ``[allocation, retention]`` as two ints.

    ``allocation`` is in ``[0, K + 2)`` (keep, fresh, load slot ``k``), ``retention`` in
    ``[0, K + 1)`` (drop the pending entry, or write it into slot ``retention - 1``). Whether a
    nonzero ``retention`` means anything (an entry is pending) is the env's to say.

    Raises:
        ValueError: naming the valid ranges, for anything but two integers in range (floats with
            integer values count; NaN, bools, strings and other shapes do not).
    """
    n_alloc, n_ret = capacity + 2, capacity + 1
    form = (f"an array of 2 integers [allocation in [0, {n_alloc}), retention in [0, {n_ret})] "
            "(retention='agent' takes a MultiDiscrete action)")
    arr = np.asarray(action)
    if arr.shape != (2,) or arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise ValueError(f"action must be {form}, got {action!r}")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise ValueError(f"action must be {form}, got {action!r}")
    a, r = (int(v) for v in arr.tolist())
    if not 0 <= a < n_alloc:
        raise ValueError(f"allocation action[0] = {a} is out of range: use 0 (keep), 1 (fresh) "
                         f"or 2..{n_alloc - 1} (load slot 0..{capacity - 1})")
    if not 0 <= r < n_ret:
        raise ValueError(f"retention action[1] = {r} is out of range: use 0 (drop the pending "
                         f"entry) or 1..{n_ret - 1} (write it into slot 0..{capacity - 1})")
    return a, r


def payload_is_finite(payload: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> bool:
    """Whether every floating-point tensor of a payload is free of NaN and inf."""
    tensors = payload.values() if isinstance(payload, Mapping) else payload
    return all(not t.is_floating_point() or bool(torch.isfinite(t).all()) for t in tensors)
