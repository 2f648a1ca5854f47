"""The one JSON reader: every JSON file the project reads goes through :func:`read_json`.

A JSON file from disk (a bank or DiskBank manifest, ``geometry.json``, an adapter's
``adapter_config.json``, an SB3 policy's ``config.json``, a ``.units`` log, a results manifest)
may be truncated, corrupted or malformed on purpose. :func:`read_json` checks, in this order and
before anything is parsed or allocated:

1. the path is a regular file (not a directory, FIFO or device) no larger than ``max_bytes``;
2. its bytes are UTF-8;
3. its nesting depth is at most ``max_depth`` (a linear scan, so a 5,000-deep list never reaches
   the recursive parser and never raises :class:`RecursionError`);

and while parsing:

4. every integer literal has at most ``max_int_digits`` digits and every float literal at most
   ``max_float_chars`` characters (a 5,000-digit integer is refused by name, not by Python's bare
   ``ValueError``), ``NaN``/``Infinity`` only where ``allow_nan`` is set, no duplicate keys.

Every failure raises one error type, :class:`JsonFileError` (a :class:`ValueError`), whose
message names the file, says what is wrong and what to do. :func:`parse_json` applies the same
limits to JSON text given on a command line.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_DEPTH", "DEFAULT_MAX_INT_DIGITS", "JsonFileError",
           "parse_json", "read_json"]

#: Default size cap of a JSON file (16 MiB): manifests and logs are kilobytes.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: Default cap on nesting depth ([[...]] counts 2): the project's files nest under 10 deep.
DEFAULT_MAX_DEPTH = 64
#: Default cap on digits of one integer literal (int64 has 19; sizes and seeds fit easily).
DEFAULT_MAX_INT_DIGITS = 30
#: Default cap on characters of one float literal (repr of a float64 is at most 24).
DEFAULT_MAX_FLOAT_CHARS = 64

# A string (with escapes; an unterminated one runs to the end, so the scan stays linear) or a
# bracket; anything else is skipped by finditer.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


class JsonFileError(ValueError):
    """A JSON file (or JSON text) that cannot be read safely or is malformed.

    Attributes:
        path: The file (or a label such as ``"--config"`` for text), as given.
        problem: What is wrong, in words.
    """

    def __init__(self, path: str | os.PathLike, problem: str, *, what: str = "JSON file",
                 hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        hint = hint or f"restore or regenerate the {what}, or remove it and rerun"
        super().__init__(f"{what} {self.path}: {problem}; {hint}")


def _check_depth(text: str, max_depth: int) -> int | None:
    """Return the first offset where nesting exceeds ``max_depth`` (None when it never does)."""
    depth = 0
    for m in _TOKENS.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            if depth > max_depth:
                return m.start()
        elif tok in "]}":
            depth -= 1
    return None


def _hooks(max_int_digits: int, max_float_chars: int, allow_nan: bool) -> dict[str, Any]:
    def parse_int(s: str) -> int:
        if len(s.lstrip("-")) > max_int_digits:
            raise _Refused(f"an integer literal has {len(s.lstrip('-'))} digits "
                           f"(at most {max_int_digits} allowed)")
        return int(s)

    def parse_float(s: str) -> float:
        if len(s) > max_float_chars:
            raise _Refused(f"a number literal has {len(s)} characters "
                           f"(at most {max_float_chars} allowed)")
        value = float(s)
        if not allow_nan and value in (float("inf"), float("-inf")):
            raise _Refused(f"number {s} overflows to infinity (not allowed in this file)")
        return value

    def parse_constant(s: str) -> float:
        if not allow_nan:
            raise _Refused(f"non-finite number {s} (not allowed in this file)")
        return float(s)

    return {"parse_int": parse_int, "parse_float": parse_float,
            "parse_constant": parse_constant, "object_pairs_hook": _no_duplicates}


def _no_duplicates(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice (which one would win is a guess)."""
    out: dict[str, Any] = {}
    for k, v in items:
        if k in out:
            raise _Refused(f"duplicate key {k[:60]!r}")
        out[k] = v
    return out


class _Refused(Exception):
    """Raised inside the parser hooks; turned into JsonFileError by the caller."""


