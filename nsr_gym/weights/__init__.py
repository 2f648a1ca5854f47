"""Pretrained backbone weights that ship with the package, and the one place they are read.

Each network is two files in this folder: ``<name>.safetensors`` (the state dict, float32) and
``<name>.json``, its record: format version, the file's sha256 and size, the architecture, and
how it was trained (the command, seeds, data and the final held-out accuracy). ``nsr-gym
pretrain`` writes both (:mod:`nsr_gym.studies.pretrain`); the training curve and the git
revision go to ``results/pretrain/``. Nothing is unpickled, and :func:`load_verified` hashes the
bytes it parses, so a changed or truncated file is refused before it is read.

Shipped: ``mnist1d_cnn`` (a 1D CNN for MNIST-1D's 40-sample signals; see
:class:`nsr_gym.learners.backbones.CNN1D`). No network ships for the 8x8 digits: every digits
image belongs to some task of the digits benchmarks, so there is no disjoint embedded data to
pretrain one on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nsr_gym.atomic import atomic_write_bytes, atomic_write_text, sha256_bytes
from nsr_gym.jsonio import JsonFileError, read_json

__all__ = ["FORMAT_VERSION", "PRETRAINED_FOR_INPUT", "WEIGHTS_DIR", "WeightsError",
           "for_input_dim", "load_verified", "read_record", "record_path", "weights_path",
           "write_weights"]

#: Version of the record's layout.
FORMAT_VERSION = 1
#: This folder: where the shipped weights are.
WEIGHTS_DIR = Path(__file__).resolve().parent
#: Input width -> the shipped network for it.
PRETRAINED_FOR_INPUT = {40: "mnist1d_cnn"}


class WeightsError(RuntimeError):
    """A weights file is missing, differs from its record's checksum, or does not fit."""


def weights_path(name: str, directory: str | os.PathLike | None = None) -> Path:
    """``<directory>/<name>.safetensors`` (default directory: :data:`WEIGHTS_DIR`)."""
    return Path(directory or WEIGHTS_DIR) / f"{name}.safetensors"


def record_path(name: str, directory: str | os.PathLike | None = None) -> Path:
    """``<directory>/<name>.json``, the weights' record."""
    return Path(directory or WEIGHTS_DIR) / f"{name}.json"


def for_input_dim(input_dim: int) -> str:
    """The shipped network's name for ``input_dim``-wide inputs.

    Raises:
        ValueError: naming the widths that have one.
    """
    try:
        return PRETRAINED_FOR_INPUT[int(input_dim)]
    except KeyError:
        shipped = ", ".join(f"{n} ({w}-wide inputs)" for w, n in PRETRAINED_FOR_INPUT.items())
        raise ValueError(f"no pretrained backbone ships for {input_dim}-wide inputs; shipped: "
                         f"{shipped}. The 8x8 digits have none (see nsr_gym.weights).") from None


def read_record(name: str, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The JSON record of weights ``name``.

    Raises:
        WeightsError: when it is missing, unreadable, malformed or over the bounded reader's
            limits (:func:`nsr_gym.jsonio.read_json`), of another format version, or has no
            sha256 string.
    """
    path = record_path(name, directory)
    try:
        record = read_json(path, what="weights record")
    except JsonFileError as err:
        raise WeightsError(f"cannot read the weights record {path}: {err.problem}; regenerate "
                           "it with `nsr-gym pretrain`") from None
    if record.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{path} has format_version {record.get('format_version')!r}; this "
                           f"nsr-gym reads {FORMAT_VERSION}")
    if not isinstance(record.get("sha256"), str):  # load_verified compares the file against it
        raise WeightsError(f"{path} has no sha256 string; regenerate it with `nsr-gym pretrain`")
    return record


def load_verified(name: str, directory: str | os.PathLike | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(record, state dict)`` of weights ``name``, parsed only after the sha256 of the file's
    bytes equals the record's.

    Raises:
        WeightsError: naming the file when it is missing or its checksum differs.
    """
    from safetensors.torch import load

    record = read_record(name, directory)
    path = weights_path(name, directory)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise WeightsError(f"cannot read pretrained weights {path}: {err}; regenerate them "
                           "with `nsr-gym pretrain`") from None
    digest = sha256_bytes(data)
    if digest != record["sha256"]:
        raise WeightsError(f"pretrained weights {path} have sha256 {digest}, but "
                           f"{record_path(name, directory).name} records {record['sha256']}: "
                           "the file changed; refusing to load it (regenerate it with "
                           "`nsr-gym pretrain`)")
    return record, load(data)


def write_weights(name: str, tensors: dict[str, Any], record: dict[str, Any],
                  directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write ``tensors`` as ``<name>.safetensors`` and ``record`` (plus the format version, file
    name, size and sha256) as ``<name>.json``, each atomically; returns the full record.

    The bytes depend only on the tensors (no metadata, safetensors' fixed layout), and the record
    holds no time stamp, so the same training writes the same two files.
    """
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    full = {"format_version": FORMAT_VERSION, "name": name,
            "file": weights_path(name, directory).name, "sha256": sha256_bytes(data),
            "bytes": len(data), **record}
    atomic_write_bytes(weights_path(name, directory), data)
    atomic_write_text(record_path(name, directory), json.dumps(full, indent=2) + "\n")
    return full
