"""Embedded, offline task data: scikit-learn's bundled handwritten digits and transforms of it.

Nothing here touches the network: ``sklearn.datasets.load_digits`` reads a CSV that ships inside
scikit-learn (1,797 images of 8x8 pixels, intensities 0..16). Every split and transform is a
deterministic function of fixed seeds, so two machines build the same tasks bit for bit.

Families (:data:`TASK_FAMILIES`): ``split_digits`` (class splits), ``permuted_digits`` (pixel
permutations, one label space) and ``five_domains`` (five visibly different transforms of all ten
classes: a heterogeneous stand-in for 5-Datasets). The MNIST-1D families (``split_mnist1d``,
``mnist1d_domains``), generated offline from a seed, live in :mod:`nsr_gym.data_mnist1d`;
:func:`make_tasks` builds every family by name. Paper-scale data read from files lives in
:mod:`nsr_gym.paper_data`.

A :class:`Task` holds float32 inputs (digits: ``(n, 64)`` scaled to ``[0, 1]``; MNIST-1D:
``(n, 40)`` standardised signals) and int64 labels local to the task (``0 .. n_classes - 1``),
as in task-incremental learning: the task's head maps features to its own classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: Seed of the fixed stratified train/test split. Part of the benchmark's definition, not of a run.
SPLIT_SEED = 20260629
#: Fraction of each class held out for evaluation.
TEST_FRACTION = 0.3


@dataclass(frozen=True)
class Task:
    """One task of a benchmark.

    Attributes:
        task_id: Index of the task in its benchmark, ``0 .. M - 1``.
        name: Human-readable name, e.g. ``"digits{0,1}"``.
        x_train: ``(n_train, input_dim)`` float32 inputs (64 pixels in ``[0, 1]`` for the
            digits, 40 standardised samples for MNIST-1D).
        y_train: ``(n_train,)`` int64 labels in ``0 .. n_classes - 1``.
        x_test: ``(n_test, 64)`` float32 held-out inputs.
        y_test: ``(n_test,)`` int64 held-out labels.
        n_classes: Number of classes of this task's head.
    """

    task_id: int
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])


@lru_cache(maxsize=1)
def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, y_train, x_test, y_test)`` of all ten digit classes.

    The split is stratified: each class keeps ``TEST_FRACTION`` of its images for testing,
    chosen by a permutation drawn from ``SPLIT_SEED``. Inputs are float32 in ``[0, 1]``.
    Cached: the arrays are shared, so callers must not modify them in place.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for label in range(10):
        idx = np.flatnonzero(y == label)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(TEST_FRACTION * len(idx)))
        test_idx.append(np.sort(idx[:n_test]))
        train_idx.append(np.sort(idx[n_test:]))
    tr = np.concatenate(train_idx)
    te = np.concatenate(test_idx)
    return x[tr], y[tr], x[te], y[te]


def _subset(x: np.ndarray, y: np.ndarray,
            classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    mask = np.isin(y, classes)
    lookup = {c: i for i, c in enumerate(classes)}
    local = np.array([lookup[int(c)] for c in y[mask]], dtype=np.int64)
    return np.ascontiguousarray(x[mask]), local


def split_digits(n_tasks: int = 5) -> list[Task]:
    """Split-Digits: ten digit classes in ``n_tasks`` disjoint tasks of ``10 // n_tasks`` classes.

    The default gives five binary tasks ``{0,1}, {2,3}, {4,5}, {6,7}, {8,9}``.

    Raises:
        ValueError: if ``n_tasks`` does not divide 10 into tasks of at least two classes.
    """
    if n_tasks not in (1, 2, 5):
        raise ValueError(
            f"split_digits: n_tasks={n_tasks} must split 10 classes evenly into tasks of at "
            "least two classes; use 1, 2 or 5 (for more tasks use permuted_digits)."
        )
    return class_split_tasks(*load_digits_split(), n_tasks, "digits")


def class_split_tasks(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
                      n_tasks: int, prefix: str) -> list[Task]:
    """Ten classes in ``n_tasks`` disjoint tasks of ``10 // n_tasks`` consecutive classes each,
    named ``prefix{0,1}`` and so on; labels are remapped to ``0..per-1`` within a task."""
    per = 10 // n_tasks
    tasks = []
    for t in range(n_tasks):
        classes = tuple(range(t * per, (t + 1) * per))
        a, b = _subset(x_tr, y_tr, classes)
        c, d = _subset(x_te, y_te, classes)
        name = prefix + "{" + ",".join(map(str, classes)) + "}"
        tasks.append(Task(t, name, a, b, c, d, per))
    return tasks


def permuted_digits(n_tasks: int = 5, seed: int = 0) -> list[Task]:
    """PermutedDigits: all ten classes, each task a fixed pixel permutation (task 0: identity).

    A domain-incremental stream with one label space; permutation ``t`` is drawn from
    ``(seed, t)``, so tasks are reproducible and as many as a scaling study needs.
    """
    if n_tasks < 1:
        raise ValueError(f"permuted_digits: n_tasks={n_tasks} must be >= 1.")
    x_tr, y_tr, x_te, y_te = load_digits_split()
    tasks = []
    for t in range(n_tasks):
        perm = np.arange(64) if t == 0 else np.random.default_rng([seed, t]).permutation(64)
        tasks.append(
            Task(
                t,
                f"permuted{t}",
                np.ascontiguousarray(x_tr[:, perm]),
                y_tr.copy(),
                np.ascontiguousarray(x_te[:, perm]),
                y_te.copy(),
                10,
            )
        )
    return tasks


# ----------------------------------------------------------------------------- five domains


def _images(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, 8, 8)


def _invert(x: np.ndarray) -> np.ndarray:
    """Inverted intensities: a white background and dark strokes."""
    return 1.0 - x


def _rotate(x: np.ndarray) -> np.ndarray:
    """Each image rotated by 90 degrees counter-clockwise."""
    return np.rot90(_images(x), 1, axes=(1, 2)).reshape(-1, 64)


def _permute(x: np.ndarray) -> np.ndarray:
    """One fixed pixel permutation (drawn from ``(SPLIT_SEED, 5)``): no spatial structure left."""
    return x[:, np.random.default_rng([SPLIT_SEED, 5]).permutation(64)]


def _shift_blur(x: np.ndarray) -> np.ndarray:
    """Upsampled x2 (nearest), shifted by 3 fine pixels (wrapping), averaged back down to 8x8:
    a digit moved down-right by 1.5 pixels and blurred."""
    up = np.repeat(np.repeat(_images(x), 2, axis=1), 2, axis=2)
    up = np.roll(up, (3, 3), axis=(1, 2))
    return up.reshape(-1, 8, 2, 8, 2).mean(axis=(2, 4)).reshape(-1, 64)


#: The domains of :func:`five_domains`, in stream order: name -> transform of ``(n, 64)`` inputs.
DOMAINS = {
    "digits": lambda x: x,
    "inverted": _invert,
    "rotated": _rotate,
    "permuted": _permute,
    "shifted_blurred": _shift_blur,
}


def five_domains(n_tasks: int = 5) -> list[Task]:
    """FiveDomains: a heterogeneous stand-in for 5-Datasets, built offline from the digits.

    Five visibly different domains of all ten classes, each a task with its own 10-way head,
    all 64-d so one backbone serves them: the original digits, inverted intensities, a 90 degree
    rotation, a fixed pixel permutation, and a shifted-and-blurred copy (``DOMAINS``). Every
    transform is deterministic; train and test images go through the same one.

    Raises:
        ValueError: unless ``n_tasks == 5`` (the first ``n`` domains with ``1 <= n <= 5`` are
            also accepted, for small tests).
    """
    if not 1 <= n_tasks <= len(DOMAINS):
        raise ValueError(f"five_domains: n_tasks={n_tasks} must be in 1..{len(DOMAINS)}; "
                         "for more tasks use permuted_digits.")
    x_tr, y_tr, x_te, y_te = load_digits_split()
    tasks = []
    for t, (name, transform) in enumerate(list(DOMAINS.items())[:n_tasks]):
        tasks.append(Task(t, name,
                          np.ascontiguousarray(transform(x_tr), dtype=np.float32), y_tr.copy(),
                          np.ascontiguousarray(transform(x_te), dtype=np.float32), y_te.copy(),
                          10))
    return tasks


#: The digits task families by name, each ``f(n_tasks) -> list[Task]``; :func:`task_families`
#: adds MNIST-1D's.
TASK_FAMILIES = {"split_digits": split_digits, "permuted_digits": permuted_digits,
                 "five_domains": five_domains}


def task_families() -> dict[str, Callable[[int], list[Task]]]:
    """Every embedded task family by name: :data:`TASK_FAMILIES` and
    :data:`nsr_gym.data_mnist1d.MNIST1D_FAMILIES` (imported here, since it builds on
    :class:`Task`)."""
    from nsr_gym.data_mnist1d import MNIST1D_FAMILIES

    return {**TASK_FAMILIES, **MNIST1D_FAMILIES}


def make_tasks(family: str, n_tasks: int) -> list[Task]:
    """Build the tasks of a named family; a clear error names the known families."""
    families = task_families()
    try:
        builder = families[family]
    except KeyError:
        raise ValueError(
            f"unknown task family {family!r}; choose one of {sorted(families)}"
        ) from None
    return builder(n_tasks)
