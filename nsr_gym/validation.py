"""Checks that reject wrong input before any work starts, with a message that says what to do.

* :func:`env_config_problems`: the env's own arguments (sizes, weights, names), and
  :func:`parse_action` / :func:`parse_retention_action`: an action, before anything happens.
* :func:`learner_option_problems`: values of the ``learner={...}`` overrides of either backend,
  by the rule each config field carries (:mod:`nsr_gym.learners.config`; :data:`LEARNER_RULES`
  lists them, derived from the fields, never written out here).
* :func:`payload_is_finite`: the guard that keeps NaN/inf out of the bank.
* Upper bounds (:data:`ENV_LIMITS`, :data:`LEARNER_LIMITS`): a value above one is refused with a
  message saying what it would cost (memory, steps), before anything is allocated. Booleans are
  never numbers (``lambda_switch=True`` is refused).

Whether a saved bank fits an env lives with the bank (:mod:`nsr_gym.bank.geometry`); its names
are re-exported here for callers of the old place. Everything raises or returns plain messages;
nothing here trains, loads a model or touches data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nsr_gym.bank import EVICTION_POLICIES
from nsr_gym.bank.entry import is_finite
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

__all__ = ["ENV_LIMITS", "GEOMETRY_FILE", "LEARNER_LIMITS", "LEARNER_RULES", "check_bank_fits",
           "env_config_problems", "env_geometry", "learner_argument_problems",
           "learner_limit_problems", "learner_option_problems", "parse_action",
           "parse_retention_action", "payload_is_finite", "read_geometry", "write_geometry"]

#: backend -> option -> (test, what it must be), from the config fields' metadata.
LEARNER_RULES: dict[str, dict[str, Rule]] = learner_rules()

#: Largest ``n_tasks``, ``capacity``, steps per episode and ``updates_per_step`` an env takes.
ENV_LIMITS: dict[str, int] = {"n_tasks": 100_000, "capacity": 100_000, "n_steps": 100_000_000,
                              "updates_per_step": 10_000}
#: Largest ``lambda_switch`` and ``acc_weight`` (reward units).
MAX_REWARD_WEIGHT = 1e6

_GIB = float(2 ** 30)
#: learner option -> (largest value, what a value ``v`` would cost, formatted with ``v``).
LEARNER_LIMITS: dict[str, tuple[float, str]] = {
    "lr": (10.0, "Adam moves every weight by about lr per update, so the adapters leave the "
                 "float32 range within a few steps"),
    "lora_rank": (1024, "a rank-r adapter costs r x (in + out) float32 per layer and per bank "
                        "entry: {gib_rank:.2f} GiB for one 768-wide layer"),
    "compression_rank": (1024, "the SVD keeps up to this many directions per layer"),
    "lora_alpha": (1e6, "the update is scaled by alpha / r"),
    "batch_size": (1_000_000, "one update holds batch_size examples and their activations"),
    "probe_size": (1_000_000, "the probe batch is held in memory at every embedding"),
    "distill_anchors": (1_000_000, "anchors cost distill_anchors x input_dim x 4 bytes per "
                                   "protected task: {gib_anchor:.2f} GiB at input_dim 3072"),
    "distill_max_tasks": (10_000, "every update runs the anchors of every protected task"),
    "distill_weight": (1e6, "a weight that large drowns the task loss"),
    "distill_temperature": (1e6, "a temperature that large flattens every softmax"),
    "vit_dim": (65_536, "a ViT block holds about 12 x vit_dim^2 float32"),
    "vit_depth": (1024, "each block holds its own weights and activations"),
    "vit_heads": (1024, "each head splits the token width"),
    "vit_patch": (1024, "a patch wider than the image leaves no tokens"),
    "lora_blocks": (1024, "each adapted block adds its own adapters"),
    "key_dim": (65_536, "bank keys cost capacity x key_dim x 4 bytes"),
    "eval_samples": (10_000_000, "each evaluation draws this many samples"),
    "embed_pool": (1_000_000, "the pool's frozen features are cached per task"),
    "eval_size": (10_000_000, "evaluation holds this many test images per task"),
    "eval_batch_size": (1_000_000, "one evaluation chunk holds this many images"),
}
#: Widest hidden layer of the MLP backbone (``hidden``): a width-w layer holds w x w_prev floats.
MAX_WIDTH = 65_536


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and \
        not isinstance(v, (bool, np.bool_))


def _short(v: Any) -> str:
    """``repr(v)``, cut to 40 characters (a 5,000-digit int is not echoed back whole)."""
    if isinstance(v, int) and abs(v) >= 10 ** 30:  # str() of a 5,000-digit int is an error
        return f"<an int of about {int(v.bit_length() * 0.30103) + 1} digits>"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _count(v: int) -> str:
    """``v`` with thousands separators, or :func:`_short`'s form for a huge one."""
    return f"{v:,}" if abs(v) < 10 ** 30 else _short(v)


