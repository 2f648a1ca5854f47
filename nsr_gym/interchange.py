"""Interchange with ``peft``: a torch-backend bank entry as a standard LoRA adapter directory.

:func:`export_adapter` writes one bank entry to a directory that ``peft`` loads as it is::

    path/adapter_config.json        peft's LoraConfig; per-layer ranks through rank_pattern
    path/adapter_model.safetensors  peft's key naming: base_model.model.{i}.lora_{A,B}.weight
    path/README.md                  peft's model card
    path/head.safetensors           the task head (weight, bias) and the entry's key
    path/nsr_gym.json               format version, backbone geometry, owner, tasks served, the
                                    sha256 of the three files above and of its own contents

so that, on the same frozen backbone,

    >>> model = PeftModel.from_pretrained(spec.build(), path)          # doctest: +SKIP
    >>> logits = head(model(x))                                        # doctest: +SKIP

computes what :class:`~nsr_gym.learners.torch_learner.TorchLearner` computes after loading the
entry (:func:`load_peft_model` returns both parts). Each layer is written at its compressed rank
``k`` with ``lora_alpha = k``, so peft's scaling is 1 and the stored factors (scaling folded in)
are written bit for bit. :func:`import_adapter` reads such a directory, or any peft LoRA adapter
for the same backbone, back as a :class:`~nsr_gym.bank.BankEntry`; a file that is corrupt, for
another backbone or not a plain LoRA raises :class:`~nsr_gym.bank.BankFormatError`. Nothing here
unpickles: tensors go through ``safetensors``, metadata through :func:`nsr_gym.jsonio.read_json`.
Before ``peft`` builds anything, ``adapter_config.json`` is checked: ``r``, ``lora_alpha`` and
their per-layer patterns are bounded numbers (rank at most :data:`MAX_ADAPTER_RANK`),
``target_modules`` resolves to ``Linear`` layers of the backbone that include every layer the
weights file holds factors for, each at the rank the config gives it, and the weights are float
tensors; so a config that asks for a huge rank or adapts only part of the layers is refused by
name, not after peft has allocated it or with a raw ``AttributeError``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from nsr_gym.atomic import replace_dir, sha256_file, sha256_json, temp_dir_beside
from nsr_gym.bank import BankEntry, BankFormatError, compress_lora
from nsr_gym.jsonio import JsonFileError, read_json
from nsr_gym.learners.torch_learner import TorchLearner, build_backbone

ADAPTER_FORMAT_VERSION: int = 1

_CONFIG = "adapter_config.json"
_WEIGHTS = "adapter_model.safetensors"
_HEAD = "head.safetensors"
_META = "nsr_gym.json"
_PEFT_PREFIX = "base_model.model."
_CHECKED = (_CONFIG, _WEIGHTS, _HEAD)  # files whose sha256 nsr_gym.json records
_META_SHA = "meta_sha256"
#: Largest LoRA rank an adapter config may give a layer (peft allocates it before loading).
MAX_ADAPTER_RANK = 4096
#: adapter_config.json keys that must be absent, null, false or empty in a plain LoRA.
_UNSUPPORTED = ("exclude_modules", "layers_pattern", "layers_to_transform", "layer_replication",
                "target_parameters", "trainable_token_indices", "use_qalora", "lora_bias",
                "use_bdlora", "alora_invocation_tokens", "megatron_config", "arrow_config")
_FLOAT_DTYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class BackboneSpec:
    """The frozen backbone an adapter belongs to (see ``build_backbone``).

    Attributes:
        input_dim: Input features.
        hidden: Widths of the hidden ``Linear`` layers; the last one is the feature dimension.
        backbone_seed: Seed of the frozen Gaussian weights.
    """

    input_dim: int = 64
    hidden: tuple[int, ...] = (64, 32)
    backbone_seed: int = 0

    @classmethod
    def of(cls, learner: TorchLearner) -> BackboneSpec:
        """The backbone of a torch learner (the MLP backbone; others are not supported yet)."""
        cfg = learner.config
        if getattr(cfg, "backbone", "mlp") != "mlp":
            raise ValueError(f"peft interchange supports the MLP backbone, not {cfg.backbone!r}")
        return cls(learner.tasks[0].input_dim, tuple(cfg.hidden), cfg.backbone_seed)

    def build(self) -> nn.Sequential:
        """A fresh copy of the frozen backbone (bit-identical to the learner's)."""
        return build_backbone(self.input_dim, tuple(self.hidden), self.backbone_seed)

    @property
    def targets(self) -> list[str]:
        """peft names of the adapted ``Linear`` layers, in forward order: ``"0"``, ``"2"``..."""
        return [str(2 * i) for i in range(len(self.hidden))]

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        """``(out, in)`` of each adapted layer."""
        dims = [self.input_dim, *self.hidden]
        return [(dims[i + 1], dims[i]) for i in range(len(self.hidden))]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}


