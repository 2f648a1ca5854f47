"""Paper-scale task data: Split-CIFAR-100 and 5-Datasets, read from files under a ``data_root``.

Everything goes through torchvision's own dataset classes (``CIFAR10``, ``CIFAR100``, ``MNIST``,
``FashionMNIST``, ``SVHN``, ``ImageFolder``) with ``download=False``: nothing is fetched at run
time. Before torchvision is called, :func:`check_files` looks for every file a benchmark needs and
raises one :class:`MissingDataError` that lists all missing files, where each must go, and the
archive it comes from (:data:`SOURCES`).

On-disk layout under ``data_root`` (the layouts torchvision and the archives use)::

    cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}     CIFAR-10 (python version)
    cifar-100-python/{train, test, meta}                                 CIFAR-100 (python version)
    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte               MNIST (IDX, un-gzipped)
    FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte        Fashion-MNIST (IDX)
    train_32x32.mat, test_32x32.mat                                      SVHN (format 2, .mat)
    notMNIST_small/{A..J}/*.png                                          notMNIST, letter per folder

Every image becomes float32 ``(3, 32, 32)`` in ``[0, 1]``, flattened to a ``(3072,)`` row so a
:class:`nsr_gym.data.Task` keeps its ``(n, d)`` contract; grayscale 28x28 images (MNIST,
Fashion-MNIST, notMNIST) are resized bilinearly to 32x32 and repeated over three channels, as is
usual for 5-Datasets. notMNIST has no official split: a stratified ``NOTMNIST_TEST_FRACTION`` of
each letter is held out with the digits' ``SPLIT_SEED``; its few unreadable PNGs are skipped.

``verify=True`` (the default) keeps torchvision's md5 checks of the CIFAR and SVHN files;
``verify=False`` checks that the files exist and parses them with the same code, which is what
the tests do with the tiny files they write in these formats.
"""

from __future__ import annotations

import os
import pickle
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


# ----------------------------------------------------------------------------- torchvision readers


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

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise MissingDataError(
            f"refusing to unpickle {module}.{name} from a CIFAR file: CIFAR batches hold only "
            "arrays and lists, so this file is not a CIFAR batch; replace it with the original")


def _read_cifar_pickle(path: str) -> dict:
    with open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding="latin1").load()


def _torchvision_classes(verify: bool) -> dict[str, type]:
    """torchvision's dataset classes, with CIFAR's pickles read by :class:`_ArrayUnpickler`.

    With ``verify=False`` their md5 checks become existence checks (the parsing is unchanged).
    """
    from torchvision import datasets as tvd
    from torchvision.datasets.vision import VisionDataset

    class CIFAR10(tvd.CIFAR10):
        def __init__(self, root: str, train: bool = True, transform=None, target_transform=None,
                     download: bool = False) -> None:
            # torchvision's __init__, with the safe unpickler in place of pickle.load.
            VisionDataset.__init__(self, root, transform=transform,
                                   target_transform=target_transform)
            self.train = train
            if not self._check_integrity():
                raise RuntimeError("Dataset not found or corrupted.")
            files = self.train_list if train else self.test_list
            data, targets = [], []
            for name, _ in files:
                entry = _read_cifar_pickle(os.path.join(self.root, self.base_folder, name))
                data.append(entry["data"])
                targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
            self.targets = targets
            self._load_meta()

        if not verify:
            def _check_integrity(self) -> bool:
                return all(
                    os.path.isfile(os.path.join(self.root, self.base_folder, f))
                    for f, _ in self.train_list + self.test_list
                )

        def _load_meta(self) -> None:  # torchvision's, minus the md5, with the safe unpickler
            meta = os.path.join(self.root, self.base_folder, self.meta["filename"])
            data = _read_cifar_pickle(meta)
            self.classes = data[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    class CIFAR100(CIFAR10):
        base_folder = tvd.CIFAR100.base_folder
        url, filename, tgz_md5 = tvd.CIFAR100.url, tvd.CIFAR100.filename, tvd.CIFAR100.tgz_md5
        train_list, test_list = tvd.CIFAR100.train_list, tvd.CIFAR100.test_list
        meta = tvd.CIFAR100.meta

    svhn = tvd.SVHN
    if not verify:
        class SVHN(tvd.SVHN):
            def _check_integrity(self) -> bool:
                return os.path.isfile(os.path.join(self.root, self.filename))
        svhn = SVHN

    return {"cifar10": CIFAR10, "cifar100": CIFAR100, "mnist": tvd.MNIST,
            "fashion_mnist": tvd.FashionMNIST, "svhn": svhn}


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


def _read_torchvision(name: str, root: Path, verify: bool) -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)`` of one torchvision dataset, raw uint8 images."""
    cls = _torchvision_classes(verify)[name]
    try:
        return _read_with(cls, name, root)
    except RuntimeError as err:  # torchvision's "not found or corrupted": here, a bad md5
        source = SOURCES[name].replace("DATA_ROOT", str(root))
        raise ValueError(
            f"{name} under {root}: the files exist but failed torchvision's checksum ({err}). "
            f"They are not the official files: re-extract them ({source}), or pass "
            "verify=False to read them as they are."
        ) from None


def _read_with(cls: type, name: str, root: Path) -> tuple[np.ndarray, ...]:
    if name == "svhn":
        tr, te = (
            cls(str(root), split="train", download=False),
            cls(str(root), split="test", download=False),
        )
        # torchvision keeps SVHN as (n, 3, 32, 32); the others as (n, H, W[, 3]).
        return (
            tr.data.transpose(0, 2, 3, 1),
            np.asarray(tr.labels),
            te.data.transpose(0, 2, 3, 1),
            np.asarray(te.labels),
        )
    tr, te = cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    return (
        np.asarray(tr.data),
        np.asarray(tr.targets),
        np.asarray(te.data),
        np.asarray(te.targets),
    )


def _read_notmnist(root: Path) -> tuple[np.ndarray, ...]:
    """notMNIST through ``ImageFolder`` (letters A..J as classes 0..9), split by ``SPLIT_SEED``."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root / NOTMNIST_FOLDER), allow_empty=True)
    if tuple(folder.classes[:10]) != NOTMNIST_LETTERS:
        raise MissingDataError(
            f"{root / NOTMNIST_FOLDER} must hold the letter folders "
            f"{', '.join(NOTMNIST_LETTERS)}; found {folder.classes}"
        )
    images, labels = [], []
    for path, label in folder.samples:
        if label >= 10:
            continue
        try:
            img = folder.loader(path).convert("L")
        except OSError:  # notMNIST_small ships a couple of unreadable PNGs
            continue
        images.append(np.asarray(img.resize((28, 28)), dtype=np.uint8))
        labels.append(label)
    x, y = np.stack(images), np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test[rng.permutation(idx)[: int(round(NOTMNIST_TEST_FRACTION * len(idx)))]] = True
    return x[~test], y[~test], x[test], y[test]


def load_dataset(
    name: str, data_root: str | os.PathLike, verify: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One dataset as ``(x_train, y_train, x_test, y_test)``: float32 ``(n, 3072)``, int64 labels.

    Raises:
        MissingDataError: when any of its files is missing (the message says what to put where).
    """
    if name not in REQUIRED_FILES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(REQUIRED_FILES)}")
    root = Path(data_root)
    check_files(root, (name,))
    raw = _read_notmnist(root) if name == "notmnist" else _read_torchvision(name, root, verify)
    x_tr, y_tr, x_te, y_te = raw
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