def _finite(v: Any) -> bool:
    """A number that is not NaN or inf (an int too large for a float counts as inf)."""
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def learner_limit_problems(options: Mapping[str, Any]) -> list[str]:
    """One message per number in ``options`` above its :data:`LEARNER_LIMITS` bound (values
    that are not numbers are left to the field rules)."""
    problems = []
    for name, value in options.items():
        if name == "hidden" and isinstance(value, (list, tuple)):
            wide = [w for w in value if _is_number(w) and w > MAX_WIDTH]
            if wide:
                problems.append(f"learner option hidden has width {wide[0]:,} above {MAX_WIDTH:,}"
                                f": a {wide[0]:,}-wide layer holds {wide[0]:,} x (previous "
                                "width) float32")
            continue
        if name not in LEARNER_LIMITS or not _is_number(value) or \
                (not _finite(value) and not isinstance(value, (int, np.integer))):
            continue
        limit, cost = LEARNER_LIMITS[name]
        if value > limit:
            v = float(value) if _finite(value) else math.inf
            detail = cost.format(gib_rank=v * 2 * 768 * 4 / _GIB,
                                 gib_anchor=v * 3072 * 4 / _GIB)
            problems.append(f"learner option {name}={_short(value)} is above {limit:g}: {detail}")
    return problems


def learner_option_problems(backend: str, options: Mapping[str, Any]) -> list[str]:
    """One message per bad value in ``options`` (names are checked by the learner factory):
    the field rules, then the upper bounds of :data:`LEARNER_LIMITS`."""
    config_cls = LEARNER_CONFIGS.get(backend)
    rules = [] if config_cls is None else option_problems(config_cls, options)
    return rules + learner_limit_problems(options)


def learner_argument_problems(learner: Any) -> list[str]:
    """What is wrong with an env's ``learner=`` argument: ``None``, a mapping of option names
    (whose numbers must be within :data:`LEARNER_LIMITS`) or a ready ``Learner``."""
    from nsr_gym.learners.base import Learner

    if learner is None or isinstance(learner, Learner):
        return []
    if not isinstance(learner, Mapping):
        return [f"learner must be a dict of learner options (e.g. {{'lr': 0.01}}) or a Learner "
                f"(got {type(learner).__name__} {learner!r:.80})"]
    bad = [k for k in learner if not isinstance(k, str)]
    if bad:
        return [f"learner option names must be strings (got {bad[0]!r})"]
    return learner_limit_problems(learner)


def _size_problems(n_tasks: Any, phase_length: Any, n_cycles: Any, capacity: Any,
                   updates_per_step: Any) -> list[str]:
    """Integers >= 1 (never bools) within :data:`ENV_LIMITS`, with what a larger one costs."""
    problems = []
    sizes = (("n_tasks", n_tasks), ("phase_length", phase_length), ("n_cycles", n_cycles),
             ("capacity", capacity), ("updates_per_step", updates_per_step))
    for name, v in sizes:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            problems.append(f"{name} must be an integer >= 1 (got {_short(v)})")
    if problems:
        return problems
    lim = ENV_LIMITS
    if n_tasks > lim["n_tasks"]:
        problems.append(f"n_tasks={_count(n_tasks)} is above {lim['n_tasks']:,}: every task "
                        "keeps its own data, embedding and head")
    if capacity > lim["capacity"]:
        k = min(int(capacity), 10**30)  # the cost in numbers a float can hold
        problems.append(
            f"capacity={_count(capacity)} is above {lim['capacity']:,}: the bank would "
            f"preallocate {_count(capacity)} slots (keys alone {k * 768 * 4 / _GIB:,.1f} GiB at "
            f"a ViT-B/16's key_dim 768), and every step an observation of {_count(5 * k + 3)} "
            f"floats and {_count(k + 2)} actions")
    steps = int(n_tasks) * int(n_cycles) * int(phase_length)
    if steps > lim["n_steps"]:
        problems.append(
            f"an episode of n_tasks x n_cycles x phase_length = {_count(steps)} steps is above "
            f"{lim['n_steps']:,}: its step log alone would take about "
            f"{min(steps, 10**30) * 200 / _GIB:,.0f} GiB (reduce phase_length or n_cycles)")
    if updates_per_step > lim["updates_per_step"]:
        problems.append(f"updates_per_step={_count(updates_per_step)} is above "
                        f"{lim['updates_per_step']:,}: each env step would run that many "
                        "optimiser updates")
    return problems


def env_config_problems(*, n_tasks: Any, phase_length: Any, n_cycles: Any, capacity: Any,
                        updates_per_step: Any, lambda_switch: Any, acc_weight: Any,
                        schedule: Any, eviction: Any, backend: Any, reserve: Any,
                        reserve_modes: Sequence[str], render_mode: Any,
                        render_modes: Sequence[str], retention: Any = "env",
                        retention_modes: Sequence[str] = ("env",), learner: Any = None
                        ) -> list[str]:
    """One message per bad argument of ``AllocationEnv`` (``reserve_modes``, ``render_modes``
    and ``retention_modes``: the values it accepts, besides ``render_mode=None``); [] when all
    fit. ``retention="agent"`` needs ``reserve="owner"``. Sizes are bounded by
    :data:`ENV_LIMITS` and ``learner`` checked by :func:`learner_argument_problems`."""
    problems = _size_problems(n_tasks, phase_length, n_cycles, capacity, updates_per_step)
    for name, v in (("lambda_switch", lambda_switch), ("acc_weight", acc_weight)):
        if not _is_number(v) or not _finite(v) or not 0 <= v <= MAX_REWARD_WEIGHT:
            problems.append(f"{name} must be a finite number >= 0 and <= "
                            f"{MAX_REWARD_WEIGHT:g} (booleans are not numbers; got {_short(v)})")
    problems += learner_argument_problems(learner)
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
    return all(is_finite(t) for t in tensors)