# ----------------------------------------------------------------------------- export


def export_adapter(entry: BankEntry | Mapping[str, torch.Tensor], path: str | os.PathLike,
                   spec: BackboneSpec) -> Path:
    """Write a torch-backend bank entry (or its payload) as a peft adapter directory.

    The directory is written and fsynced in a temporary sibling and swapped into place
    (:func:`nsr_gym.atomic.replace_dir`), so an interrupted export leaves no half-written
    adapter. An existing adapter directory at ``path`` is replaced; any other existing file or
    non-empty directory is left alone (``FileExistsError``).

    Args:
        entry: A :class:`BankEntry` of the torch backend, or its ``tensors`` dict: ``layer{i}.B``
            ``(out_i, k_i)`` with the LoRA scaling folded in, ``layer{i}.A`` ``(k_i, in_i)``,
            ``head.weight`` ``(c, hidden[-1])``, ``head.bias`` ``(c,)``.
        path: Target directory.
        spec: The backbone the entry was trained on.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: when the payload does not fit ``spec`` or holds NaN/inf.
    """
    from peft import LoraConfig, get_peft_model

    tensors = entry.tensors if isinstance(entry, BankEntry) else dict(entry)
    factors, head = _check_payload(tensors, spec)
    ranks = {name: int(a.shape[0]) for name, (_, a) in zip(spec.targets, factors, strict=True)}
    config = LoraConfig(r=max(ranks.values()), lora_alpha=max(ranks.values()),
                        rank_pattern=ranks, alpha_pattern=dict(ranks), target_modules=spec.targets,
                        lora_dropout=0.0, bias="none")
    model = get_peft_model(spec.build(), config)
    with torch.no_grad():
        for name, (b, a) in zip(spec.targets, factors, strict=True):
            layer = model.base_model.model[int(name)]
            if float(layer.scaling["default"]) != 1.0:  # alpha = r per layer: peft adds nothing
                raise RuntimeError(f"peft gave layer {name} scaling {layer.scaling['default']}")
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)

    extra: dict[str, torch.Tensor] = {"weight": head[0], "bias": head[1]}
    meta: dict[str, Any] = {"format": "nsr_gym-peft-adapter",
                            "format_version": ADAPTER_FORMAT_VERSION, "backbone": spec.as_dict()}
    if isinstance(entry, BankEntry):
        extra["key"] = torch.from_numpy(np.asarray(entry.key, dtype=np.float32).copy())
        meta.update(owner=int(entry.owner), tasks_served=[int(i) for i in entry.tasks_served])

    root = Path(path)
    if root.exists() and not (root.is_dir() and (not any(root.iterdir())
                                                 or (root / _CONFIG).is_file())):
        raise FileExistsError(f"{root} exists and is not an adapter directory; choose another path")
    tmp = temp_dir_beside(root, "tmp")
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        save_file({n: t.contiguous().clone() for n, t in extra.items()}, str(tmp / _HEAD),
                  metadata={"format": "pt"})
        meta["sha256"] = {f: sha256_file(tmp / f) for f in _CHECKED}
        meta[_META_SHA] = sha256_json(meta, exclude=_META_SHA)
        (tmp / _META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        replace_dir(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _check_payload(tensors: Mapping[str, torch.Tensor], spec: BackboneSpec
                   ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, ...]]:
    n = len(spec.hidden)
    expected = {f"layer{i}.{p}" for i in range(n) for p in "AB"} | {"head.weight", "head.bias"}
    if set(tensors) != expected:
        raise ValueError(f"not a torch-backend payload for a {n}-layer backbone: expected tensors "
                         f"{sorted(expected)}, got {sorted(tensors)}")
    get = {k: torch.as_tensor(v).detach().cpu().to(torch.float32) for k, v in tensors.items()}
    for k, t in get.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"payload tensor {k!r} holds NaN or inf; it cannot be exported")
    factors = []
    for i, (out, inp) in enumerate(spec.layer_shapes):
        b, a = get[f"layer{i}.B"], get[f"layer{i}.A"]
        if b.ndim != 2 or a.ndim != 2 or b.shape[0] != out or a.shape[1] != inp \
                or b.shape[1] != a.shape[0] or a.shape[0] < 1:
            raise ValueError(f"layer {i} factors {tuple(b.shape)} x {tuple(a.shape)} do not fit "
                             f"the backbone's Linear({inp}, {out}) of {spec}")
        factors.append((b, a))
    w, bias = get["head.weight"], get["head.bias"]
    if w.ndim != 2 or w.shape[1] != spec.hidden[-1] or bias.shape != (w.shape[0],):
        raise ValueError(f"head {tuple(w.shape)} + {tuple(bias.shape)} does not fit features of "
                         f"width {spec.hidden[-1]}")
    return factors, (w, bias)


