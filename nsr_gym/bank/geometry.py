"""Whether a saved bank can serve an env: its geometry, and the check made before loading it.

A bank saved by an env carries a ``geometry.json`` (:func:`write_geometry`) naming the backend,
capacity and the learner settings that decide its keys and tensor shapes (:func:`env_geometry`);
the bank's manifest covers it with a sha256, so a deleted or replaced one is a
:class:`BankFormatError` when the bank loads (:mod:`nsr_gym.bank.files`).
:func:`check_bank_fits` compares a loaded bank with the env that wants it, from that file where
there is one (which also catches a backbone of the same shapes but other weights, e.g. another
``backbone_seed``) and from its tensors: the shapes the learner names
(``Learner.payload_shapes``), the agreement of each LoRA pair's ranks, the dtypes its backend
loads (:data:`BACKEND_DTYPES`), and task ids in range. The learner is read through its public
attributes only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nsr_gym.bank.checks import read_json
from nsr_gym.bank.core import TaskKnowledgeBank
from nsr_gym.bank.entry import BankEntry
from nsr_gym.bank.files import GEOMETRY_FILE, BankFormatError, attach_geometry

__all__ = ["BACKEND_DTYPES", "GEOMETRY_FILE", "check_bank_fits", "env_geometry", "read_geometry",
           "write_geometry"]

#: Payload dtypes each backend's learner loads: the torch learner float32 or float16 factors
#: and heads, the analytic learner its float64 (or float32) experience vector.
BACKEND_DTYPES: dict[str, tuple[str, ...]] = {"torch": ("float32", "float16"),
                                              "analytic": ("float64", "float32")}

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
    """Write ``geometry.json`` into a saved bank directory, covered by its manifest, atomically
    (:func:`nsr_gym.bank.files.attach_geometry`)."""
    attach_geometry(root, geometry)


def _geometry_fail(p: Path, problem: str) -> BankFormatError:
    return BankFormatError(f"{p}: {problem}. Save the bank again with the env that made it")


def read_geometry(root: str | os.PathLike) -> dict[str, Any] | None:
    """The ``geometry.json`` of a bank directory (through the bounded JSON reader), or ``None``
    where it has none.

    Raises:
        BankFormatError: when the file is not a JSON object.
    """
    p = Path(root) / GEOMETRY_FILE
    if not p.is_file():
        return None
    geo = read_json(p, _geometry_fail, what="bank geometry")
    if not isinstance(geo, dict):
        raise _geometry_fail(p, "expected a JSON object")
    return geo


def check_bank_fits(bank: TaskKnowledgeBank, path: str | os.PathLike, backend: str, learner: Any,
                    capacity: int, n_tasks: int) -> None:
    """Raise :class:`BankFormatError` listing every way the bank loaded from ``path`` cannot
    serve an env with this learner, capacity and task count; return quietly when it can."""
    root = Path(path)
    here = env_geometry(backend, learner, capacity, n_tasks)
    problems: list[str] = []
    saved = read_geometry(root)
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
    expected = learner.payload_shapes()
    rank = getattr(learner.config, "lora_rank", None)
    for slot, entry in enumerate(bank.slots):
        if entry is not None:
            problems += _entry_problems(slot, entry, expected, backend, rank, n_tasks)
    if problems:
        raise BankFormatError(
            f"{root}: this bank does not fit the env: " + "; ".join(problems) + ". Make the env "
            "with the settings the bank was saved with (see its geometry.json), or start from an "
            "empty bank")


def _entry_problems(slot: int, entry: BankEntry, expected: Mapping[str, tuple[int | None, ...]],
                    backend: str, rank: int | None, n_tasks: int) -> list[str]:
    """Why the entry in ``slot`` cannot serve a learner whose payloads are ``expected``."""
    if set(entry.tensors) != set(expected):
        return [f"slot {slot} holds {sorted(entry.tensors)}, a {backend} entry holds "
                f"{sorted(expected)}"]
    problems, ks = _dtype_problems(slot, entry, backend), set()
    for name, want in expected.items():
        got = tuple(entry.tensors[name].shape)
        fits = len(got) == len(want) and all(w is None or g == w
                                             for g, w in zip(got, want, strict=True))
        if not fits:
            shown = tuple("k" if w is None else w for w in want)
            problems.append(f"slot {slot} {name} is {got}, this backbone needs {shown}")
        ks.update(g for g, w in zip(got, want, strict=False) if w is None)
    if rank is not None and any(not 1 <= k <= rank for k in ks):
        problems.append(f"slot {slot} has LoRA ranks {sorted(ks)}, this learner's lora_rank "
                        f"is {rank}")
    problems += _rank_pair_problems(slot, entry)
    if not all(-1 <= t < n_tasks for t in [entry.owner, *entry.tasks_served]):
        problems.append(f"slot {slot} serves tasks {entry.tasks_served} (owner "
                        f"{entry.owner}), this env has tasks 0..{n_tasks - 1}")
    return problems


def _dtype_problems(slot: int, entry: BankEntry, backend: str) -> list[str]:
    """Payload tensors of a dtype ``backend``'s learner does not load."""
    allowed = BACKEND_DTYPES.get(backend, BACKEND_DTYPES["torch"])
    bad = sorted(f"{n} ({str(t.dtype).removeprefix('torch.')})" for n, t in entry.tensors.items()
                 if str(t.dtype).removeprefix("torch.") not in allowed)
    return [f"slot {slot} holds {', '.join(bad)}; a {backend} entry is "
            f"{' or '.join(allowed)}"] if bad else []


def _rank_pair_problems(slot: int, entry: BankEntry) -> list[str]:
    """LoRA pairs ``<layer>.B`` ``(out, k)`` and ``<layer>.A`` ``(k, in)`` whose ranks differ."""
    problems = []
    for name, b in entry.tensors.items():
        if not name.endswith(".B") or (a := entry.tensors.get(name[:-1] + "A")) is None:
            continue
        if b.ndim != 2 or a.ndim != 2 or b.shape[1] != a.shape[0]:
            problems.append(f"slot {slot} {name[:-2]} has B {tuple(b.shape)} and A "
                            f"{tuple(a.shape)}: their ranks must agree")
    return problems
