"""Paper-scale envs: Split-CIFAR-100 and 5-Datasets on a pretrained torchvision backbone.

Registered like the offline benchmarks (``nsr_gym/SplitCIFAR100-v0``, ``nsr_gym/FiveDatasets-v0``)
but built from local files the user provides, since nothing is downloaded at run time::

    env = gym.make("nsr_gym/SplitCIFAR100-v0", data_root="~/data",
                   weights="~/weights/vit_b_16-c867db91.pth")

Missing files raise one :class:`~nsr_gym.paper_data.MissingDataError` naming every file and
where it goes. The learner is ``make_learner("pretrained", ...)``'s
(:func:`~nsr_gym.learners.pretrained.make_paper_learner`: ViT-B/16 with LoRA on q and v of every
block, or ResNet-18 with LoRA on ``layer4``), and the env is the same
:class:`~nsr_gym.envs.allocation.AllocationEnv` as every other benchmark's.
"""

from __future__ import annotations

import os
from typing import Any

from nsr_gym.envs.allocation import AllocationEnv
from nsr_gym.learners import make_learner

#: Registered paper-scale benchmarks: id suffix -> arguments of :func:`make_paper_env`.
PAPER_BENCHMARKS: dict[str, dict[str, Any]] = {
    # Cyclic Split-CIFAR-100 (the paper's 10x faster recovery): 10 tasks of 10 classes.
    "SplitCIFAR100": dict(benchmark="split_cifar100", schedule="cyclic", phase_length=30,
                          n_cycles=4),
    # 5-Datasets (CIFAR-10, MNIST, SVHN, notMNIST, Fashion-MNIST): each once, then revisits.
    "FiveDatasets": dict(benchmark="five_datasets", schedule="revisit", phase_length=30,
                         n_cycles=4, updates_per_step=2),
}


def make_paper_env(
    benchmark: str,
    data_root: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    arch: str = "vit_b_16",
    n_tasks: int | None = None,
    max_train: int | None = None,
    verify: bool = True,
    learner: dict[str, Any] | None = None,
    **env_kwargs: Any,
) -> AllocationEnv:
    """An :class:`AllocationEnv` over a paper-scale benchmark read from ``data_root``.

    Args:
        benchmark: ``"split_cifar100"`` or ``"five_datasets"``.
        data_root: Folder with the datasets' files (README, "Paper scale", lists them).
        weights: torchvision's state dict of ``arch`` (``None`` only with
            ``learner={"random_init": True}``: a random backbone, for speed and memory runs).
        arch: ``"vit_b_16"`` or ``"resnet18"``.
        n_tasks: Tasks of the benchmark (its default when ``None``).
        max_train: Training examples kept per task (a seeded subset), for small runs.
        verify: Keep torchvision's md5 checks of the data files.
        learner: Fields of :class:`~nsr_gym.learners.pretrained.PretrainedConfig`.
        **env_kwargs: Further :class:`AllocationEnv` arguments (schedule, phase_length, ...).

    Raises:
        ValueError: without ``data_root``.
        MissingDataError: one message naming every missing data file and the weights.
    """
    if data_root is None:
        raise ValueError(
            f"{benchmark} reads local files: pass data_root='<folder with the datasets>' and "
            "weights='<torchvision state dict>' to gym.make (see the README, 'Paper scale')")
    model = make_learner("pretrained", {"arch": arch, **(learner or {})}, benchmark, n_tasks,
                         data_root=os.path.expanduser(data_root),
                         weights=None if weights is None else os.path.expanduser(weights),
                         max_train=max_train, verify=verify)
    return AllocationEnv(learner=model, n_tasks=model.n_tasks, **env_kwargs)