# ----------------------------------------------------------------------------- import


def import_adapter(path: str | os.PathLike, spec: BackboneSpec, *,
                   key: np.ndarray | None = None, owner: int | None = None,
                   head: tuple[torch.Tensor, torch.Tensor] | None = None,
                   max_rank: int | None = None) -> BankEntry:
    """Read a peft LoRA adapter directory for ``spec``'s backbone as a bank entry.

    Reads what :func:`export_adapter` writes, and any plain peft LoRA adapter (safetensors) whose
    targets are ``Linear`` layers of the backbone; untargeted layers get a zero update.

    Args:
        path: The adapter directory.
        spec: The backbone the adapter must fit.
        key: Task embedding ``(hidden[-1],)``; default: the one stored by :func:`export_adapter`.
            For another tool's adapter compute it with ``TorchLearner.embed(task_id)``.
        owner: Task id to store the entry under; default: the stored one, else ``-1`` (no task).
        head: ``(weight, bias)`` of the task head; default: ``head.safetensors``.
        max_rank: Compress layers of rank above it to it (SVD, best rank-``max_rank``
            approximation); use the learner's ``lora_rank`` for adapters trained at a higher rank.

    Returns:
        A :class:`BankEntry` with the payload of the torch backend (LoRA scaling folded into ``B``).

    Raises:
        BankFormatError: naming the file and the problem: missing or corrupt files, checksum
            mismatch, another backbone, not a plain LoRA, NaN/inf, or no key/head to be had.
    """
    root = Path(path)
    if max_rank is not None and (type(max_rank) is not int or max_rank < 1):
        raise ValueError(f"max_rank must be None or an integer >= 1 (got {max_rank!r})")
    meta, ranks = _check_files(root, spec)
    present = _check_weight_file(root / _WEIGHTS, spec, ranks)
    payload = _read_factors(root, spec, present, max_rank)
    head_tensors, key = _head_and_key(root, spec, head, key)
    payload["head.weight"], payload["head.bias"] = head_tensors
    try:
        _check_payload(payload, spec)
    except ValueError as exc:
        raise _fail(root, str(exc)) from exc
    if not np.isfinite(key).all():
        raise _fail(root, "key holds NaN or inf")
    owner = int(meta.get("owner", -1) if owner is None else owner)
    tasks = [int(t) for t in meta.get("tasks_served", [])] or ([owner] if owner >= 0 else [])
    return BankEntry(key=key, tensors=payload, owner=owner, tasks_served=tasks)


