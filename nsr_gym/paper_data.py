"""Paper-scale task data: Split-CIFAR-100 and 5-Datasets, read from files under a ``data_root``.

Nothing is fetched at run time. Before any file is read, :func:`check_files` looks for every file
a benchmark needs and raises one :class:`MissingDataError` that lists all missing files, where
each must go, and the archive it comes from (:data:`SOURCES`).

On-disk layout under ``data_root`` (the layouts torchvision and the archives use)::

    cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}     CIFAR-10 (python version)
    cifar-100-python/{train, test, meta}                                 CIFAR-100 (python version)
    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte               MNIST (IDX, un-gzipped)
    FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte        Fashion-MNIST (IDX)
    train_32x32.mat, test_32x32.mat                                      SVHN (format 2, .mat)
    notMNIST_small/{A..J}/*.png                                          notMNIST, letter per folder

The readers are this module's own, and each checks a file before it costs memory: a file's size
(at most :data:`MAX_FILE_BYTES`), what it declares (IDX magic and dimensions against the file's
size, a ``.mat`` variable's dimensions against its data bytes and the file, compressed ones
against :data:`MAX_MAT_RATIO`), then counts (as many labels as images), label ranges, and that
every class has examples in both splits. CIFAR's official batches are Python pickles: they are
the one pickle the project reads, through :class:`_ArrayUnpickler`, which resolves numpy's array
rebuilders and nothing else, after :mod:`pickletools` has walked the opcodes to check every
declared length against the bytes present. MNIST is read from ``raw/`` only (legacy
``processed/*.pt`` files are never read). notMNIST's letter folders must be distinct folders
inside the data root: a symlink that leaves it, a loop, or an image reached twice is refused. A
malformed file raises one :class:`DataFileError` naming it, what is wrong and where the original
comes from.

Every image becomes float32 ``(3, 32, 32)`` in ``[0, 1]``, flattened to a ``(3072,)`` row so a
:class:`nsr_gym.data.Task` keeps its ``(n, d)`` contract; grayscale 28x28 images (MNIST,
Fashion-MNIST, notMNIST) are resized bilinearly to 32x32 and repeated over three channels, as is
usual for 5-Datasets. notMNIST has no official split: a stratified ``NOTMNIST_TEST_FRACTION`` of
each letter is held out with the digits' ``SPLIT_SEED``; its few unreadable PNGs are skipped.

``verify=True`` (the default) checks the md5 of the CIFAR and SVHN files against the official
ones (:data:`MD5`, torchvision's list); ``verify=False`` parses them with the same checks, which
is what the tests do with the tiny files they write in these formats.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nsr_gym.data import SPLIT_SEED, Task

#: Side of the square RGB images every paper-scale task is brought to.
IMAGE_SIZE = 32
#: Fraction of each notMNIST letter held out for testing (no official split exists).
NOTMNIST_TEST_FRACTION = 0.2
NOTMNIST_FOLDER = "notMNIST_small"
NOTMNIST_LETTERS = tuple("ABCDEFGHIJ")

_IDX = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: Files each dataset needs, relative to ``data_root`` (a folder path ending in ``/`` means
#: "this folder, with one sub-folder per class").
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "cifar10": tuple(
        f"cifar-10-batches-py/{f}"
        for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
    ),
    "cifar100": tuple(f"cifar-100-python/{f}" for f in ("train", "test", "meta")),
    "mnist": tuple(f"MNIST/raw/{f}" for f in _IDX),
    "fashion_mnist": tuple(f"FashionMNIST/raw/{f}" for f in _IDX),
    "svhn": ("train_32x32.mat", "test_32x32.mat"),
    "notmnist": tuple(f"{NOTMNIST_FOLDER}/{c}/" for c in NOTMNIST_LETTERS),
}

#: Where each dataset's files come from and how to unpack them.
SOURCES: dict[str, str] = {
    "cifar10": "extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into DATA_ROOT",
    "cifar100": "extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into DATA_ROOT",
    "mnist": "gunzip the four files of http://yann.lecun.com/exdb/mnist/ (or any torchvision "
    "mirror) into DATA_ROOT/MNIST/raw/",
    "fashion_mnist": "gunzip the four files of "
    "https://github.com/zalandoresearch/fashion-mnist (data/fashion) into "
    "DATA_ROOT/FashionMNIST/raw/",
    "svhn": "download http://ufldl.stanford.edu/housenumbers/train_32x32.mat and test_32x32.mat "
    "into DATA_ROOT",
    "notmnist": "extract notMNIST_small.tar.gz (Yaroslav Bulatov's notMNIST) into DATA_ROOT so "
    "that DATA_ROOT/notMNIST_small/A ... J hold the PNGs",
}

#: The datasets of 5-Datasets, in stream order.
FIVE_DATASETS = ("cifar10", "mnist", "svhn", "notmnist", "fashion_mnist")
#: Datasets each benchmark reads.
BENCHMARK_DATASETS: dict[str, tuple[str, ...]] = {
    "split_cifar100": ("cifar100",),
    "five_datasets": FIVE_DATASETS,
}


class MissingDataError(FileNotFoundError):
    """Files a paper-scale benchmark needs are missing; the message lists each and its source."""


def missing_files(data_root: str | os.PathLike, datasets: tuple[str, ...]) -> dict[str, list[str]]:
    """Dataset -> the required paths under ``data_root`` that are absent (complete ones dropped).

    A folder entry (ending in ``/``) counts as present when it is a directory holding a file.
    """
    root = Path(data_root)
    out: dict[str, list[str]] = {}
    for name in datasets:
        absent = []
        for rel in REQUIRED_FILES[name]:
            path = root / rel
            if rel.endswith("/"):
                ok = path.is_dir() and any(p.is_file() for p in path.iterdir())
            else:
                ok = path.is_file()
            if not ok:
                absent.append(
                    str(path) + ("/ (a folder of PNG images)" if rel.endswith("/") else "")
                )
        if absent:
            out[name] = absent
    return out


def check_files(data_root: str | os.PathLike, datasets: tuple[str, ...]) -> None:
    """Raise one :class:`MissingDataError` naming every missing file and where it comes from."""
    missing = missing_files(data_root, datasets)
    if not missing:
        return
    lines = [
        f"nsr-gym reads paper-scale data from the data root {data_root} and never downloads "
        f"it; {sum(map(len, missing.values()))} required file(s) are missing:"
    ]
    for name, paths in missing.items():
        lines.append(f"  {name}: {SOURCES[name].replace('DATA_ROOT', str(data_root))}")
        lines += [f"    - {p}" for p in paths]
    raise MissingDataError("\n".join(lines))


# ----------------------------------------------------------------------------- file readers
#
# Each reader checks what a file declares (sizes, shapes, counts, label ranges) against the file
# itself and the bounds below before it allocates more than the file's own bytes, and raises one
# DataFileError naming the file. torchvision is not called: its MNIST class silently prefers
# legacy MNIST/processed/*.pt files, and its SVHN class trusts a .mat header's sizes.

#: Largest data file read (bytes); the official files are at most ~182 MB (SVHN train).
MAX_FILE_BYTES = 1 << 30
#: Largest array a .mat header may declare (bytes), and how much more than its compressed
#: bytes a compressed one may declare (official SVHN compresses about 1.2x; a bomb 1000x).
MAX_MAT_ARRAY_BYTES, MAX_MAT_RATIO = 1 << 30, 64
#: notMNIST: most images per letter folder, largest PNG (bytes) and image (pixels) read.
MAX_FOLDER_FILES, MAX_PNG_BYTES, MAX_PNG_PIXELS = 200_000, 1 << 20, 512 * 512
#: md5 of the official files (torchvision's lists), checked with ``verify=True``.
MD5: dict[str, str] = {
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}


class DataFileError(ValueError):
    """A data file is there but malformed: truncated, of another format, or inconsistent (counts,
    shapes, label ranges). The message names the file, what is wrong and what to do."""

    def __init__(self, path: str | os.PathLike, problem: str, dataset: str | None = None) -> None:
        self.path, self.problem = str(path), problem
        fix = f"re-extract it ({SOURCES[dataset]})" if dataset in SOURCES else \
            "replace it with the original file"
        super().__init__(f"{path}: {problem}; {fix}")


class UnsafePickleError(DataFileError, MissingDataError):
    """A 'CIFAR batch' pickle names code to run; it is refused, never run (also a
    :class:`MissingDataError`: the genuine file is missing)."""


def _read_bounded(path: Path, dataset: str | None = None) -> bytes:
    """A whole data file, refused above :data:`MAX_FILE_BYTES` (checked before reading)."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataFileError(path, f"is {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit "
                            "(the official files are under 200 MB)", dataset)
    return path.read_bytes()


