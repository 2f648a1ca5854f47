"""``nsr-gym fuzz``: malformed files and values against every loader, counted per family.

Each *family* builds one valid input (a JSON file, tiny data files in the official formats, a
unit log, an SB3 policy folder, a peft adapter, env and CLI arguments) and yields *cases*: the
input damaged by hand (the issue's examples, one by one) or at random (truncations, byte flips,
JSON values replaced by lies, with any checksum recomputed so that the structural checks are
reached). Every case ends in exactly one outcome:

* ``refused``: one of the family's error types, whose message names the file (or the argument);
* ``loaded``: a result that passes the family's check of what must hold (shapes, ranges,
  counts, ``observation_space``, a payload that fits the backbone; for unit logs the original
  result itself: a tampered unit is recomputed, never read back);
* ``FAIL``: anything else: a raw exception, an error that does not name the file, a result
  that breaks the check, or a peak allocation above the cap.

The cap, enforced for every case: the tracemalloc peak (Python and numpy allocations; torch's
own allocator is not traced) stays below ``CAP_BASE + CAP_FACTOR x`` the bytes of the case's
input files (the CLI family runs ``nsr-gym`` in a child process, as a user does, and measures
the peak there, after the heavy imports, against ``CAP_BASE``). :func:`run_fuzz` writes
``summary.csv`` (counts per family), ``failures.csv``, ``fuzz.md`` and ``manifest.json`` to
``results/fuzz/``; ``tests/test_fuzz.py`` runs the same families with a few random cases each.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Allocation cap per case: CAP_BASE + CAP_FACTOR x the case's input bytes (tracemalloc peak).
CAP_BASE, CAP_FACTOR = 64 * 2**20, 8


@dataclass
class Case:
    """One damaged input and how to judge what the code under test does with it.

    Attributes:
        name: What was done to the input.
        run: Calls the code under test; returns what it loaded.
        names: Strings one of which a clear error message must contain (the file, the option).
        errors: The exception types that count as a clear refusal.
        check: ``check(result)`` -> ``None`` when a loaded result is acceptable, else why not.
        input_bytes: Bytes of the input files (scales the allocation cap).
    """

    name: str
    run: Callable[[], Any]
    names: tuple[str, ...]
    errors: tuple[type[BaseException], ...]
    check: Callable[[Any], str | None] = lambda _: None
    input_bytes: int = 0


@dataclass
class Outcome:
    """What one case gave: ``kind`` is ``refused``, ``loaded`` or ``FAIL``."""

    family: str
    case: str
    kind: str
    detail: str = ""
    peak_bytes: int = 0
    seconds: float = 0.0


def judge(family: str, case: Case) -> Outcome:
    """Run ``case`` under tracemalloc and classify its outcome (see the module docstring)."""
    cap = CAP_BASE + CAP_FACTOR * case.input_bytes
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with redirect_stderr(io.StringIO()), redirect_stdout(io.StringIO()):
            result = case.run()
    except case.errors as exc:
        kind, msg = "refused", str(exc)
        detail = "" if any(n in msg for n in case.names) else \
            f"{type(exc).__name__} does not name {case.names[0]}: {msg[:200]}"
    except BaseException as exc:  # noqa: BLE001 - every other outcome is the finding
        if isinstance(exc, KeyboardInterrupt):
            raise
        kind, detail = "FAIL", f"raw {type(exc).__name__}: {str(exc)[:200]}"
    else:
        kind = "loaded"
        try:
            with redirect_stderr(io.StringIO()):
                detail = case.check(result) or ""
        except Exception as exc:  # what was loaded breaks when used: the finding
            detail = f"loaded, then raw {type(exc).__name__} in use: {str(exc)[:200]}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if detail:
        kind = "FAIL"
    if peak > cap:
        kind, detail = "FAIL", f"peak allocation {peak:,} B above the cap {cap:,} B; {detail}"
    return Outcome(family, case.name, kind, detail, peak, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- mutations


def truncations(data: bytes, rng: np.random.Generator, n: int) -> Iterator[tuple[str, bytes]]:
    """``n`` copies of ``data`` cut at random lengths (always shorter)."""
    for cut in rng.integers(0, max(len(data), 1), n):
        yield f"truncated to {int(cut)} B", data[: int(cut)]


def flips(data: bytes, rng: np.random.Generator, n: int) -> Iterator[tuple[str, bytes]]:
    """``n`` copies of ``data`` with 1..8 random bytes replaced."""
    for _ in range(n):
        b = bytearray(data)
        where = rng.integers(0, len(b), int(rng.integers(1, 9)))
        for i in where:
            b[int(i)] = int(rng.integers(0, 256))
        yield f"bytes {sorted(int(i) for i in where)[:4]} replaced", bytes(b)


#: JSON values that lie, as ``(label, JSON text)``: huge, deep, of the wrong kind.
JSON_LIES: tuple[tuple[str, str], ...] = (
    ("10**12", "1000000000000"), ("-1000", "-1000"), ("a 5,000-digit int", "9" * 5000),
    ("true", "true"), ("null", "null"), ('"x"', '"x"'), ("[]", "[]"), ("{}", "{}"),
    ("1e308", "1e308"), ("1e999 (inf)", "1e999"), ("0.5", "0.5"), ("-1", "-1"),
    ("2**63", str(2**63)), ("NaN", "NaN"), ("[[[[[0]]]]]", "[[[[[0]]]]]"),
    ("a 5,000-deep list", "[" * 5000 + "]" * 5000))


def json_lie_text(obj: Any, rng: np.random.Generator) -> tuple[str, str]:
    """``obj`` (a JSON object) with one value, at any depth, replaced by a lie of
    :data:`JSON_LIES`; returns ``(description, JSON text)``."""
    paths = list(_json_paths(obj))
    path = paths[int(rng.integers(len(paths)))]
    label, lie = JSON_LIES[int(rng.integers(len(JSON_LIES)))]
    marker = "__NSR_FUZZ__"
    target = json.loads(json.dumps(obj))
    _set(target, path, marker)
    text = json.dumps(target).replace(f'"{marker}"', lie)
    return f"{'/'.join(map(str, path)) or '<root>'} = {label}", text


def _json_paths(obj: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if prefix:
        yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            yield from _json_paths(v, (*prefix, i))


def _set(obj: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _size(*paths: Path) -> int:
    total = 0
    for p in paths:
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            total += p.stat().st_size
    return total


# ----------------------------------------------------------------------------- the run


@dataclass
class FuzzReport:
    """The outcomes of a fuzz run."""

    outcomes: list[Outcome] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        """One row per family: cases, refused, loaded, failed, percent clear, peak MiB."""
        df = pd.DataFrame([o.__dict__ for o in self.outcomes])
        rows = []
        for fam, g in df.groupby("family", sort=False):
            n = len(g)
            fails = int((g["kind"] == "FAIL").sum())
            rows.append({"family": fam, "cases": n,
                         "refused_clearly": int((g["kind"] == "refused").sum()),
                         "loaded_checked": int((g["kind"] == "loaded").sum()), "failed": fails,
                         "percent_ok": 100.0 * (n - fails) / n,
                         "max_peak_mib": g["peak_bytes"].max() / 2**20,
                         "seconds": g["seconds"].sum()})
        return pd.DataFrame(rows)


def run_families(families: dict[str, Callable[..., Iterator[Case]]], cases: int, seed: int,
                 progress: bool = True) -> FuzzReport:
    """Every case of every family, each family in a fresh temporary folder."""
    report = FuzzReport()
    for i, (name, fam) in enumerate(families.items()):
        rng = np.random.default_rng([seed, i])
        with tempfile.TemporaryDirectory(prefix=f"nsr-fuzz-{name}-") as tmp:
            for case in fam(Path(tmp), rng, cases):
                report.outcomes.append(judge(name, case))
        if progress:
            done = [o for o in report.outcomes if o.family == name]
            print(f"fuzz {name}: {len(done)} cases, "
                  f"{sum(o.kind == 'FAIL' for o in done)} failed", file=sys.stderr)
    return report


def run_fuzz(out: str | os.PathLike = "results/fuzz", cases: int = 200, seed: int = 0,
             families: str | None = None, progress: bool = True) -> str:
    """Run the families (all, or the comma-separated ``families``) with ``cases`` random cases
    each on top of the hand-written ones; write ``out/`` and return the markdown report."""
    from nsr_gym.results import (
        command_line,
        manifest,
        markdown_table,
        provenance_line,
        write_csv,
        write_json,
    )
    unknown = set((families or "").split(",")) - set(FAMILIES) - {""}
    if unknown:
        raise ValueError(f"unknown fuzz families {sorted(unknown)}; choose from {sorted(FAMILIES)}")
    chosen = FAMILIES if not families else {k: FAMILIES[k] for k in families.split(",") if k}
    t0 = time.perf_counter()
    report = run_families(chosen, cases, seed, progress)
    wall = time.perf_counter() - t0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = report.summary()
    failures = pd.DataFrame([o.__dict__ for o in report.outcomes if o.kind == "FAIL"],
                            columns=["family", "case", "kind", "detail", "peak_bytes", "seconds"])
    meta = manifest(command_line(), [seed], wall, cases_per_family=cases,
                    cap=f"{CAP_BASE // 2**20} MiB + {CAP_FACTOR} x input bytes (tracemalloc)")
    write_csv(out / "summary.csv", summary)
    write_csv(out / "failures.csv", failures)
    write_json(out / "manifest.json", meta)
    total, failed = len(report.outcomes), len(failures)
    md = "\n".join([
        "# Fuzz: malformed files and values", "", provenance_line(meta), "",
        f"{total:,} cases, {failed} failed ({100 * (total - failed) / total:.1f}% gave a clear "
        "error naming the file or argument, or loaded data that passed its checks). Allocation "
        f"cap per case: {CAP_BASE // 2**20} MiB + {CAP_FACTOR} x the case's input bytes "
        "(tracemalloc peak: Python and numpy allocations).", "",
        markdown_table(summary, floatfmt=".1f"), "",
        *(f"- FAIL {r.family} / {r.case}: {r.detail}" for r in failures.itertuples()),
    ]) + "\n"
    (out / "fuzz.md").write_text(md, encoding="utf-8")
    return md


# ----------------------------------------------------------------------------- shared writers


def write_pickle(path: Path, obj: Any) -> None:
    """A pickle file, as CIFAR's official batches are (Python 3's default protocol: its
    protocol 2 writes bytes through ``_codecs.encode``, which the CIFAR reader refuses)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (MNIST's format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def copy_tree(src: Path, dst: Path) -> Path:
    """A fresh copy of ``src`` at ``dst`` (symlinks kept as links)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ============================================================================= families
# Each family: f(work folder, rng, n random cases) -> the cases, hand-written ones first.


class Recomputed(Exception):
    """A unit store refused a kept file (the unit runs again): the outcome a tamper must get."""


class Refused(Exception):
    """A CLI command ended with exit status 2 and a message (the outcome bad input must get)."""


def _mutated_file(base: Path, work: Path, rel: str, data: bytes, i: int) -> Path:
    """A copy of the folder ``base`` in which ``rel`` holds ``data``; returns the copy."""
    root = copy_tree(base, work / f"case{i}")
    (root / rel).write_bytes(data)
    return root


# ----------------------------------------------------------------------------- json


def fam_json(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """:func:`nsr_gym.jsonio.read_json` against lies, damage and odd files."""
    from nsr_gym.jsonio import JsonFileError, read_json

    base = {"format_version": 2, "capacity": 5, "name": "bank", "alpha": 0.25,
            "entries": [{"slot": 0, "owner": 3, "shape": [4, 8], "sha256": "ab" * 32}]}
    texts: list[tuple[str, bytes]] = [
        ("5,000-deep list", b"[" * 5000 + b"]" * 5000),
        ("5,000-digit int", b'{"capacity": ' + b"9" * 5000 + b"}"),
        ("5,000-digit float", b'{"a": 1.' + b"0" * 5000 + b"}"),
        ("duplicate key", b'{"capacity": 5, "capacity": 6}'), ("not UTF-8", b'{"a": "\xff"}'),
        ("empty", b""), ("top-level list", b"[1]"), ("NaN (allowed)", b'{"a": NaN}'),
        ("brackets inside strings", b'{"a": "[[[[{{{{", "b": [1, {"c": "]]"}]}'),
        ("unterminated string", b'{"a": "' + b'\\"' * 1000),
    ]
    texts += [json_lie_text(base, rng) for _ in range(n // 2)]
    texts = [(d, t.encode() if isinstance(t, str) else t) for d, t in texts]
    good = json.dumps(base).encode()
    texts += list(truncations(good, rng, n // 4)) + list(flips(good, rng, n - n // 2 - n // 4))
    for i, (desc, data) in enumerate(texts):
        path = work / f"f{i}.json"
        path.write_bytes(data)
        yield Case(desc, lambda p=path: read_json(p, what="fuzz file"), (str(path),),
                   (JsonFileError,), lambda r, d=data: _same_as_json(r, d), len(data))
    big = work / "big.json"
    big.write_bytes(b"[" + b"1," * 5000 + b"1]")
    yield Case("over max_bytes", lambda: read_json(big, max_bytes=1000, expect=None),
               (str(big),), (JsonFileError,))
    yield Case("a directory", lambda: read_json(work), (str(work),), (JsonFileError,))
    if hasattr(os, "mkfifo"):
        fifo = work / "fifo.json"
        os.mkfifo(fifo)
        yield Case("a FIFO (would block)", lambda: read_json(fifo), (str(fifo),),
                   (JsonFileError,))


def _same_as_json(result: Any, data: bytes) -> str | None:
    try:
        want = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return "loaded what the json module rejects"
    if json.dumps(result, sort_keys=True) != json.dumps(want, sort_keys=True):
        return "loaded something else than the file holds"
    return None


# ----------------------------------------------------------------------------- data files


def _check_dataset(result: Any, n_classes: int) -> str | None:
    """What must hold of what :func:`nsr_gym.paper_data.load_dataset` returns."""
    x_tr, y_tr, x_te, y_te = result
    for x, y in ((x_tr, y_tr), (x_te, y_te)):
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            return f"images {x.dtype} {x.shape} vs {len(y)} labels"
        if not (np.isfinite(x).all() and 0 <= x.min() and x.max() <= 1):
            return "pixels outside [0, 1]"
        if y.dtype != np.int64 or y.min() < 0 or y.max() >= n_classes:
            return "labels out of range"
        if len(np.unique(y)) != n_classes:
            return "a class has no example"
    return None


def _labels(n_classes: int, per: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes), per)


def _pixels(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _data_cases(work: Path, base: Path, name: str, n_classes: int,
                edits: list[tuple[str, str, bytes]], rng: np.random.Generator, n: int,
                random_files: list[str]) -> Iterator[Case]:
    """Hand-written ``(description, file, bytes)`` edits, then random damage to
    ``random_files``, each loaded with ``load_dataset(name, verify=False)``."""
    from nsr_gym.paper_data import DataFileError, MissingDataError, load_dataset

    def case(i: int, desc: str, rel: str, data: bytes) -> Case:
        root = _mutated_file(base, work, rel, data, i)
        return Case(f"{rel}: {desc}", lambda: load_dataset(name, root, verify=False),
                    (str(root),), (DataFileError, MissingDataError),
                    lambda r: _check_dataset(r, n_classes), _size(root))

    for i, (desc, rel, data) in enumerate(edits):
        yield case(i, desc, rel, data)
        shutil.rmtree(work / f"case{i}")
    i = len(edits)
    for k in range(n):
        rel = random_files[k % len(random_files)]
        original = (base / rel).read_bytes()
        gen = truncations if k % 2 else flips
        desc, data = next(gen(original, rng, 1))
        yield case(i + k, desc, rel, data)
        shutil.rmtree(work / f"case{i + k}")


class _Reduce:
    """Pickles as ``fn(*args)`` with ``state``: crafts pickles with lies in them."""

    def __init__(self, fn: Any, args: tuple, state: Any = None) -> None:
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self) -> tuple:
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def fam_cifar(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """CIFAR-100's pickled batches: truncation, lies about data and labels, code in a pickle."""
    base = work / "base"
    y = _labels(100, 2)
    batch = {"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(),
             "data": _pixels(len(y), (3072,))}
    for split in ("train", "test"):
        write_pickle(base / "cifar-100-python" / split, batch)
    write_pickle(base / "cifar-100-python/meta",
                 {"fine_label_names": [f"f{i}" for i in range(100)]})
    raw = (base / "cifar-100-python/train").read_bytes()
    rel = "cifar-100-python/train"

    def edit(**changes: Any) -> bytes:
        return pickle.dumps({**batch, **changes})

    huge = _Reduce(np.ndarray.__reduce__(np.zeros(1, np.uint8))[0],
                   (np.ndarray, (0,), b"b"), (1, (10**9, 3072), np.dtype(np.uint8), False, b"\0"))
    edits = [
        ("truncated to half", rel, raw[: len(raw) // 2]), ("truncated to 10 B", rel, raw[:10]),
        ("empty", rel, b""), ("not a pickle", rel, b"hello world" * 10),
        ("names os.system", rel, pickle.dumps({"data": _Reduce(os.system, ("true",))})),
        ("declares a 4 GB string in 16 B", rel,
         b"\x80\x04\x8e" + struct.pack("<Q", 4 * 2**30) + b"abc."),
        ("ndarray of 10**9 rows with 1 byte", rel, edit(data=huge)),
        ("labels one short", rel, edit(fine_labels=y.tolist()[:-1])),
        ("labels one long", rel, edit(fine_labels=[*y.tolist(), 0])),
        ("label 100", rel, edit(fine_labels=[100, *y.tolist()[1:]])),
        ("label -1", rel, edit(fine_labels=[-1, *y.tolist()[1:]])),
        ("labels as strings", rel, edit(fine_labels=[str(v) for v in y])),
        ("labels as floats 0.5", rel, edit(fine_labels=[0.5] * len(y))),
        ("data as int64", rel, edit(data=batch["data"].astype(np.int64))),
        ("data of 100 columns", rel, edit(data=batch["data"][:, :100])),
        ("data missing", rel, pickle.dumps({"fine_labels": y.tolist()})),
        ("a list, not a dict", rel, pickle.dumps([1, 2, 3])),
        ("class 7 never appears", rel, edit(fine_labels=np.where(y == 7, 8, y).tolist())),
        ("bytes keys (Python 3 pickle)", rel, pickle.dumps(
            {b"fine_labels": y.tolist(), b"data": batch["data"]})),
        ("Python 3 protocol 2 (bytes via _codecs.encode)", rel, pickle.dumps(batch, protocol=2)),
        ("meta with 99 names", "cifar-100-python/meta",
         pickle.dumps({"fine_label_names": ["x"] * 99})),
    ]
    yield from _data_cases(work, base, "cifar100", 100, edits, rng, n,
                           [rel, "cifar-100-python/test", "cifar-100-python/meta"])


def fam_mnist(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """MNIST's IDX files: magic, declared sizes, counts, label ranges, legacy processed files."""
    import torch

    from nsr_gym.paper_data import DataFileError, load_dataset

    base = work / "base"
    y = _labels(10, 3)
    for split in ("train", "t10k"):
        write_idx(base / f"MNIST/raw/{split}-images-idx3-ubyte", _pixels(len(y), (28, 28)))
        write_idx(base / f"MNIST/raw/{split}-labels-idx1-ubyte", y)
    img, lab = "MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte"
    raw = (base / img).read_bytes()

    def idx_bytes(array: np.ndarray) -> bytes:
        return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + \
            array.astype(np.uint8).tobytes()

    edits = [
        ("magic of a labels file", img, b"\0\0\x08\x01" + raw[4:]),
        ("magic 0xdeadbeef", img, b"\xde\xad\xbe\xef" + raw[4:]),
        ("declares 1000 images", img, raw[:4] + struct.pack(">i", 1000) + raw[8:]),
        ("declares -1 images", img, raw[:4] + struct.pack(">i", -1) + raw[8:]),
        ("10 bytes short", img, raw[:-10]), ("10 bytes too many", img, raw + b"\0" * 10),
        ("header only", img, raw[:6]), ("32x32 images", img, idx_bytes(_pixels(30, (32, 32)))),
        ("label 10", lab, idx_bytes(np.where(y == 9, 10, y))),
        ("29 labels for 30 images", lab, idx_bytes(y[:-1])),
        ("class 3 never appears", lab, idx_bytes(np.where(y == 3, 4, y))),
    ]
    yield from _data_cases(work, base, "mnist", 10, edits, rng, n, [img, lab])
    legacy = copy_tree(base, work / "legacy")
    (legacy / "MNIST/processed").mkdir()
    for f in ("training.pt", "test.pt"):
        torch.save((torch.zeros(5, 28, 28, dtype=torch.uint8), torch.zeros(5, dtype=torch.long)),
                   legacy / "MNIST/processed" / f)
    want = load_dataset("mnist", base, verify=False)
    yield Case("legacy processed/*.pt beside raw/ (must not replace them)",
               lambda: load_dataset("mnist", legacy, verify=False), (str(legacy),),
               (DataFileError,), lambda r: None if all(np.array_equal(a, b) for a, b in
                                                       zip(r, want, strict=True))
               else "loaded other data than raw/ holds", _size(legacy))


def fam_svhn(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """SVHN's .mat files: declared sizes, decompression bombs, label ranges, other formats."""
    from scipy.io import savemat

    base = work / "base"
    base.mkdir()
    y = _labels(10, 3)
    x = np.ascontiguousarray(_pixels(len(y), (32, 32, 3)).transpose(1, 2, 3, 0))
    y10 = np.where(y == 0, 10, y).reshape(-1, 1)

    def mat(compress: bool = False, **variables: Any) -> bytes:
        buf = io.BytesIO()
        savemat(buf, variables or {"X": x, "y": y10}, do_compression=compress)
        return buf.getvalue()

    for split in ("train", "test"):
        (base / f"{split}_32x32.mat").write_bytes(mat())
    rel = "train_32x32.mat"
    raw = (base / rel).read_bytes()
    # savemat writes X first: 128-byte header, matrix tag (8), array flags (16), dims tag (8),
    # then the four int32 dims (32, 32, 3, n) at byte 160.
    lie = raw[:172] + struct.pack("<i", 1_300_000) + raw[176:]
    lie_nbytes = lie[:132] + struct.pack("<I", 32 * 32 * 3 * 1_300_000 + 64) + lie[136:]
    edits = [
        ("X declares 1.3 M images (4 GB)", rel, lie),
        ("X declares 1.3 M images, its element's size too", rel, lie_nbytes),
        ("a compressed bomb (60,000 blank images)", rel, mat(
            True, X=np.zeros((32, 32, 3, 60_000), np.uint8), y=np.ones((60_000, 1)))),
        ("compressed, valid", rel, mat(True)),
        ("MATLAB 7.3 (HDF5) header", rel, b"MATLAB 7.3 MAT-file".ljust(128, b" ")),
        ("not a .mat", rel, b"\0" * 500), ("truncated to half", rel, raw[: len(raw) // 2]),
        ("label 0", rel, mat(X=x, y=np.where(y10 == 1, 0, y10))),
        ("label 11", rel, mat(X=x, y=np.where(y10 == 1, 11, y10))),
        ("label 1.5", rel, mat(X=x, y=y10 + 0.5)), ("29 labels", rel, mat(X=x, y=y10[:-1])),
        ("X as float64", rel, mat(X=x.astype(np.float64), y=y10)),
        ("28x28 images", rel, mat(X=x[:28, :28], y=y10)), ("no y", rel, mat(X=x, z=y10)),
    ]
    yield from _data_cases(work, base, "svhn", 10, edits, rng, n, [rel, "test_32x32.mat"])


def _replace_by_link(d: Path, target: Path) -> None:
    shutil.rmtree(d)
    d.symlink_to(target, target_is_directory=True)


def _emptied(d: Path, junk: int = 0) -> None:
    shutil.rmtree(d)
    d.mkdir()
    for i in range(junk):
        (d / f"junk{i}.png").write_bytes(bytes(range(64)))


def _bomb_png(d: Path) -> None:
    from PIL import Image

    Image.new("L", (20_000, 20_000)).save(d / "bomb.png")


#: notMNIST damage: name -> f(letter folder, another letter's folder, data root, outside dir).
_NOTMNIST_DAMAGE: dict[str, Callable[[Path, Path, Path, Path], None]] = {
    "folder outside": lambda d, o, r, out: _replace_by_link(d, out),
    "same as another letter": lambda d, o, r, out: _replace_by_link(d, o),
    "loop to itself": lambda d, o, r, out: (d / "loop").symlink_to(d, target_is_directory=True),
    "loop to the data root": lambda d, o, r, out: (d / "up").symlink_to(
        r, target_is_directory=True),
    "self-referencing link": lambda d, o, r, out: (d / "self.png").symlink_to("self.png"),
    "dangling link": lambda d, o, r, out: (d / "gone.png").symlink_to(r / "nowhere.png"),
    "file outside": lambda d, o, r, out: (d / "out.png").symlink_to(out / "B0.png"),
    "a file twice": lambda d, o, r, out: (d / "twice.png").symlink_to(
        next(iter(sorted(d.glob("*.png"))))),
    "empty letter": lambda d, o, r, out: _emptied(d),
    "junk files only": lambda d, o, r, out: _emptied(d, junk=3),
    "a 20,000 x 20,000 PNG": lambda d, o, r, out: _bomb_png(d),
}


def fam_notmnist(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """notMNIST's letter folders: symlinks out of the data root, loops, shared folders, bombs."""
    from PIL import Image

    from nsr_gym.paper_data import DataFileError, MissingDataError, load_dataset

    base = work / "data"
    for c, letter in enumerate("ABCDEFGHIJ"):
        d = base / "notMNIST_small" / letter
        d.mkdir(parents=True)
        for i, img in enumerate(_pixels(5, (28, 28), seed=c)):
            Image.fromarray(img, mode="L").save(d / f"{letter}{i}.png")
    outside = work / "outside"
    copy_tree(base / "notMNIST_small" / "B", outside)
    kinds = list(_NOTMNIST_DAMAGE)
    letters = "ABCDEFGHIJ"
    plans = [(k, "C", "A") for k in kinds]
    plans += [(kinds[int(rng.integers(len(kinds)))], letters[int(rng.integers(10))],
               letters[int(rng.integers(10))]) for _ in range(n)]
    for i, (kind, letter, other) in enumerate(plans):
        if kind == "same as another letter" and other == letter:
            other = "A" if letter != "A" else "B"
        root = copy_tree(base, work / f"case{i}")
        nm = root / "notMNIST_small"
        _NOTMNIST_DAMAGE[kind](nm / letter, nm / other, root, outside)
        yield Case(f"{letter}: {kind}" + (f" ({other})" if "another" in kind else ""),
                   lambda r=root: load_dataset("notmnist", r, verify=False),
                   (str(root), str(outside)), (DataFileError, MissingDataError),
                   lambda r: _check_dataset(r, 10), _size(root))


# ----------------------------------------------------------------------------- unit logs


def fam_units(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """Kept ``.units`` logs edited, swapped or cut: recomputed, or read back unchanged."""
    from nsr_gym.executors import FrameStore, JsonStore, Unit

    unit, other = Unit("similarity", 3, {"env": "x"}), Unit("similarity", 4, {"env": "x"})
    frame = pd.DataFrame({"agent": ["similarity"] * 6, "seed": [3] * 6,
                          "reward": np.random.default_rng(0).normal(size=6)})
    result = {"agent": "similarity", "return": 12.5, "rows": [1, 2, 3]}

    def frame_store(folder: Path) -> FrameStore:
        store = FrameStore(folder, check=lambda f, u: None if len(f) == 6 else "rows")
        store.save(unit, frame)
        store.save(other, frame.assign(seed=4))
        return store

    def load(store: Any, path: Path) -> Any:
        got = store.load(unit)
        if got is None:
            raise Recomputed(f"{path} recomputed")
        return got

    def same(got: Any) -> str | None:
        ok = got == result if isinstance(got, dict) else isinstance(got, pd.DataFrame) and \
            got.equals(frame)
        return None if ok else "a tampered unit was trusted: another result came back"

    edits: list[tuple[str, str, Callable[[Path], None]]] = [
        ("one digit of the table edited", "csv", lambda p: p.write_text(
            p.read_text().replace("similarity,3,", "similarity,3,1", 1))),
        ("another unit's table and checksum", "csv", _swap_unit),
        ("checksum file deleted", "csv", lambda p: Path(f"{p}.sha256").unlink()),
        ("checksum file a 5,000-deep list", "csv", lambda p: Path(f"{p}.sha256").write_text(
            "[" * 5000 + "]" * 5000)),
        ("checksum file with a 5,000-digit int", "csv", lambda p: Path(f"{p}.sha256").write_text(
            '{"bytes": ' + "9" * 5000 + "}")),
        ("table replaced by garbage", "csv", lambda p: p.write_bytes(b"\0\xff garbage")),
        ("result value edited", "json", lambda p: p.write_text(
            p.read_text().replace("12.5", "99.5"))),
        ("result and its sha256 edited, unit key kept", "json", _rehash_json_unit),
        ("old format (no checksum)", "json", lambda p: p.write_text(json.dumps(result))),
        ("another unit's key", "json", lambda p: p.write_text(
            p.read_text().replace(unit.key, other.key))),
    ]
    kinds = ["csv", "json"]
    for k in range(n):
        kind = kinds[k % 2]
        gen = truncations if (k // 2) % 2 else flips
        edits.append((f"random {kind}", kind, lambda p, g=gen: p.write_bytes(
            next(g(p.read_bytes(), rng, 1))[1])))
    for i, (desc, kind, damage) in enumerate(edits):
        folder = work / f"case{i}"
        if kind == "csv":
            store: Any = frame_store(folder)
            path = store.path(unit)
        else:
            store = JsonStore(folder)
            store.save(unit, result)
            store.save(other, {**result, "return": 1.0})
            path = folder / f"{unit.key}.json"
        damage(path)
        yield Case(f"{kind}: {desc}", lambda s=store, p=path: load(s, p), (str(path),),
                   (Recomputed,), same, _size(folder))


def _swap_unit(path: Path) -> None:
    """Put another unit's table (and its checksum file) under this unit's name."""
    other = next(p for p in path.parent.glob("*.csv") if p != path)
    path.write_bytes(other.read_bytes())
    Path(f"{path}.sha256").write_bytes(Path(f"{other}.sha256").read_bytes())


def _rehash_json_unit(path: Path) -> None:
    """Edit a JSON unit's result and recompute its sha256 (checksums are not signatures: this
    one is trusted, and counts as loaded when the check below says the result is intact)."""
    from nsr_gym.atomic import sha256_json

    kept = json.loads(path.read_text())
    kept["result"]["rows"] = [1, 2, 3]  # the same values: a self-consistent no-op edit
    kept["sha256"] = sha256_json(kept["result"])
    path.write_text(json.dumps(kept, indent=2))


# ----------------------------------------------------------------------------- SB3 policies

SB3_ENV = dict(phase_length=4, n_cycles=2)


def write_policy_folder(out: Path, algo: str = "maskable-ppo") -> Path:
    """A trained-policy folder as :func:`nsr_gym.agents.train.train` writes it (config.json,
    policy.safetensors, model.zip), built without training: an untrained network."""
    import zipfile

    import gymnasium as gym
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

    from nsr_gym.agents.train import CONFIG_FORMAT, _policy_kwargs, _save_weights, obs_layout
    from nsr_gym.atomic import sha256_file

    env = gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", **SB3_ENV)
    layout = obs_layout(env.observation_space)
    flat = gym.wrappers.FlattenObservation(env).observation_space
    hp = {"policy_kwargs": {"net_arch": [8], "activation_fn": "tanh"}}
    policy = MaskableActorCriticPolicy(flat, env.action_space, lambda _: 0.0,
                                       **_policy_kwargs(hp["policy_kwargs"]))
    out.mkdir(parents=True, exist_ok=True)
    _save_weights(policy.state_dict(), out / "policy.safetensors")
    with zipfile.ZipFile(out / "model.zip", "w") as zf:
        zf.writestr("policy.pth", b"a pickle that must never be read")
    config = {"format_version": CONFIG_FORMAT, "settings": {"algo": algo}, "hyperparams": hp,
              "obs_layout": layout, "n_actions": int(env.action_space.n),
              "files": {f: sha256_file(out / f) for f in ("model.zip", "policy.safetensors")}}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def _rehash(folder: Path, name: str) -> None:
    from nsr_gym.atomic import sha256_file

    config = json.loads((folder / "config.json").read_text())
    config["files"][name] = sha256_file(folder / name)
    (folder / "config.json").write_text(json.dumps(config))


def _retype_weights(folder: Path, double: bool = False, nan: bool = False) -> None:
    """Cast the weights to float64 or put a NaN in them, with their sha256 recomputed."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "policy.safetensors"))
    if double:
        state = {k: v.to(torch.float64) for k, v in state.items()}
    if nan:
        next(iter(state.values())).view(-1)[0] = float("nan")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "policy.safetensors"))
    _rehash(folder, "policy.safetensors")


def _edit_config(**changes: Any) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        for dotted, value in changes.items():
            obj = config
            *head, last = dotted.split(".")
            for k in head:
                obj = obj[k]
            obj[last] = value
        (folder / "config.json").write_text(json.dumps(config))
    return apply


#: Malformed policy folders, by hand: name -> damage (also used by the CLI family).
SB3_DAMAGE: dict[str, Callable[[Path], None]] = {
    "policy.safetensors missing (only the zip's policy.pth)":
        lambda f: (f / "policy.safetensors").unlink(),
    "model.zip replaced": lambda f: (f / "model.zip").write_bytes(b"PK another zip"),
    "config.json a 5,000-deep list": lambda f: (f / "config.json").write_text(
        "[" * 5000 + "]" * 5000),
    "n_actions a 5,000-digit int": lambda f: (f / "config.json").write_text(
        (f / "config.json").read_text().replace('"n_actions": 7', '"n_actions": ' + "9" * 5000)),
    "n_actions 10**9": _edit_config(n_actions=10**9),
    "net_arch [10**6]": _edit_config(**{"hyperparams.policy_kwargs": {"net_arch": [10**6]}}),
    "net_arch [9] (weights do not fit)": _edit_config(
        **{"hyperparams.policy_kwargs": {"net_arch": [9]}}),
    "an obs_layout part 10**9 wide": _edit_config(**{"obs_layout": [
        {"key": "age", "size": 10**9, "low": 0.0, "high": 1.0}]}),
    "unknown activation": _edit_config(**{"hyperparams.policy_kwargs": {
        "net_arch": [8], "activation_fn": "os.system"}}),
    "extra policy_kwargs": _edit_config(**{"hyperparams.policy_kwargs": {
        "net_arch": [8], "features_extractor_class": "x"}}),
    "algo unknown": _edit_config(**{"settings.algo": "dqn"}),
    "format_version 2": _edit_config(format_version=2),
    "weights sha256 not recorded": _edit_config(files={}),
    "weights cast to float64 (sha256 updated)": lambda f: _retype_weights(f, double=True),
    "weights with a NaN (sha256 updated)": lambda f: _retype_weights(f, nan=True),
    "weights truncated": lambda f: (f / "policy.safetensors").write_bytes(
        (f / "policy.safetensors").read_bytes()[:100]),
    "config.json missing": lambda f: (f / "config.json").unlink(),
}


def fam_sb3(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """SB3 policy folders through :func:`nsr_gym.agents.sb3_policy.load_sb3_policy`."""
    import gymnasium as gym
    import torch

    from nsr_gym.agents.sb3_policy import load_sb3_policy

    base = write_policy_folder(work / "base")
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", **SB3_ENV)
    obs, _ = env.reset(seed=0)

    def acts(policy: Any) -> str | None:
        action = policy.act(obs)
        return None if env.action_space.contains(action) else f"action {action} out of space"

    damage = dict(SB3_DAMAGE)
    for k in range(n):
        if k % 2:
            config = json.loads((base / "config.json").read_text())
            desc, text = json_lie_text(config, rng)
            damage[f"config {desc}"] = lambda f, t=text: (f / "config.json").write_text(t)
        else:
            damage[f"weights {k}: flipped bytes, sha256 updated"] = lambda f: (
                (f / "policy.safetensors").write_bytes(next(flips(
                    (f / "policy.safetensors").read_bytes(), rng, 1))[1]),
                _rehash(f, "policy.safetensors"))
    for i, (desc, apply) in enumerate(damage.items()):
        folder = copy_tree(base, work / f"case{i}")
        with torch.no_grad():
            apply(folder)
        yield Case(desc, lambda f=folder: load_sb3_policy(f), (str(folder),),
                   (ValueError, OSError), acts, _size(folder))


# ----------------------------------------------------------------------------- peft adapters


def _adapter_payload() -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    shapes = {"layer0.B": (64, 3), "layer0.A": (3, 64), "layer1.B": (32, 2), "layer1.A": (2, 64),
              "head.weight": (10, 32), "head.bias": (10,)}
    return {k: torch.randn(*s, generator=g) for k, s in shapes.items()}


def _adapter_config(**changes: Any) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        (root / "nsr_gym.json").unlink(missing_ok=True)  # a plain peft adapter: no checksums
        cfg = json.loads((root / "adapter_config.json").read_text())
        cfg.update(changes)
        (root / "adapter_config.json").write_text(json.dumps(cfg))
    return apply


def _adapter_weights(fn: Callable[[Any], Any]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        from safetensors.torch import load_file, save_file

        (root / "nsr_gym.json").unlink(missing_ok=True)
        path = root / "adapter_model.safetensors"
        state = load_file(str(path))
        save_file({k: fn(v).contiguous() for k, v in state.items()}, str(path))
    return apply


#: Adapter directories damaged by hand: name -> damage.
ADAPTER_DAMAGE: dict[str, Callable[[Path], None]] = {
    "r = 2e6": _adapter_config(r=2_000_000, rank_pattern={}),
    "rank_pattern 10**9": _adapter_config(rank_pattern={"0": 10**9, "2": 2}),
    "r a 5,000-digit int": lambda r: (_adapter_config()(r), (r / "adapter_config.json").write_text(
        (r / "adapter_config.json").read_text().replace('"r": 3', '"r": ' + "9" * 5000))),
    "target_modules partial ['0']": _adapter_config(target_modules=["0"]),
    "target_modules regex hitting ReLU": _adapter_config(target_modules="[0-9]"),
    "target_modules an int": _adapter_config(target_modules=5),
    "target_modules empty": _adapter_config(target_modules=[]),
    "rank_pattern disagrees with the weights": _adapter_config(rank_pattern={"0": 2, "2": 2}),
    "lora_alpha a string": _adapter_config(lora_alpha="8"),
    "init_lora_weights pissa": _adapter_config(init_lora_weights="pissa"),
    "layer_replication": _adapter_config(layer_replication=[[0, 1]]),
    "weights cast to int32": _adapter_weights(lambda t: (t * 100).to(dtype=__import__(
        "torch").int32)),
    "weights cast to bool": _adapter_weights(lambda t: t > 0),
    "weights cast to float16 (loads)": _adapter_weights(lambda t: t.half()),
    "config a 5,000-deep list": lambda r: ((r / "nsr_gym.json").unlink(), (
        r / "adapter_config.json").write_text("[" * 5000 + "]" * 5000)),
    "config missing": lambda r: (r / "adapter_config.json").unlink(),
}


def fam_adapter(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """peft adapter directories through :func:`nsr_gym.interchange.import_adapter`."""
    from nsr_gym.bank import BankFormatError
    from nsr_gym.interchange import BackboneSpec, _check_payload, export_adapter, import_adapter

    spec = BackboneSpec()
    base = export_adapter(_adapter_payload(), work / "base", spec)

    def fits(entry: Any) -> str | None:
        try:
            _check_payload(entry.tensors, spec)
        except ValueError as exc:
            return f"loaded a payload that does not fit: {exc}"
        return None

    damage = dict(ADAPTER_DAMAGE)
    config = json.loads((base / "adapter_config.json").read_text())
    for k in range(n):
        if k % 2:
            desc, text = json_lie_text(config, rng)
            damage[f"config {desc}"] = lambda r, t=text: (
                (r / "nsr_gym.json").unlink(), (r / "adapter_config.json").write_text(t))
        else:
            damage[f"weights {k}: flipped bytes"] = lambda r: (
                (r / "nsr_gym.json").unlink(), (r / "adapter_model.safetensors").write_bytes(
                    next(flips((r / "adapter_model.safetensors").read_bytes(), rng, 1))[1]))
    for i, (desc, apply) in enumerate(damage.items()):
        root = copy_tree(base, work / f"case{i}")
        apply(root)
        key = np.ones(spec.hidden[-1], np.float32)  # the payload was exported without one
        yield Case(desc, lambda r=root, k=key: import_adapter(r, spec, key=k), (str(root),),
                   (BankFormatError, ValueError), fits, _size(root))


# ----------------------------------------------------------------------------- env values

ENV_VALUES: tuple[Any, ...] = (True, False, 0, -1, 1, 3, 10**9, 10**30, 1e38, float("nan"),
                               float("inf"), "3", None, [1], 2.5, np.int64(3), np.float32(0.1),
                               np.bool_(True))
ENV_KEYS = ("n_tasks", "phase_length", "n_cycles", "capacity", "updates_per_step",
            "lambda_switch", "acc_weight")


def fam_env(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """``gym.make`` with one odd value: a clear error naming it, or an env whose observations
    stay in ``observation_space``."""
    import gymnasium as gym

    import nsr_gym  # noqa: F401 - registers the envs

    def make(**kw: Any) -> Any:
        env = gym.make("nsr_gym/CyclicSplitDigits-v0", **{"backend": "analytic",
                                                          "phase_length": 2, "n_cycles": 1, **kw})
        return env

    def runs(env: Any) -> str | None:
        obs, _ = env.reset(seed=0)
        for _ in range(2):
            if not env.observation_space.contains(obs):
                return "an observation left observation_space"
            obs, *_ = env.step(0)
        return None

    cases: list[tuple[str, dict[str, Any], str]] = [
        ("lambda_switch=True", {"lambda_switch": True}, "lambda_switch"),
        ("capacity=10**9", {"capacity": 10**9}, "capacity"),
        ("learner=5", {"learner": 5}, "learner"),
        ("learner={'lr': 1e38} (torch)", {"backend": "torch", "learner": {"lr": 1e38}}, "lr"),
        ("learner={'key_dim': 10**9}", {"learner": {"key_dim": 10**9}}, "key_dim"),
        ("n_tasks=10**6", {"n_tasks": 10**6}, "n_tasks"),
        ("phase_length=10**9", {"phase_length": 10**9}, "phase_length"),
    ]
    for _ in range(n):
        key = ENV_KEYS[int(rng.integers(len(ENV_KEYS)))]
        value = ENV_VALUES[int(rng.integers(len(ENV_VALUES)))]
        cases.append((f"{key}={value!r}", {key: value}, key))
    for desc, kw, name in cases:
        yield Case(desc, lambda kw=kw: make(**kw), (name,), (ValueError, TypeError), runs)


# ----------------------------------------------------------------------------- CLI


#: The program :class:`CliDriver` runs: ``nsr-gym`` commands read as JSON lines from stdin, one
#: JSON line back per command (exit status, stderr, tracemalloc peak, any escaped exception).
_DRIVER = """
import io, json, sys, tracemalloc, traceback
from contextlib import redirect_stderr, redirect_stdout
from nsr_gym.cli import main
import nsr_gym.agents, nsr_gym.studies.benchmark  # imports are not what a case allocates
for name in ("sb3_contrib", "ray", "peft"):
    try:
        __import__(name)
    except ImportError:
        pass
for line in sys.stdin:
    argv, err, raw = json.loads(line), io.StringIO(), ""
    tracemalloc.start()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            code, raw = -1, "".join(traceback.format_exception_only(exc))[-300:]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"code": code, "err": err.getvalue()[-2000:], "raw": raw, "peak": peak}),
          flush=True)
"""


class CliDriver:
    """``nsr-gym`` in a child process, as a user runs it, fed one command at a time (one
    start-up for all cases; the study never imports the CLI). A command that runs longer than
    ``timeout_s`` is a finding: the child is restarted and the case reports it."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s, self.proc = timeout_s, None

    def _start(self) -> Any:
        import subprocess

        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("NSR_GYM_TRACEBACK", None)
        self.proc = subprocess.Popen([sys.executable, "-c", _DRIVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        return self.proc

    def run(self, argv: list[str]) -> dict[str, Any]:
        """``{"code", "err", "raw", "peak"}`` of one command."""
        import select

        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        proc.stdin.write(json.dumps(argv) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], self.timeout_s)
        line = proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            return {"code": -1, "err": "", "peak": 0,
                    "raw": f"no answer within {self.timeout_s:g} s (hung or crashed)"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def fam_cli(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """``nsr-gym`` commands in a child process: exit status 2 and a message naming what is
    wrong, never a traceback, a hang, or an allocation above the cap."""
    driver = CliDriver()

    def cli(argv: list[str]) -> dict[str, Any]:
        got = driver.run(argv)
        if got["peak"] > CAP_BASE:  # the child's tracemalloc peak
            got["raw"] = got["raw"] or f"peak allocation {got['peak']:,} B above {CAP_BASE:,} B"
        if got["code"] == 2 and got["err"].strip() and not got["raw"]:
            raise Refused(got["err"])
        return got

    def verdict(got: dict[str, Any]) -> str:
        if got["raw"]:
            return f"raw exception: {got['raw']}"
        return f"exit status {got['code']}: ran instead of refusing"

    out = str(work / "out")
    cases: list[tuple[str, list[str], str]] = [
        ("run --seeds 1000000000", ["run", "--seeds", "1000000000"], "--seeds"),
        ("run --seeds -5", ["run", "--seeds", "-5"], "--seeds"),
        ("run --seeds 0,-1", ["run", "--seeds", "0,-1"], "--seeds"),
        ("run --seeds x", ["run", "--seeds", "x"], "--seeds"),
        ("run --ray-address 127.0.0.1:1", ["run", "--executor", "ray", "--ray-address",
                                           "127.0.0.1:1", "--backend", "analytic", "--seeds",
                                           "1", "--no-progress", "--out", out], "127.0.0.1:1"),
        ("regret --learner deep", ["regret", "--quick", "--learner", "[" * 5000 + "]" * 5000,
                                   "--out", out], "--learner"),
        ("train --env-kwargs 5,000-digit int", ["train", "--env-kwargs",
                                                '{"capacity": ' + "9" * 5000 + "}"], "JSON"),
    ]
    base = write_policy_folder(work / "policy")
    for i, (desc, apply) in enumerate(SB3_DAMAGE.items()):
        folder = copy_tree(base, work / f"p{i}")
        apply(folder)
        cases.append((f"run --agents maskable-ppo:DIR, {desc}",
                      ["run", "--backend", "analytic", "--agents", f"maskable-ppo:{folder}",
                       "--seeds", "1", "--no-progress", "--out", out], str(folder)))
    # Random --seeds text, on a benchmark that does not exist: a valid count or list is
    # refused for the benchmark (named), an invalid one for --seeds; nothing runs either way.
    for _ in range(n):
        text = "".join(rng.choice(list("0123456789,-x "), int(rng.integers(1, 12))))
        cases.append((f"run --seeds {text!r}", ["run", "--seeds", text, "--benchmark",
                                                "NoSuchBenchmark", "--out", out], "--seeds"))
    try:
        for desc, argv, name in cases:
            yield Case(desc, lambda a=argv: cli(a), (name, "NoSuchBenchmark"), (Refused,),
                       verdict)
    finally:
        driver.close()


# ----------------------------------------------------------------------------- pretrained


def fam_pretrained(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """Pretrained-learner settings and LoRA targets, checked before peft allocates."""
    from torch import nn

    from nsr_gym.learners.pretrained import (
        PretrainedConfig,
        check_lora_targets,
        check_pretrained_config,
    )
    from nsr_gym.validation import LEARNER_LIMITS

    fields = ("lora_rank", "lr", "batch_size", "embed_pool", "eval_batch_size", "distill_anchors")
    values = (2_000_000, 2e6, 1e38, True, -1, 0, 4, 0.01, "4", None, float("nan"))

    def sane(name: str, v: Any) -> bool:
        limit = LEARNER_LIMITS.get(name, (1e6, ""))[0]
        integer = name != "lr"
        ok_type = type(v) is int if integer else type(v) in (int, float)
        return ok_type and 0 < v <= limit and v == v

    cases = [("lora_rank=2e6", "lora_rank", 2_000_000)]
    for _ in range(n):
        cases.append(("", fields[int(rng.integers(len(fields)))],
                      values[int(rng.integers(len(values)))]))
    for desc, name, v in cases:
        yield Case(desc or f"{name}={v!r}",
                   lambda name=name, v=v: check_pretrained_config(PretrainedConfig(**{name: v})),
                   (name,), (ValueError, TypeError),
                   lambda _, name=name, v=v: None if sane(name, v) else f"accepted {name}={v!r}")
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Conv2d(3, 4, 3))
    for targets, rank in ((["0"], 2_000_000), (["0"], 9), (["1"], 2), (["9"], 2), (["2"], 28),
                          (["0", "2"], 4)):
        yield Case(f"targets {targets} rank {rank}",
                   lambda t=targets, r=rank: check_lora_targets(net, t, r), ("target", "rank"),
                   (ValueError,), lambda _, t=targets, r=rank: None if r <= 8 and "1" not in t
                   and "9" not in t else f"accepted targets {t} at rank {r}")


# ----------------------------------------------------------------------------- the bank


def fam_bank(work: Path, rng: np.random.Generator, n: int) -> Iterator[Case]:
    """A saved bank's ``manifest.json`` and ``geometry.json`` lied about, the manifest checksum
    recomputed (black box: whatever the bank's own checks raise must name the file)."""
    import torch

    from nsr_gym.bank import BankEntry, BankFormatError, TaskKnowledgeBank

    try:
        from nsr_gym.bank.manifest import MANIFEST_SHA, manifest_sha256
    except ImportError:  # pragma: no cover - an older bank format
        return
    bank = TaskKnowledgeBank(3, 4)
    for t in range(2):
        key = np.random.default_rng(t).normal(size=4).astype(np.float32)
        bank.insert(BankEntry(key=key, tensors={"layer0.A": torch.ones(2, 4),
                                                "layer0.B": torch.ones(4, 2)}, owner=t,
                              tasks_served=[t]), step=t)
    base = work / "base"
    bank.save(base)
    manifest = json.loads((base / "manifest.json").read_text())

    def rehashed(text: str) -> str:
        try:
            obj = json.loads(text)
            obj[MANIFEST_SHA] = manifest_sha256(obj)
            return json.dumps(obj)
        except (ValueError, TypeError, KeyError, RecursionError):
            return text

    edits = [("capacity 10**12", json.dumps({**manifest, "capacity": 10**12}))]
    edits += [json_lie_text(manifest, rng) for _ in range(n)]
    for i, (desc, text) in enumerate(edits):
        root = copy_tree(base, work / f"case{i}")
        (root / "manifest.json").write_text(rehashed(text))
        yield Case(f"manifest {desc}", lambda r=root: TaskKnowledgeBank.load(r), (str(root),),
                   (BankFormatError, ValueError), _bank_ok, _size(root))


def _bank_ok(bank: Any) -> str | None:
    """A loaded bank: no more entries than slots, finite keys, usages >= 0."""
    occupied = bank.occupied()
    if occupied.sum() > bank.capacity:
        return "more entries than slots"
    if (np.asarray(bank.usages()) < 0).any():
        return "a negative usage"
    return None


#: Every family, in report order.
FAMILIES: dict[str, Callable[[Path, np.random.Generator, int], Iterator[Case]]] = {
    "json": fam_json, "cifar100": fam_cifar, "mnist": fam_mnist, "svhn": fam_svhn,
    "notmnist": fam_notmnist, "units": fam_units, "sb3": fam_sb3, "adapter": fam_adapter,
    "env": fam_env, "cli": fam_cli, "pretrained": fam_pretrained, "bank": fam_bank,
}