def _check_files(root: Path, spec: BackboneSpec) -> tuple[dict[str, Any], dict[str, int]]:
    """The adapter's files are there, match ``nsr_gym.json``'s sha256 and form a plain LoRA;
    returns ``nsr_gym.json`` (empty for another tool's adapter) and the rank peft would give
    each targeted layer."""
    cpath, wpath, mpath = (root / f for f in (_CONFIG, _WEIGHTS, _META))
    if not cpath.is_file():
        raise _fail(cpath, "no adapter_config.json: not a peft adapter directory. Check the path")
    if not wpath.is_file():
        bins = " (found adapter_model.bin: convert it to safetensors; pickle files are not "\
               "loaded)" if (root / "adapter_model.bin").exists() else ""
        raise _fail(wpath, "adapter weights are missing" + bins)
    meta = _read_meta(mpath, spec) if mpath.is_file() else {}
    for name, want in meta.get("sha256", {}).items():
        if not (root / name).is_file() or sha256_file(root / name) != want:
            raise _fail(root / name, "missing, or its sha256 differs from nsr_gym.json's: "
                        "truncated or modified. Export the entry again")
    return meta, _read_config(cpath, spec)


def _read_factors(root: Path, spec: BackboneSpec, present: set[str], max_rank: int | None
                  ) -> dict[str, torch.Tensor]:
    """``layer{i}.B`` ``(out_i, k_i)`` (peft's scaling folded in) and ``layer{i}.A``
    ``(k_i, in_i)`` as peft loads them; a zero rank-1 update for a layer not in ``present``."""
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(spec.build(), str(root))
    except Exception as exc:  # peft/torch raise several types for a bad config or state dict
        raise _fail(root, f"peft could not load it onto {spec} ({exc})") from exc
    payload: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i, (name, (out, inp)) in enumerate(zip(spec.targets, spec.layer_shapes,
                                                   strict=True)):
            layer = model.base_model.model[int(name)]
            if name not in present:  # not targeted, or no weights stored: no update
                b, a = torch.zeros(out, 1), torch.zeros(1, inp)
            else:
                scaling = float(layer.scaling["default"])
                b = layer.lora_B["default"].weight.detach().to(torch.float32) * scaling
                a = layer.lora_A["default"].weight.detach().to(torch.float32)
                if max_rank is not None and a.shape[0] > max_rank:
                    b, a = compress_lora(b, a, rank=max_rank)
            payload[f"layer{i}.B"] = b.contiguous().clone()
            payload[f"layer{i}.A"] = a.contiguous().clone()
    return payload


def _head_and_key(root: Path, spec: BackboneSpec, head: tuple[torch.Tensor, torch.Tensor] | None,
                  key: np.ndarray | None) -> tuple[tuple[torch.Tensor, torch.Tensor], np.ndarray]:
    """The given head and key, else those in ``head.safetensors``: the head as float32 copies,
    the key as float32 ``(hidden[-1],)``."""
    hpath = root / _HEAD
    stored = _read_head_file(hpath) if hpath.is_file() else {}
    if head is None:
        if "weight" not in stored or "bias" not in stored:
            raise _fail(hpath, "no task head: pass head=(weight, bias)")
        head = (stored["weight"], stored["bias"])
    weight, bias = (torch.as_tensor(t).detach().to(torch.float32).contiguous().clone()
                    for t in head)
    if key is None:
        if "key" not in stored:
            raise _fail(hpath, "no task embedding stored: pass key=learner.embed(task_id)")
        key = stored["key"].numpy()
    key = np.asarray(key, dtype=np.float32).copy()
    if key.shape != (spec.hidden[-1],):
        raise _fail(root, f"key has shape {key.shape}; the backbone's features are "
                    f"({spec.hidden[-1]},)")
    return (weight, bias), key