def _check_md5(root: Path, rels: list[str], name: str) -> None:
    for rel in rels:
        if rel in MD5 and hashlib.md5((root / rel).read_bytes()).hexdigest() != MD5[rel]:
            source = SOURCES[name].replace("DATA_ROOT", str(root))
            raise ValueError(
                f"{name} under {root}: {root / rel} exists but failed its md5 checksum. It is not "
                f"the official file: re-extract it ({source}), or pass verify=False to read the "
                "files as they are.")


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickled batches while refusing every global but numpy's array rebuilders.

    CIFAR ships as Python pickles; a plain ``pickle.load`` of a user's file could run any code it
    names. This unpickler resolves only the handful of globals a CIFAR batch needs.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def __init__(self, file: io.BytesIO, path: str) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            self.path, f"refusing to unpickle {module}.{name}: CIFAR batches hold only arrays "
            "and lists, so this file is not a CIFAR batch")


def _read_cifar_pickle(path: str | os.PathLike, dataset: str | None = None) -> dict:
    """A CIFAR pickle as a dict with ``str`` keys.

    The opcodes are walked first without running anything (:func:`pickletools.genops` checks
    every declared length against the bytes really there), so a few-byte file that declares a
    4 GB string is refused before the unpickler allocates it; then :class:`_ArrayUnpickler`.
    """
    p = Path(path)
    data = _read_bounded(p, dataset)
    try:
        for _ in pickletools.genops(io.BytesIO(data)):
            pass
        obj = _ArrayUnpickler(io.BytesIO(data), str(p)).load()
    except DataFileError:
        raise
    except Exception as exc:  # the unpickler and numpy raise many types for a damaged file
        raise DataFileError(p, f"truncated or not a pickle ({type(exc).__name__}: "
                            f"{str(exc)[:120]})", dataset) from None
    if not isinstance(obj, dict):
        raise DataFileError(p, f"holds a {type(obj).__name__}, not a CIFAR dict", dataset)
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar(root: Path, name: str) -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)``: ``(n, 32, 32, 3)`` uint8 images, int labels."""
    n_classes = 10 if name == "cifar10" else 100
    rels = list(REQUIRED_FILES[name])
    meta_rel = rels.pop()  # batches.meta / meta, last in REQUIRED_FILES
    meta, key = _read_cifar_pickle(root / meta_rel, name), ("label_names" if name == "cifar10"
                                                      else "fine_label_names")
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != n_classes:
        raise DataFileError(root / meta_rel, f"{key} must list {n_classes} class names", name)
    parts: dict[bool, list[tuple[np.ndarray, np.ndarray]]] = {True: [], False: []}
    for rel in rels:
        train = not rel.endswith("test_batch") and not rel.endswith("/test")
        parts[train].append(_cifar_batch(root / rel, n_classes, name))
    out = []
    for train in (True, False):
        xs, ys = zip(*parts[train], strict=True)
        out += [np.concatenate(xs), np.concatenate(ys)]
    return tuple(out)


def _cifar_batch(path: Path, n_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_cifar_pickle(path, name)
    label_key = "labels" if n_classes == 10 else "fine_labels"
    if "data" not in entry or label_key not in entry:
        raise DataFileError(path, f"has keys {sorted(map(str, entry))[:6]}, needs 'data' and "
                            f"{label_key!r}", name)
    data, labels = entry["data"], entry[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else \
            type(data).__name__
        raise DataFileError(path, f"'data' is {what}, not uint8 rows of 3072 pixels", name)
    y = _labels(path, labels, len(data), n_classes, name)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def _labels(path: Path, labels: object, n: int, n_classes: int, name: str,
            offset: int = 0) -> np.ndarray:
    """``labels`` as int64 in ``[0, n_classes)`` (after subtracting ``offset``), ``n`` of them."""
    if isinstance(labels, list) and not all(type(v) is int for v in labels):
        raise DataFileError(path, "labels must be integers", name)
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iuf" or len(y) != n:
        raise DataFileError(path, f"holds {n:,} images but {y.size:,} labels "
                            f"({y.dtype}, shape {y.shape})", name)
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        raise DataFileError(path, "labels are not whole numbers", name)
    y = y.astype(np.int64) - offset
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise DataFileError(path, f"label {int(y[bad][0]) + offset} is out of range "
                            f"{offset}..{n_classes - 1 + offset} ({int(bad.sum()):,} such)", name)
    return y


def _read_idx(path: Path, ndim: int, name: str) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (3: images, 1: labels)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
    kind = "images (magic 0x00000803)" if ndim == 3 else "labels (magic 0x00000801)"
    if len(head) < 4 or head[:4] != bytes([0, 0, 0x08, ndim]):
        raise DataFileError(path, f"magic number 0x{head[:4].hex():0>8} is not that of IDX "
                            f"{kind}", name)
    if len(head) < 4 + 4 * ndim:
        raise DataFileError(path, f"truncated: {size} bytes, shorter than its header", name)
    dims = struct.unpack(f">{ndim}i", head[4:])
    if ndim == 3 and dims[1:] != (28, 28):
        raise DataFileError(path, f"images are {dims[1]}x{dims[2]}, not 28x28", name)
    want = len(head) + int(np.prod(dims, dtype=np.int64))
    if min(dims) < 0 or size != want:
        raise DataFileError(path, f"is {size:,} bytes but its header declares {dims} "
                            f"({want:,} bytes): truncated or padded", name)
    if size > MAX_FILE_BYTES:
        raise DataFileError(path, f"is over the {MAX_FILE_BYTES:,}-byte limit", name)
    return np.fromfile(path, dtype=np.uint8, offset=len(head)).reshape(dims)


def _read_mnist(root: Path, name: str) -> tuple[np.ndarray, ...]:
    """MNIST / Fashion-MNIST from ``raw/`` only: ``processed/*.pt`` files are never read."""
    out = []
    for split in ("train", "t10k"):
        images_rel, labels_rel = (r for r in REQUIRED_FILES[name] if f"/{split}-" in r)
        x = _read_idx(root / images_rel, 3, name)
        labels = root / labels_rel
        out += [x, _labels(labels, _read_idx(labels, 1, name), len(x), 10, name)]
    return tuple(out)


def _read_svhn(root: Path) -> tuple[np.ndarray, ...]:
    """SVHN's ``(H, W, C, n)`` uint8 ``X`` and ``(n, 1)`` ``y`` (1..10, "10" being digit 0),
    after :func:`_check_svhn_mat` checked the declared sizes against the file."""
    from scipy.io import loadmat

    out = []
    for rel in REQUIRED_FILES["svhn"]:
        path = root / rel
        n = _check_svhn_mat(path)
        try:
            mat = loadmat(str(path), variable_names=["X", "y"])
        except Exception as exc:  # scipy raises many types for a damaged stream
            raise DataFileError(path, f"could not be parsed ({type(exc).__name__}: "
                                f"{str(exc)[:120]})", "svhn") from None
        x = np.asarray(mat["X"])
        if x.shape != (32, 32, 3, n) or x.dtype != np.uint8:
            raise DataFileError(path, f"X is {x.dtype} {x.shape}, not uint8 (32, 32, 3, {n})",
                                "svhn")
        y = _labels(path, np.asarray(mat["y"]).reshape(-1), n, 10, "svhn", offset=1)
        out += [x.transpose(3, 0, 1, 2), (y + 1) % 10]  # 1..9 -> 1..9, 10 -> 0
    return tuple(out)


def _check_svhn_mat(path: Path) -> int:
    """Check an SVHN ``.mat``'s variable headers (no data read); returns its image count."""
    shapes = mat_shapes(path)
    if "X" not in shapes or "y" not in shapes:
        raise DataFileError(path, f"holds variables {sorted(shapes)}, needs X and y", "svhn")
    (xdims, xbytes), (ydims, _) = shapes["X"], shapes["y"]
    if len(xdims) != 4 or xdims[:3] != (32, 32, 3) or xbytes != int(np.prod(xdims)):
        raise DataFileError(path, f"X is declared {xdims} with {xbytes:,} data bytes, not "
                            "(32, 32, 3, n) of uint8", "svhn")
    n = xdims[3]
    if sorted(ydims) != [1, n]:
        raise DataFileError(path, f"holds {n:,} images but y is declared {ydims}", "svhn")
    return n


#: MAT v5 data types: number -> item size in bytes (miINT8 .. miUINT64).
_MI_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8}


def mat_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], int]]:
    """Variable name -> ``(dims, data bytes)`` of a MATLAB 5 ``.mat`` file's numeric arrays,
    read from the element headers alone (at most 4 KiB decompressed per variable).

    Every element must fit in the file; a compressed one may not declare more than
    :data:`MAX_MAT_RATIO` times its compressed bytes or :data:`MAX_MAT_ARRAY_BYTES` in all.

    Raises:
        DataFileError: naming the file and the problem.
    """
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataFileError(path, f"is over the {MAX_FILE_BYTES:,}-byte limit", "svhn")
    with open(path, "rb") as f:
        head = f.read(128)
        order = {b"IM": "<", b"MI": ">"}.get(head[126:128])
        if len(head) < 128 or order is None:
            kind = " (MATLAB 7.3 / HDF5: save it with -v7)" if b"7.3" in head[:116] else ""
            raise DataFileError(path, f"not a MATLAB 5 .mat file{kind}", "svhn")
        out, pos = {}, 128
        while pos + 8 <= size:
            f.seek(pos)
            mi, nbytes = struct.unpack(order + "II", f.read(8))
            if pos + 8 + nbytes > size:
                raise DataFileError(path, f"an element at byte {pos:,} declares {nbytes:,} bytes, "
                                    f"past the end of the {size:,}-byte file: truncated", "svhn")
            if mi in (14, 15):
                body = f.read(min(nbytes, 1 << 16))
                if mi == 15:
                    body = zlib.decompressobj().decompress(body, 4096)
                name, dims, data_bytes, declared = _matrix_header(path, body, order, mi == 15)
                if declared > MAX_MAT_ARRAY_BYTES or (mi == 15 and declared > max(
                        MAX_MAT_RATIO * nbytes, 1 << 16)):
                    raise DataFileError(path, f"variable {name!r} declares {declared:,} bytes in "
                                        f"{nbytes:,} compressed bytes: a decompression bomb or "
                                        "a corrupt header", "svhn")
                out[name] = (dims, data_bytes)
            pos += 8 + nbytes + (0 if mi == 15 else -nbytes % 8)
    return out


def _matrix_header(path: Path, body: bytes, order: str, wrapped: bool
                   ) -> tuple[str, tuple[int, ...], int, int]:
    """``(name, dims, real-part data bytes, element bytes declared)`` of a miMATRIX element
    (``wrapped``: ``body`` starts with the matrix's own tag, as inside miCOMPRESSED)."""
    try:
        declared = len(body)
        if wrapped:
            mi, declared = struct.unpack_from(order + "II", body)
            if mi != 14:
                raise ValueError("compressed element is not a matrix")
            body = body[8:]
        subs, off = [], 0
        for _ in range(4):  # array flags, dimensions, name, real part (tag only)
            tag, off, data = _sub_element(body, off, order)
            subs.append((tag, data))
        (_, flags), (_, dims_raw), (_, name_raw), ((mi, nbytes), _) = subs
        mx_class = struct.unpack_from(order + "I", flags)[0] & 0xFF
        dims = struct.unpack(order + f"{len(dims_raw) // 4}i", dims_raw)
        if not 6 <= mx_class <= 15 or mi not in _MI_SIZES or min(dims) < 0:
            raise ValueError(f"class {mx_class}, data type {mi}: not a numeric array")
        if nbytes != int(np.prod(dims, dtype=np.int64)) * _MI_SIZES[mi]:
            raise ValueError(f"dims {dims} do not match {nbytes:,} data bytes")
        return name_raw.decode("latin1"), tuple(dims), nbytes, int(declared)
    except (struct.error, ValueError, zlib.error) as exc:
        raise DataFileError(path, f"malformed variable header ({exc})", "svhn") from None


def _sub_element(body: bytes, off: int, order: str) -> tuple[tuple[int, int], int, bytes]:
    """One MAT sub-element at ``off``: ``((type, nbytes), next offset, data)`` (data cut to what
    ``body`` holds; the small-element form packs up to 4 bytes into the tag)."""
    first, second = struct.unpack_from(order + "II", body, off)
    if first >> 16:  # small element: nbytes in the upper half, data in the second word
        n = first >> 16
        return (first & 0xFFFF, n), off + 8, body[off + 4: off + 4 + n]
    data = body[off + 8: off + 8 + second]
    return (first, second), off + 8 + second + (-second % 8), data


def _resolve(path: str | os.PathLike) -> Path:
    """``path`` with every symlink resolved; a symlink loop is a :class:`DataFileError`."""
    try:
        return Path(path).resolve(strict=True)
    except (RuntimeError, OSError) as exc:  # RuntimeError: Python < 3.13's symlink loop
        raise DataFileError(path, f"cannot be resolved ({type(exc).__name__}: {exc}): a symlink "
                            "loop or a dangling link", "notmnist") from None


def _letter_files(data_root: Path, folder: Path) -> list[Path]:
    """The image files under one notMNIST letter folder, symlinks resolved: any link that leaves
    the data root, or a directory loop, is refused."""
    root = data_root.resolve()
    start = _resolve(folder)
    if root not in (start, *start.parents):
        raise DataFileError(folder, f"links to {start}, outside the data root {root}",
                            "notmnist")
    files, stack, seen = [], [start], {start}
    while stack:
        for entry in sorted(os.scandir(stack.pop()), key=lambda e: e.name):
            real = _resolve(entry.path)
            if root not in real.parents:
                raise DataFileError(entry.path, f"links to {real}, outside the data root {root}",
                                    "notmnist")
            if real.is_dir():
                if real in seen or real in start.parents:
                    raise DataFileError(entry.path, f"is a directory loop (back to {real})",
                                        "notmnist")
                seen.add(real)
                stack.append(real)
            elif real.suffix.lower() in _IMAGE_EXTENSIONS:
                files.append(real)
            if len(files) > MAX_FOLDER_FILES:
                raise DataFileError(folder, f"holds over {MAX_FOLDER_FILES:,} images", "notmnist")
    return files


_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _read_png(path: Path) -> np.ndarray | None:
    """One grayscale 28x28 image; ``None`` for an unreadable file (notMNIST ships a few).

    Raises:
        DataFileError: for a file over :data:`MAX_PNG_BYTES` or an image over
            :data:`MAX_PNG_PIXELS` (checked from the header, before the pixels are decoded).
    """
    import warnings

    from PIL import Image

    if path.stat().st_size > MAX_PNG_BYTES:
        raise DataFileError(path, f"is over {MAX_PNG_BYTES:,} bytes (notMNIST images are ~1 KB)",
                            "notmnist")
    bomb = DataFileError(path, f"declares more than {MAX_PNG_PIXELS:,} pixels: a decompression "
                         "bomb or not a notMNIST image", "notmnist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise bomb from None
    except (OSError, SyntaxError, ValueError):
        return None
    with img:
        if img.width * img.height > MAX_PNG_PIXELS:
            raise bomb
        try:
            return np.asarray(img.convert("L").resize((28, 28)), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError):
            return None


def _read_notmnist(root: Path) -> tuple[np.ndarray, ...]:
    """notMNIST, letters A..J as classes 0..9, split by ``SPLIT_SEED``; every letter folder is a
    distinct folder inside the data root holding at least two readable images."""
    folders = {c: root / NOTMNIST_FOLDER / c for c in NOTMNIST_LETTERS}
    real = {}
    for c, folder in folders.items():
        r = _resolve(folder)
        if r in real.values():
            other = next(k for k, v in real.items() if v == r)
            raise DataFileError(folder, f"is the same folder as letter {other} ({r})", "notmnist")
        real[c] = r
    images, labels, seen = [], [], set()
    for label, (c, folder) in enumerate(folders.items()):
        files = _letter_files(root, folder)
        for f in files:
            if f in seen:
                raise DataFileError(f, "is reached twice through symlinks (it would count as two "
                                    "images)", "notmnist")
            seen.add(f)
        read = [img for img in map(_read_png, files) if img is not None]
        if len(read) < 2:
            raise DataFileError(folder, f"holds {len(read)} readable image(s) of letter {c}",
                                "notmnist")
        images += read
        labels += [label] * len(read)
    x, y = np.stack(images), np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test[rng.permutation(idx)[: int(round(NOTMNIST_TEST_FRACTION * len(idx)))]] = True
    return x[~test], y[~test], x[test], y[test]


def _to_rgb32(images: np.ndarray) -> np.ndarray:
    """``(n, H, W)`` or ``(n, H, W, 3)`` uint8 -> ``(n, 3 * 32 * 32)`` float32 in ``[0, 1]``."""
    import torch
    from torch.nn import functional as F

    x = torch.as_tensor(np.asarray(images), dtype=torch.float32) / 255.0
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return np.ascontiguousarray(x.reshape(len(x), -1).numpy(), dtype=np.float32)


#: dataset -> reader of ``(x_train, y_train, x_test, y_test)`` (uint8 images, int64 labels).
_READERS: dict[str, Callable[[Path], tuple[np.ndarray, ...]]] = {
    "cifar10": lambda root: _read_cifar(root, "cifar10"),
    "cifar100": lambda root: _read_cifar(root, "cifar100"),
    "mnist": lambda root: _read_mnist(root, "mnist"),
    "fashion_mnist": lambda root: _read_mnist(root, "fashion_mnist"),
    "svhn": _read_svhn,
    "notmnist": _read_notmnist,
}


def load_dataset(
    name: str, data_root: str | os.PathLike, verify: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One dataset as ``(x_train, y_train, x_test, y_test)``: float32 ``(n, 3072)``, int64 labels.

    Every file is checked before it costs memory (sizes, shapes, counts, label ranges, every
    class present in both splits; notMNIST's letter folders inside the data root); with
    ``verify`` each official file's md5 too.

    Raises:
        MissingDataError: when any of its files is missing (the message says what to put where).
        DataFileError: naming the first malformed file and what is wrong with it.
        ValueError: (``verify``) naming a file whose md5 is not the official one's.
    """
    if name not in REQUIRED_FILES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(REQUIRED_FILES)}")
    root = Path(data_root)
    check_files(root, (name,))
    if verify:
        _check_md5(root, list(REQUIRED_FILES[name]), name)
    x_tr, y_tr, x_te, y_te = _READERS[name](root)
    n_classes = 100 if name == "cifar100" else 10
    for split, y in (("training", y_tr), ("test", y_te)):
        absent = np.flatnonzero(np.bincount(y, minlength=n_classes) == 0)
        if len(absent):
            raise DataFileError(root / REQUIRED_FILES[name][0].rstrip("/"),
                                f"{name} has no {split} example of class {int(absent[0])} "
                                f"({len(absent)} class(es) without one)", name)
    return (
        _to_rgb32(x_tr),
        np.asarray(y_tr, dtype=np.int64),
        _to_rgb32(x_te),
        np.asarray(y_te, dtype=np.int64),
    )


def _subsample(
    x: np.ndarray, y: np.ndarray, n: int | None, tag: int
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified, seeded subset of at most ``n`` examples (all of them for ``None``)."""
    if n is None or n >= len(y):
        return x, y
    rng = np.random.default_rng([SPLIT_SEED, tag])
    keep = np.sort(rng.permutation(len(y))[:n])
    return np.ascontiguousarray(x[keep]), y[keep]


# ----------------------------------------------------------------------------- benchmarks


def split_cifar100(
    data_root: str | os.PathLike,
    n_tasks: int = 10,
    class_order_seed: int | None = None,
    max_train: int | None = None,
    verify: bool = True,
) -> list[Task]:
    """Split-CIFAR-100: 100 classes in ``n_tasks`` disjoint tasks of ``100 // n_tasks`` classes.

    Args:
        data_root: Folder holding ``cifar-100-python/``.
        n_tasks: Number of tasks (10 by default: ten tasks of ten classes).
        class_order_seed: ``None`` keeps classes in index order (task 0 = classes 0..9); a seed
            draws a fixed permutation of the classes first.
        max_train: Keep at most this many training examples per task (a seeded subset), for
            small runs; ``None`` keeps all 500 per class.
        verify: Keep torchvision's md5 checks.
    """
    if n_tasks < 1 or 100 % n_tasks or 100 // n_tasks < 2:
        raise ValueError(
            f"split_cifar100: n_tasks={n_tasks} must divide 100 into tasks of >= 2 classes"
        )
    x_tr, y_tr, x_te, y_te = load_dataset("cifar100", data_root, verify)
    order = (
        np.arange(100)
        if class_order_seed is None
        else np.random.default_rng(class_order_seed).permutation(100)
    )
    per = 100 // n_tasks
    tasks = []
    for t in range(n_tasks):
        classes = order[t * per : (t + 1) * per]
        local = np.full(100, -1, dtype=np.int64)
        local[classes] = np.arange(per)
        tr, te = np.isin(y_tr, classes), np.isin(y_te, classes)
        a, b = _subsample(x_tr[tr], local[y_tr[tr]], max_train, t)
        tasks.append(
            Task(
                t,
                f"cifar100[{t * per}:{(t + 1) * per}]",
                a,
                b,
                np.ascontiguousarray(x_te[te]),
                local[y_te[te]],
                per,
            )
        )
    return tasks


def five_datasets(
    data_root: str | os.PathLike,
    n_tasks: int = 5,
    max_train: int | None = None,
    verify: bool = True,
) -> list[Task]:
    """5-Datasets: CIFAR-10, MNIST, SVHN, notMNIST, Fashion-MNIST, one 10-class task each.

    Every dataset's files are checked before any is read, so a missing file anywhere is reported
    in one message with all the others.

    Args:
        data_root: Folder with the layout of the module docstring.
        n_tasks: The first ``n_tasks`` datasets of :data:`FIVE_DATASETS` (5 by default).
        max_train: Keep at most this many training examples per task (seeded, for small runs).
        verify: Keep torchvision's md5 checks.
    """
    if not 1 <= n_tasks <= len(FIVE_DATASETS):
        raise ValueError(f"five_datasets: n_tasks={n_tasks} must be in 1..{len(FIVE_DATASETS)}")
    names = FIVE_DATASETS[:n_tasks]
    check_files(data_root, names)
    tasks = []
    for t, name in enumerate(names):
        x_tr, y_tr, x_te, y_te = load_dataset(name, data_root, verify)
        x_tr, y_tr = _subsample(x_tr, y_tr, max_train, t)
        tasks.append(Task(t, name, x_tr, y_tr, x_te, y_te, 10))
    return tasks


#: Paper-scale task families: name -> ``f(data_root, n_tasks, **options) -> list[Task]``.
PAPER_FAMILIES: dict[str, Callable[..., list[Task]]] = {
    "split_cifar100": split_cifar100,
    "five_datasets": five_datasets,
}
