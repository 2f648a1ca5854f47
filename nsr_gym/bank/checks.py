"""What a bank file may declare: the error type, the limits, the payload dtypes, typed fields.

Both bank formats (:mod:`nsr_gym.bank.files`' ``manifest.json`` + ``bank.safetensors``, and
:mod:`nsr_gym.bank.disk`'s shards) are read in the same order: the JSON goes through the one
bounded reader (:func:`read_json`, over :func:`nsr_gym.jsonio.read_json`), every declared size,
count, shape and dtype is checked here against the limits below and against the other fields,
and only then is anything allocated or a tensor file parsed. A value over a limit is a
:class:`BankFormatError` that names the file, the field, the value and the limit.

Limits (a bank that needs more is not one this version builds):

- :data:`MAX_CAPACITY` slots, :data:`MAX_KEY_DIM` key dims, and :data:`MAX_KEY_BYTES` for the
  ``(K, d)`` float32 key matrix a bank of ``K`` slots allocates;
- :data:`MAX_TENSOR_DIMS` dims per tensor and :data:`MAX_TENSOR_BYTES` per declared tensor;
- integers within :data:`MAX_INT` in magnitude (steps, counters);
- manifests of at most :data:`MAX_MANIFEST_BYTES`.

Payload dtypes: :data:`PAYLOAD_DTYPES` (``float16``, ``float32``, and ``float64`` for the
analytic learner's experience vector); integer and bool payloads are refused. Keys are float32.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nsr_gym import jsonio

__all__ = ["MAX_CAPACITY", "MAX_INT", "MAX_KEY_BYTES", "MAX_KEY_DIM", "MAX_MANIFEST_BYTES",
           "MAX_TENSOR_BYTES", "MAX_TENSOR_DIMS", "PAYLOAD_DTYPES", "BankFormatError", "Fields",
           "check_key_matrix", "read_json", "spec_nbytes"]

#: Most slots a bank file may declare (a bank keeps a ``(K, d)`` key matrix and ``K`` slots).
MAX_CAPACITY: int = 10**7
#: Most key dimensions a bank file may declare.
MAX_KEY_DIM: int = 1 << 16
#: Most bytes of the float32 key matrix a bank file may make the loader allocate (2 GiB).
MAX_KEY_BYTES: int = 1 << 31
#: Most dimensions of one tensor.
MAX_TENSOR_DIMS: int = 8
#: Most bytes one declared tensor may have (4 GiB).
MAX_TENSOR_BYTES: int = 1 << 32
#: Largest magnitude of an integer field (steps, counters, ids).
MAX_INT: int = 1 << 62
#: Largest manifest file read (256 MiB: about 400,000 entries of a bank saved in memory; a
#: larger archive is a DiskBank, whose manifest does not grow with its entries).
MAX_MANIFEST_BYTES: int = 1 << 28
#: dtype name -> bytes per element, for the payload dtypes a bank stores.
PAYLOAD_DTYPES: dict[str, int] = {"float16": 2, "float32": 4, "float64": 8}


class BankFormatError(ValueError):
    """A bank file is corrupt, truncated, of an unknown version, or does not match; the message
    names the file, what is wrong, and what to do."""


def read_json(path: Path, fail: Any, missing: str = "manifest file is missing",
              what: str = "bank manifest") -> Any:
    """The JSON document at ``path`` through the bounded reader (size, depth and number limits,
    no NaN); a missing or malformed file is ``fail(path, problem)``."""
    if not path.is_file():
        raise fail(path, missing)
    try:
        return jsonio.read_json(path, expect=None, allow_nan=False, what=what,
                                max_bytes=MAX_MANIFEST_BYTES)
    except jsonio.JsonFileError as exc:
        problem = exc.problem  # what is wrong with the content reads "not valid JSON (...)"
        if not problem.startswith(("not valid JSON", "missing", "not a regular", "cannot be",
                                   "is ", "grew")):
            problem = f"not valid JSON ({problem})"
        raise fail(path, problem) from None


def check_key_matrix(rows: int, key_dim: int, file: Path, fail: Any) -> None:
    """Refuse a ``(rows, key_dim)`` float32 key matrix over :data:`MAX_KEY_BYTES`."""
    if rows * key_dim * 4 > MAX_KEY_BYTES:
        raise fail(file, f"{rows} x {key_dim} keys would need {rows * key_dim * 4:,} bytes, "
                   f"over the limit of {MAX_KEY_BYTES:,} bytes this version allocates for keys")


def spec_nbytes(spec: Any, name: str, file: Path, fail: Any,
                dtypes: dict[str, int] = PAYLOAD_DTYPES) -> int:
    """Bytes of a declared tensor ``{"shape": [...], "dtype": "..."}`` after checking it: a list
    of at most :data:`MAX_TENSOR_DIMS` non-negative ints, a dtype of ``dtypes``, and at most
    :data:`MAX_TENSOR_BYTES` bytes."""
    if not isinstance(spec, dict) or set(spec) != {"shape", "dtype"}:
        raise fail(file, f"tensor {name!r} must be declared as {{'shape': [...], 'dtype': ...}}, "
                   f"got {_short(spec)}")
    shape, dtype = spec["shape"], spec["dtype"]
    if not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS or \
            not all(type(n) is int and n >= 0 for n in shape):
        raise fail(file, f"tensor {name!r} has shape {_short(shape)}: a list of at most "
                   f"{MAX_TENSOR_DIMS} non-negative ints is needed")
    # isinstance first: a list or object dtype is unhashable and would raise inside ``in``.
    if not isinstance(dtype, str) or dtype not in dtypes:
        raise fail(file, f"tensor {name!r} has dtype {_short(dtype)}; a dtype is one of the "
                   f"names {', '.join(map(repr, dtypes))} (integer and bool payloads are "
                   "refused)")
    nbytes = math.prod(shape) * dtypes[dtype]
    if nbytes > MAX_TENSOR_BYTES:
        raise fail(file, f"tensor {name!r} declares {nbytes:,} bytes, over the limit of "
                   f"{MAX_TENSOR_BYTES:,}")
    return nbytes


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


class Fields:
    """Typed access to a manifest object; a missing, mistyped or out-of-range field is
    ``fail(file, problem)`` naming the field, its value and the range."""

    def __init__(self, d: Any, file: Path, fail: Any) -> None:
        if not isinstance(d, dict):
            raise fail(file, f"expected a JSON object, got {type(d).__name__}")
        self.d, self.file, self.fail = d, file, fail

    def get(self, name: str, typ: type) -> Any:
        """Field ``name`` of type ``typ`` (bool is never an int here)."""
        v = self.d.get(name)
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise self.fail(self.file, f"field {name!r} is missing or not {typ.__name__} "
                            f"(got {_short(v)})")
        return v

    def integer(self, name: str, lo: int = -MAX_INT, hi: int = MAX_INT) -> int:
        """Integer field ``name`` in ``[lo, hi]``."""
        v = self.get(name, int)
        if not lo <= v <= hi:
            raise self.fail(self.file, f"field {name!r} is {_short(v)}, outside [{lo}, {hi}]"
                            + (" (the limit of this version)" if hi < MAX_INT else ""))
        return v

    def optional_integer(self, name: str, lo: int, hi: int = MAX_INT) -> int | None:
        """Integer field ``name`` in ``[lo, hi]``, or None where it is absent or null."""
        return None if self.d.get(name) is None else self.integer(name, lo, hi)

    def int_list(self, name: str, lo: int, hi: int = MAX_INT) -> list[int]:
        """A list of ints in ``[lo, hi]``."""
        v = self.get(name, list)
        if not all(type(i) is int and lo <= i <= hi for i in v):
            raise self.fail(self.file, f"field {name!r} must be a list of ints in [{lo}, {hi}] "
                            f"(got {_short(v)})")
        return v