def load_peft_model(path: str | os.PathLike, spec: BackboneSpec) -> tuple[nn.Module, nn.Linear]:
    """``(PeftModel.from_pretrained(spec.build(), path), head)``: ``head(model(x))`` are the
    logits of the exported entry."""
    from peft import PeftModel

    stored = _read_head_file(Path(path) / _HEAD)
    weight, bias = stored["weight"], stored["bias"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return PeftModel.from_pretrained(spec.build(), str(path)), head


# ----------------------------------------------------------------------------- checks


def _fail(file: Path, problem: str) -> BankFormatError:
    return BankFormatError(f"{file}: {problem}")


def _read_json(p: Path) -> dict[str, Any]:
    try:
        return read_json(p, max_bytes=1 << 20, what="adapter file")
    except JsonFileError as exc:
        raise _fail(p, exc.problem) from None


def _read_meta(mpath: Path, spec: BackboneSpec) -> dict[str, Any]:
    meta = _read_json(mpath)
    version = meta.get("format_version")
    if type(version) is not int or version != ADAPTER_FORMAT_VERSION:
        raise _fail(mpath, f"unknown format_version {version!r} (this nsr_gym reads "
                    f"{ADAPTER_FORMAT_VERSION}); export the entry again with this version")
    if meta.get("backbone") != spec.as_dict():
        raise _fail(mpath, f"exported for backbone {meta.get('backbone')}, not {spec.as_dict()}; "
                    "load it with the learner settings (hidden, backbone_seed) it was trained with")
    owner, tasks, sums = meta.get("owner", -1), meta.get("tasks_served", []), meta.get("sha256")
    if type(owner) is not int or not isinstance(tasks, list) or \
            not all(type(t) is int for t in tasks) or not isinstance(sums, dict) or \
            sorted(sums) != sorted(_CHECKED) or not all(isinstance(v, str) for v in sums.values()):
        raise _fail(mpath, "owner, tasks_served or sha256 is malformed. Export the entry again")
    # Last, so the checks above name the specific problem when there is one.
    if meta.get(_META_SHA) != sha256_json(meta, exclude=_META_SHA):
        raise _fail(mpath, "its contents do not match its meta_sha256: modified or corrupted. "
                    "Export the entry again")
    return meta


def _read_config(cpath: Path, spec: BackboneSpec) -> dict[str, int]:
    """Check ``adapter_config.json`` is a plain LoRA peft can build on ``spec`` within bounds;
    returns targeted layer -> the rank peft would give it."""
    config = _read_json(cpath)
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not 'LORA'")
    for flag in ("use_dora", "fan_in_fan_out"):
        if config.get(flag):
            problems.append(f"{flag}=true is not a plain LoRA")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config.get('bias')!r} trains backbone biases (need 'none')")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save={config['modules_to_save']} replaces backbone modules")
    problems += [f"{k}={str(config[k])[:60]} is not supported" for k in _UNSUPPORTED
                 if config.get(k) not in (None, False, [], {}, "")]
    if config.get("init_lora_weights", True) not in (True, False, "gaussian"):
        problems.append(f"init_lora_weights={str(config['init_lora_weights'])[:40]!r} runs a "
                        "decomposition or needs data on load (need true, false or 'gaussian')")
    if problems:
        raise _fail(cpath, "; ".join(problems) + ". Only plain LoRA adapters on the backbone's "
                    "Linear layers can become bank entries")
    return _config_ranks(cpath, config, spec)


def _is_rank(v: Any) -> bool:
    return type(v) is int and 1 <= v <= MAX_ADAPTER_RANK


