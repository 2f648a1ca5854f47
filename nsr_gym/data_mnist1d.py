"""MNIST-1D task data, generated offline: class splits, signal domains, and the pretraining sample.

MNIST-1D (Greydanus, "Scaling down deep learning", 2020) draws 40-sample 1D signals of ten
classes from ten built-in templates (padding, scaling, translation, correlated and white noise,
shear, subsampling). ``mnist1d.data.make_dataset(args)`` generates it from a seed, with no file
and no network; this module never calls the package's ``get_dataset``, which downloads.

Two samples, drawn with different seeds, never meet:

* the **task sample** (:data:`TASK_SEED`, :data:`TASK_SAMPLES`): the package's default
  arguments, i.e. the canonical MNIST-1D sample (seed 42, 5000 signals, its own 80/20
  train/test split: 4000 and 1000). Every continual-learning task here is built from it;
* the **pretraining sample** (:data:`PRETRAIN_SEED`, :data:`PRETRAIN_SAMPLES`): what
  ``nsr-gym pretrain`` trains the shipped backbone on (:func:`pretrain_split`), disjoint from
  every task's train and test data (``tests/test_pretrain.py`` checks it).

Families (:data:`MNIST1D_FAMILIES`, reached through :func:`nsr_gym.data.make_tasks`):
``split_mnist1d`` (five binary class splits, as ``split_digits``) and ``mnist1d_domains`` (all
ten classes under five deterministic transforms of the signal, as ``five_domains``). A task's
inputs are ``(n, 40)`` float32 signals, standardised over the whole sample (mean 0, std 1).

``make_dataset`` seeds numpy's and Python's global generators; :func:`generate` saves and
restores both, so building tasks leaves the caller's random state as it was.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from nsr_gym.data import Task, class_split_tasks

#: Signal length of every MNIST-1D input (``args.final_seq_length``).
SIGNAL_LENGTH = 40
#: Seed and size of the task sample: MNIST-1D's defaults, the canonical sample.
TASK_SEED = 42
TASK_SAMPLES = 5000
#: Seed and size of the pretraining sample (another seed: no signal in common with the tasks).
PRETRAIN_SEED = 20260716
PRETRAIN_SAMPLES = 20000


@lru_cache(maxsize=4)
def generate(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` of one MNIST-1D sample, generated offline.

    ``mnist1d.data.make_dataset`` with the package's default arguments but ``seed`` and
    ``num_samples`` (``num_samples // 10`` signals per class; the package's 80/20 split).
    Inputs are float32 ``(n, 40)``, labels int64 ``0..9``. Cached: the arrays are shared, so
    callers must not modify them in place. Takes ~1 s per 5000 signals.

    Raises:
        ValueError: for fewer than 20 samples (two per class, one train and one test at least).
    """
    if num_samples < 20:
        raise ValueError(f"MNIST-1D: num_samples={num_samples} must be >= 20")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed, args.num_samples = int(seed), int(num_samples)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:  # make_dataset seeds the global generators: give the caller its own back
        np.random.set_state(np_state)
        random.setstate(py_state)
    return (data["x"].astype(np.float32), data["y"].astype(np.int64),
            data["x_test"].astype(np.float32), data["y_test"].astype(np.int64))


def load_mnist1d_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The task sample's ``(x_train, y_train, x_test, y_test)``: 4000 + 1000 signals."""
    return generate(TASK_SEED, TASK_SAMPLES)


def pretrain_split(num_samples: int = PRETRAIN_SAMPLES
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pretraining sample's ``(x_train, y_train, x_val, y_val)`` (seed :data:`PRETRAIN_SEED`),
    which no task uses; ``num_samples`` smaller than the default for quick tests."""
    return generate(PRETRAIN_SEED, num_samples)


def split_mnist1d(n_tasks: int = 5) -> list[Task]:
    """Split-MNIST-1D: ten classes in ``n_tasks`` disjoint tasks of ``10 // n_tasks`` classes.

    The default gives five binary tasks ``{0,1}, {2,3}, {4,5}, {6,7}, {8,9}`` (about 800
    training and 200 test signals each), labels local to the task.

    Raises:
        ValueError: if ``n_tasks`` does not divide 10 into tasks of at least two classes.
    """
    if n_tasks not in (1, 2, 5):
        raise ValueError(f"split_mnist1d: n_tasks={n_tasks} must split 10 classes evenly into "
                         "tasks of at least two classes; use 1, 2 or 5.")
    return class_split_tasks(*load_mnist1d_split(), n_tasks, "mnist1d")


# ----------------------------------------------------------------------------- domains


def _reverse(x: np.ndarray) -> np.ndarray:
    """Time reversal: the signal read right to left."""
    return x[:, ::-1]


def _negate(x: np.ndarray) -> np.ndarray:
    """Sign flip: peaks become troughs."""
    return -x


def _permute(x: np.ndarray) -> np.ndarray:
    """One fixed permutation of the 40 positions (drawn from ``(TASK_SEED, 3)``)."""
    return x[:, np.random.default_rng([TASK_SEED, 3]).permutation(SIGNAL_LENGTH)]


def _difference(x: np.ndarray) -> np.ndarray:
    """First difference ``x[t] - x[t - 1]`` (``x[-1] = x[0]``), scaled by 3 to a unit-like
    spread: the signal's slope instead of its level."""
    return 3.0 * np.diff(x, axis=1, prepend=x[:, :1])


#: The domains of :func:`mnist1d_domains`, in stream order: name -> transform of ``(n, 40)``
#: signals. No circular shift or scaling: the generator already translates (by up to two thirds
#: of the signal, wrapping) and scales (by up to 20%) every signal, so those domains would be the
#: original one.
MNIST1D_DOMAINS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mnist1d": lambda x: x,
    "reversed": _reverse,
    "negated": _negate,
    "permuted": _permute,
    "differenced": _difference,
}


def mnist1d_domains(n_tasks: int = 5) -> list[Task]:
    """MNIST-1D-Domains: all ten classes under five deterministic transforms of the signal.

    Each domain (:data:`MNIST1D_DOMAINS`: the original, time-reversed, negated, position-permuted
    and differenced signals) is a task with its own 10-way head; train and test signals go
    through the same transform.

    Raises:
        ValueError: unless ``1 <= n_tasks <= 5`` (the first ``n_tasks`` domains).
    """
    if not 1 <= n_tasks <= len(MNIST1D_DOMAINS):
        raise ValueError(f"mnist1d_domains: n_tasks={n_tasks} must be in "
                         f"1..{len(MNIST1D_DOMAINS)}")
    x_tr, y_tr, x_te, y_te = load_mnist1d_split()
    return [Task(t, name,
                 np.ascontiguousarray(transform(x_tr), dtype=np.float32), y_tr.copy(),
                 np.ascontiguousarray(transform(x_te), dtype=np.float32), y_te.copy(), 10)
            for t, (name, transform) in enumerate(list(MNIST1D_DOMAINS.items())[:n_tasks])]


#: MNIST-1D task families by name, each ``f(n_tasks) -> list[Task]``.
MNIST1D_FAMILIES: dict[str, Callable[[int], list[Task]]] = {
    "split_mnist1d": split_mnist1d, "mnist1d_domains": mnist1d_domains}
