"""Learner settings: the fields every LoRA learner shares, and the rule each field carries.

Each config field is declared once, as a dataclass field whose metadata holds its :class:`Rule`
(what a value must be). :class:`AdapterConfig` holds the fields of every LoRA learner (rank,
optimiser, probe, compression, distillation); ``TorchLearnerConfig`` and ``PretrainedConfig``
extend it, and a subclass that wants another default says so with :func:`override`, which keeps
the field's rule. :func:`option_problems` checks a user's ``learner={...}`` against the rules, so
validation never lists the fields again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = ["BOOL", "NON_NEGATIVE", "POSITIVE", "STR", "AdapterConfig", "Rule", "field_rules",
           "in_range", "int_at_least", "is_int", "is_num", "option_problems", "optional",
           "override", "per_task", "setting"]


class Rule(NamedTuple):
    """What a config value must be.

    Attributes:
        test: True for an acceptable value.
        what: The requirement in words, completing "must be ...".
    """

    test: Callable[[Any], bool]
    what: str


def is_int(v: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_num(v: Any) -> bool:
    """A finite real number, not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(float(v))


def int_at_least(lo: int) -> Rule:
    """An integer ``>= lo``."""
    return Rule(lambda v: is_int(v) and v >= lo, f"an integer >= {lo}")


def optional(rule: Rule) -> Rule:
    """``None`` or what ``rule`` accepts."""
    return Rule(lambda v: v is None or rule.test(v), f"None or {rule.what}")


def in_range(ok: Callable[[float], bool], what: str) -> Rule:
    """A finite number for which ``ok`` holds (``what`` names the range, e.g. ``"in [0, 1]"``)."""
    return Rule(lambda v: is_num(v) and ok(float(v)), f"a number {what}")


def per_task(ok: Callable[[float], bool], what: str) -> Rule:
    """A finite number for which ``ok`` holds, or a non-empty sequence of them (one per task)."""
    def check(v: Any) -> bool:
        values = v if isinstance(v, (list, tuple, np.ndarray)) else [v]
        return len(values) > 0 and all(is_num(x) and ok(float(x)) for x in values)
    return Rule(check, f"a finite number {what} (or one per task)")


BOOL = Rule(lambda v: isinstance(v, (bool, np.bool_)), "True or False")
STR = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
POSITIVE = Rule(lambda v: is_num(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = Rule(lambda v: is_num(v) and v >= 0, "a finite number >= 0")


def setting(default: Any, rule: Rule | None = None) -> Any:
    """A config field with its default and the rule its values obey (``None``: any value)."""
    metadata = {} if rule is None else {"rule": rule}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def override(base: type, name: str, default: Any) -> Any:
    """Field ``name`` of dataclass ``base`` with another default, keeping its rule."""
    return dataclasses.field(default=default, metadata=base.__dataclass_fields__[name].metadata)


def field_rules(config_cls: type) -> dict[str, Rule]:
    """Field name -> rule, for the fields of ``config_cls`` that carry one."""
    return {f.name: f.metadata["rule"] for f in dataclasses.fields(config_cls)
            if "rule" in f.metadata}


def option_problems(config_cls: type, options: Mapping[str, Any]) -> list[str]:
    """One message per value in ``options`` that breaks its field's rule; [] when all fit.

    Names are not checked here (the learner factory reports unknown ones).
    """
    rules = field_rules(config_cls)
    return [f"learner option {name} must be {rules[name].what} (got {value!r})"
            for name, value in options.items()
            if name in rules and not rules[name].test(value)]


@dataclass(frozen=True)
class AdapterConfig:
    """Settings every LoRA learner shares; the defaults are the registered benchmarks'."""

    lora_rank: int = setting(4, int_at_least(1))
    """LoRA rank ``r`` on every adapted layer."""
    lora_alpha: float = setting(4.0, POSITIVE)
    """LoRA ``alpha``; the update is ``(alpha / r) B A``."""
    lr: float = setting(5e-3, POSITIVE)
    """Adam learning rate for adapter and head."""
    batch_size: int = setting(32, int_at_least(1))
    """Training examples per update."""
    probe_size: int = setting(64, int_at_least(1))
    """Examples in the probe batch whose mean frozen feature is the task embedding."""
    compression_rank: int | None = setting(None, optional(int_at_least(1)))
    """Rank budget of the bank's SVD compression (``None``: no budget)."""
    compression_energy: float | None = setting(0.99, optional(in_range(lambda x: 0 < x <= 1,
                                                                       "in (0, 1]")))
    """Energy threshold of the SVD compression (``None``: keep every nonzero direction)."""
    device: str = setting("cpu", STR)
    """``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when present)."""
    measure_truncation: bool = setting(True, BOOL)
    """Evaluate the compressed subspace at store time to report the truncation gap ``eps``
    (costs one evaluation per phase)."""
    distill_weight: float = setting(0.0, NON_NEGATIVE)
    """Weight of the distillation term that protects the tasks a loaded or kept subspace already
    served (see ``TorchLearner.protect``); ``0`` (the registered benchmarks') turns it off."""
    distill_temperature: float = setting(2.0, POSITIVE)
    """Softmax temperature ``T`` of the distillation term, which is scaled by ``T**2`` (Hinton et
    al.) so that its gradient does not shrink as ``T`` grows."""
    distill_anchors: int = setting(256, int_at_least(1))
    """Unlabelled inputs per protected task that the term reads: the first ``distill_anchors``
    of the task's training set, a fixed coreset (``distill_anchors * input_dim * 4`` bytes per
    task beside its bank entry; ``nsr-gym study distillation`` reports them). Fewer protect
    less: the outputs stay put on the anchors but drift elsewhere (32 anchors keep almost none
    of a Split-Digits task's test accuracy; 256 keep most)."""
    distill_max_tasks: int = setting(16, int_at_least(1))
    """Protect at most this many tasks, the most recently served: every update runs the anchors
    of all protected tasks, so a subspace kept across hundreds of tasks would otherwise cost
    hundreds of forward passes per update."""