def _is_alpha(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and 0 < abs(v) <= 1e6


def _config_ranks(cpath: Path, config: dict[str, Any], spec: BackboneSpec) -> dict[str, int]:
    """Targeted layer -> rank, from ``r``, ``rank_pattern`` and ``target_modules`` as peft
    reads them, each value checked before peft allocates anything."""
    from peft.utils.other import get_pattern_key

    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    if not _is_rank(r) or not isinstance(ranks, dict) or not all(map(_is_rank, ranks.values())):
        raise _fail(cpath, f"r and rank_pattern values must be integers in 1..{MAX_ADAPTER_RANK} "
                    f"(got r={str(r)[:40]}, rank_pattern={str(ranks)[:80]}): peft would "
                    "allocate rank x (in + out) floats per layer before loading the weights")
    if not _is_alpha(alpha) or not isinstance(alphas, dict) or \
            not all(map(_is_alpha, alphas.values())):
        raise _fail(cpath, "lora_alpha and alpha_pattern values must be finite nonzero numbers "
                    "of magnitude at most 1e6")
    modules = dict(spec.build().named_modules())
    try:
        targeted = [name for name in modules if name and _targets(config["target_modules"], name)]
        layer_ranks = {name: ranks.get(get_pattern_key(list(ranks), name), r)
                       for name in targeted}
    except (KeyError, TypeError, re.error) as exc:
        raise _fail(cpath, f"target_modules / rank_pattern cannot be read ({type(exc).__name__}: "
                    f"{str(exc)[:80]}): need a list of layer names or a regular expression"
                    ) from None
    others = [n for n in targeted if n not in spec.targets]
    if others or not targeted:
        raise _fail(cpath, f"target_modules {str(config.get('target_modules'))[:80]} adapts "
                    f"{others or 'no layer'}; an adapter for this backbone adapts its Linear "
                    f"layers {spec.targets}")
    return layer_ranks


def _targets(target_modules: Any, name: str) -> bool:
    """Whether peft's ``target_modules`` (a list of names or suffixes, or a regex) takes
    ``name``."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    if not isinstance(target_modules, list) or \
            not all(isinstance(t, str) for t in target_modules):
        raise TypeError("target_modules is neither a list of names nor a string")
    return name in target_modules or any(name.endswith(f".{t}") for t in target_modules)


def _check_weight_file(wpath: Path, spec: BackboneSpec, config_ranks: dict[str, int]
                       ) -> set[str]:
    """Every tensor must be a float lora_A/lora_B of a layer the config targets, with the
    backbone's shapes and the config's rank; returns the names of the layers that have both."""
    try:
        with safe_open(str(wpath), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {k: f.get_slice(k).get_dtype() for k in shapes}
    except Exception as exc:  # safetensors raises its own types for malformed files
        raise _fail(wpath, f"could not be parsed ({exc})") from exc
    bad = {k: d for k, d in dtypes.items() if d not in _FLOAT_DTYPES}
    if bad:
        name, dtype = next(iter(bad.items()))
        raise _fail(wpath, f"tensor {name!r} has dtype {dtype}; LoRA factors are float "
                    f"({'/'.join(_FLOAT_DTYPES)})")
    layers = dict(zip(spec.targets, spec.layer_shapes, strict=True))
    ranks: dict[str, dict[str, int]] = {}
    for k, shape in shapes.items():
        parts = k.removeprefix(_PEFT_PREFIX).split(".")
        if not k.startswith(_PEFT_PREFIX) or len(parts) != 3 or parts[0] not in layers \
                or parts[1] not in ("lora_A", "lora_B") or parts[2] != "weight" or len(shape) != 2:
            raise _fail(wpath, f"tensor {k!r} {shape} is not a LoRA factor of this backbone's "
                        f"Linear layers {spec.targets}")
        out, inp = layers[parts[0]]
        rank, fixed, want = (shape[0], shape[1], inp) if parts[1] == "lora_A" else \
            (shape[1], shape[0], out)
        if fixed != want or rank < 1:
            raise _fail(wpath, f"{k!r} has shape {shape}, which does not fit the backbone's "
                        f"Linear({inp}, {out}) of {spec}")
        ranks.setdefault(parts[0], {})[parts[1]] = rank
    for name, r in ranks.items():
        if len(r) != 2 or r["lora_A"] != r["lora_B"]:
            raise _fail(wpath, f"layer {name} needs lora_A and lora_B of one rank, got {r}")
        if name not in config_ranks:
            raise _fail(wpath, f"holds factors for layer {name}, which adapter_config.json's "
                        f"target_modules does not adapt (it adapts {sorted(config_ranks)})")
        if config_ranks[name] != r["lora_A"]:
            raise _fail(wpath, f"layer {name} has rank {r['lora_A']}, adapter_config.json gives "
                        f"it rank {config_ranks[name]}")
    return set(ranks)


def _read_head_file(hpath: Path) -> dict[str, torch.Tensor]:
    try:
        stored = load_file(str(hpath))
    except Exception as exc:  # safetensors raises its own types for malformed files
        raise _fail(hpath, f"could not be parsed ({exc})") from exc
    for name, t in stored.items():
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise _fail(hpath, f"tensor {name!r} is not a finite float tensor")
    return stored