def parse_json(text: str, *, source: str = "JSON text", max_depth: int = DEFAULT_MAX_DEPTH,
               max_int_digits: int = DEFAULT_MAX_INT_DIGITS,
               max_float_chars: int = DEFAULT_MAX_FLOAT_CHARS, allow_nan: bool = True,
               expect: type | tuple[type, ...] | None = None, what: str = "JSON") -> Any:
    """Parse JSON text with the limits of :func:`read_json`.

    Args:
        text: The JSON text.
        source: What to name in errors (a file path or an option such as ``"--config"``).
        max_depth: Most nested ``[``/``{`` allowed.
        max_int_digits: Most digits in one integer literal.
        max_float_chars: Most characters in one float literal.
        allow_nan: Whether ``NaN``, ``Infinity`` and ``-Infinity`` are accepted.
        expect: Required type of the top-level value (e.g. ``dict``), or None for any.
        what: What the text is, for the message (e.g. ``"bank manifest"``).

    Returns:
        The parsed value (dicts, lists, str, int, float, bool, None).

    Raises:
        JsonFileError: On any malformed or over-limit input.
    """
    where = _check_depth(text, max_depth)
    if where is not None:
        raise JsonFileError(source, f"nesting deeper than {max_depth} levels at offset {where}",
                            what=what)
    try:
        value = json.loads(text, **_hooks(max_int_digits, max_float_chars, allow_nan))
    except _Refused as exc:
        raise JsonFileError(source, str(exc), what=what) from None
    except json.JSONDecodeError as exc:
        raise JsonFileError(source, f"not valid JSON ({exc.msg} at line {exc.lineno} "
                            f"column {exc.colno})", what=what) from None
    except (RecursionError, ValueError) as exc:  # defensive: the depth scan should prevent these
        raise JsonFileError(source, f"not valid JSON ({type(exc).__name__})", what=what) from None
    if expect is not None and not isinstance(value, expect):
        kinds = {dict: "a JSON object", list: "a JSON array", str: "a string", int: "an integer",
                 float: "a number", bool: "a boolean", type(None): "null"}
        wanted = (expect,) if isinstance(expect, type) else expect
        names = " or ".join(kinds.get(t, t.__name__) for t in wanted)
        raise JsonFileError(source, f"expected {names} at the top level, got "
                            f"{kinds.get(type(value), type(value).__name__)}", what=what)
    return value


def read_json(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
              max_depth: int = DEFAULT_MAX_DEPTH, max_int_digits: int = DEFAULT_MAX_INT_DIGITS,
              max_float_chars: int = DEFAULT_MAX_FLOAT_CHARS, allow_nan: bool = True,
              expect: type | tuple[type, ...] | None = dict, what: str = "JSON file") -> Any:
    """Read and parse one JSON file, refusing anything oversized, over-deep or malformed.

    Args:
        path: The file.
        max_bytes: Largest file size accepted, in bytes (checked with ``stat`` before reading;
            at most the stated size + 1 bytes are ever read).
        max_depth: Most nested ``[``/``{`` allowed.
        max_int_digits: Most digits in one integer literal.
        max_float_chars: Most characters in one float literal.
        allow_nan: Whether ``NaN``, ``Infinity`` and ``-Infinity`` are accepted.
        expect: Required type of the top-level value (default ``dict``: a JSON object), or None.
        what: What the file is, for the message (e.g. ``"bank manifest"``).

    Returns:
        The parsed value.

    Raises:
        JsonFileError: The file is missing, not a regular file, too large, not UTF-8, too deep,
            has an over-long number, a duplicate key, or is not valid JSON.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise JsonFileError(p, "missing", what=what) from None
    except OSError as exc:
        raise JsonFileError(p, f"cannot be read ({exc.strerror or exc})", what=what) from None
    if not stat.S_ISREG(st.st_mode):
        raise JsonFileError(p, "not a regular file", what=what)
    if st.st_size > max_bytes:
        raise JsonFileError(p, f"is {st.st_size:,} bytes, over the {max_bytes:,}-byte limit",
                            what=what)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(min(st.st_size, max_bytes) + 1)  # read(n) reserves n bytes first
    except OSError as exc:
        raise JsonFileError(p, f"cannot be read ({exc.strerror or exc})", what=what) from None
    if len(raw) > st.st_size:
        raise JsonFileError(p, "grew while it was read (another process writing it?)", what=what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonFileError(p, f"not UTF-8 text (byte {exc.start})", what=what) from None
    return parse_json(text, source=str(p), max_depth=max_depth, max_int_digits=max_int_digits,
                      max_float_chars=max_float_chars, allow_nan=allow_nan, expect=expect,
                      what=what)
