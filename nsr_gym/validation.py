"""Checks that reject wrong input before any work starts, with a message that says what to do.

* :func:`learner_option_problems`: values of the ``learner={...}`` overrides of either backend
  (the dataclass configs themselves accept anything; a zero batch or a negative learning rate
  would otherwise fail steps later, or silently).
* :func:`env_geometry` and :func:`check_bank_fits`: whether a saved bank can serve an env, from
  the shapes of its tensors and, where the env wrote one, the ``geometry.json`` beside it (which
  also catches a backbone of the same shapes but other weights, e.g. another ``backbone_seed``).
* :func:`payload_is_finite`: the guard that keeps NaN/inf out of the bank.

Everything raises or returns plain messages; nothing here trains, loads a model or touches data.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsr_gym.bank import BankFormatError, TaskKnowledgeBank

GEOMETRY_FILE = "geometry.json"

# ----------------------------------------------------------------------------- learner options


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(float(v))


def _int_at_least(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= lo), f"an integer >= {lo}"


def _optional(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v is None or rule[0](v)), f"None or {rule[1]}"


def _per_task(ok: Callable[[float], bool], what: str) -> tuple[Callable[[Any], bool], str]:
    def check(v: Any) -> bool:
        values = v if isinstance(v, (list, tuple, np.ndarray)) else [v]
        return len(values) > 0 and all(_is_num(x) and ok(float(x)) for x in values)
    return check, f"a finite number {what} (or one per task)"


_BOOL = ((lambda v: isinstance(v, (bool, np.bool_))), "True or False")
_STR = ((lambda v: isinstance(v, str) and v != ""), "a non-empty string")
_POSITIVE = ((lambda v: _is_num(v) and v > 0), "a finite number > 0")

#: backend -> option -> (test, what it must be). Options without a rule are left to the learner.
LEARNER_RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "torch": {
        "hidden": ((lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                    and all(_is_int(w) and w >= 1 for w in v)),
                   "a non-empty list of layer widths >= 1, e.g. [64, 32]"),
        "lora_rank": _int_at_least(1),
        "lora_alpha": _POSITIVE,
        "lr": _POSITIVE,
        "batch_size": _int_at_least(1),
        "probe_size": _int_at_least(1),
        "compression_rank": _optional(_int_at_least(1)),
        "compression_energy": ((lambda v: v is None or (_is_num(v) and 0 < v <= 1)),
                               "None or a number in (0, 1]"),
        "backbone_seed": _int_at_least(0),
        "device": _STR,
        "backbone": _STR,
        "measure_truncation": _BOOL,
        "train_adapters": _BOOL,
        "fast": _BOOL,
        "distill_weight": ((lambda v: _is_num(v) and v >= 0), "a finite number >= 0"),
        "distill_temperature": _POSITIVE,
        "distill_anchors": _int_at_least(1),
        "distill_max_tasks": _int_at_least(1),
        **{k: _int_at_least(1) for k in ("vit_patch", "vit_dim", "vit_depth", "vit_heads",
                                         "lora_blocks")},
    },
    "analytic": {
        "a_star": _per_task(lambda x: 0 <= x <= 1, "in [0, 1]"),
        "D": _per_task(lambda x: x >= 0, ">= 0"),
        "tau": _per_task(lambda x: x > 0, "> 0"),
        "gamma": ((lambda v: _is_num(v) and 0 <= v <= 1), "a number in [0, 1]"),
        "kappa": ((lambda v: _is_num(v) and 0 < v <= 1), "a number in (0, 1]"),
        "transfer": ((lambda v: _is_num(v) and v >= 0), "a finite number >= 0"),
        "eval_samples": _int_at_least(0),
        "key_dim": _int_at_least(1),
        "task_similarity": ((lambda v: _is_num(v) and 0 <= v < 1), "a number in [0, 1)"),
        "probe_noise": ((lambda v: _is_num(v) and v >= 0), "a finite number >= 0"),
        "embedding_seed": _int_at_least(0),
        "extra": ((lambda v: isinstance(v, dict)), "a dict"),
    },
}


def learner_option_problems(backend: str, options: Mapping[str, Any]) -> list[str]:
    """One message per bad value in ``options`` (names are checked by the env); [] when fine."""
    rules = LEARNER_RULES.get(backend, {})
    problems = []
    for name, value in options.items():
        rule = rules.get(name)
        if rule is not None and not rule[0](value):
            problems.append(f"learner option {name} must be {rule[1]} (got {value!r})")
    return problems


# ----------------------------------------------------------------------------- bank geometry

#: Config fields that decide the torch backbone's function or the shape of its LoRA factors,
#: per backbone kind (configs without a ``backbone`` field are MLPs).
_TORCH_GEOMETRY = {"mlp": ("backbone", "hidden", "backbone_seed", "lora_rank"),
                   "vit": ("backbone", "vit_patch", "vit_dim", "vit_depth", "vit_heads",
                           "lora_blocks", "backbone_seed", "lora_rank")}
#: Config fields that decide the analytic learner's task embeddings.
_ANALYTIC_GEOMETRY = ("key_dim", "embedding_seed", "task_similarity")


def env_geometry(backend: str, learner: Any, capacity: int, n_tasks: int) -> dict[str, Any]:
    """What a bank must agree with to serve an env: JSON-able, compared field by field."""
    geo: dict[str, Any] = {"backend": backend, "capacity": int(capacity),
                           "key_dim": int(learner.key_dim)}
    cfg = learner.config
    if backend == "torch":  # task ids only index owners, checked per entry
        geo["input_dim"] = int(learner.tasks[0].input_dim)
        geo["n_classes"] = int(learner.n_classes)
        kind = getattr(cfg, "backbone", "mlp")
        fields = _TORCH_GEOMETRY.get(kind, _TORCH_GEOMETRY["vit"] + _TORCH_GEOMETRY["mlp"])
    else:  # the experience vector has one entry per task
        geo["n_tasks"] = int(n_tasks)
        fields = _ANALYTIC_GEOMETRY
    for name in fields:
        if hasattr(cfg, name):
            value = getattr(cfg, name)
            geo[name] = list(value) if isinstance(value, tuple) else value
    return geo


def write_geometry(root: str | os.PathLike, geometry: Mapping[str, Any]) -> None:
    """Write ``geometry.json`` into a saved bank directory, atomically."""
    from nsr_gym.results import atomic_write_text

    atomic_write_text(Path(root) / GEOMETRY_FILE, json.dumps(dict(geometry), indent=1) + "\n")


def _expected_shapes(backend: str, learner: Any) -> dict[str, tuple[int | None, ...]]:
    """Payload name -> shape, ``None`` where the stored rank ``k`` goes (``1 <= k <= r``)."""
    if backend != "torch":
        return {"h": (learner.n_tasks,)}
    shapes: dict[str, tuple[int | None, ...]] = {}
    for i, (a, b, _) in enumerate(learner._lora):  # (A (r, in), B (out, r), scaling) per layer
        shapes[f"layer{i}.B"] = (int(b.shape[0]), None)
        shapes[f"layer{i}.A"] = (None, int(a.shape[1]))
    shapes["head.weight"] = tuple(learner.head.weight.shape)
    shapes["head.bias"] = tuple(learner.head.bias.shape)
    return shapes


def check_bank_fits(bank: TaskKnowledgeBank, path: str | os.PathLike, backend: str, learner: Any,
                    capacity: int, n_tasks: int) -> None:
    """Raise :class:`BankFormatError` listing every way the bank loaded from ``path`` cannot
    serve an env with this learner, capacity and task count; return quietly when it can."""
    root = Path(path)
    here = env_geometry(backend, learner, capacity, n_tasks)
    problems: list[str] = []
    saved = _read_geometry(root)
    if saved is not None:
        for name in sorted(set(saved) | set(here)):
            if saved.get(name) != here.get(name):
                problems.append(f"{name} is {saved.get(name)!r} in the bank, "
                                f"{here.get(name)!r} here")
    if bank.capacity != capacity:
        problems.append(f"the bank has {bank.capacity} slots, this env capacity={capacity}")
    if bank.key_dim != learner.key_dim:
        problems.append(f"the bank's keys have {bank.key_dim} dims, this learner's "
                        f"{learner.key_dim}")
    expected = _expected_shapes(backend, learner)
    rank = getattr(learner.config, "lora_rank", None)
    for slot, entry in enumerate(bank.slots):
        if entry is None:
            continue
        if set(entry.tensors) != set(expected):
            problems.append(f"slot {slot} holds {sorted(entry.tensors)}, a {backend} entry holds "
                            f"{sorted(expected)}")
            continue
        ks = set()
        for name, want in expected.items():
            got = tuple(entry.tensors[name].shape)
            fits = len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want))
            if not fits:
                shown = tuple("k" if w is None else w for w in want)
                problems.append(f"slot {slot} {name} is {got}, this backbone needs {shown}")
            ks.update(g for g, w in zip(got, want) if w is None)
        if rank is not None and any(not 1 <= k <= rank for k in ks):
            problems.append(f"slot {slot} has LoRA ranks {sorted(ks)}, this learner's lora_rank "
                            f"is {rank}")
        if not all(-1 <= t < n_tasks for t in [entry.owner, *entry.tasks_served]):
            problems.append(f"slot {slot} serves tasks {entry.tasks_served} (owner "
                            f"{entry.owner}), this env has tasks 0..{n_tasks - 1}")
    if problems:
        raise BankFormatError(
            f"{root}: this bank does not fit the env: " + "; ".join(problems) + ". Make the env "
            "with the settings the bank was saved with (see its geometry.json), or start from an "
            "empty bank")


def _read_geometry(root: Path) -> dict[str, Any] | None:
    p = root / GEOMETRY_FILE
    if not p.is_file():
        return None
    try:
        geo = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BankFormatError(f"{p}: not valid JSON ({exc}). Delete it to load the bank on its "
                              "tensor shapes alone, or save the bank again") from exc
    if not isinstance(geo, dict):
        raise BankFormatError(f"{p}: expected a JSON object. Delete it or save the bank again")
    return geo


# ----------------------------------------------------------------------------- finiteness


def payload_is_finite(payload: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> bool:
    """Whether every floating-point tensor of a payload is free of NaN and inf."""
    tensors = payload.values() if isinstance(payload, Mapping) else payload
    return all(not t.is_floating_point() or bool(torch.isfinite(t).all()) for t in tensors)
