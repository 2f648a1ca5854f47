"""The one place a :class:`~nsr_gym.learners.base.Learner` is built from a backend name and options.

:func:`make_learner` checks the options against their config's fields (names, then the rule
each field carries, :mod:`nsr_gym.learners.config`), then builds the learner: ``"torch"`` and
``"analytic"`` on an embedded task family (:mod:`nsr_gym.data`), ``"pretrained"`` on a
paper-scale benchmark read from local files (:mod:`nsr_gym.learners.pretrained`). The envs call
it; so can a study that wants a learner without an env.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from nsr_gym.data import make_tasks
from nsr_gym.learners.analytic import AnalyticConfig, AnalyticLearner
from nsr_gym.learners.base import Learner
from nsr_gym.learners.config import field_rules, option_problems
from nsr_gym.learners.torch_learner import BACKBONE_OPTIONS, TorchLearner, TorchLearnerConfig

__all__ = ["BACKENDS", "LEARNER_BACKENDS", "LEARNER_CONFIGS", "check_learner_options",
           "learner_rules", "make_learner"]

#: Backends of the offline benchmarks' ``backend=`` argument.
BACKENDS = ("torch", "analytic")
#: Every backend :func:`make_learner` builds.
LEARNER_BACKENDS = (*BACKENDS, "pretrained")
#: Config class of each offline backend (the fields its ``learner={...}`` options name).
LEARNER_CONFIGS: dict[str, type] = {"torch": TorchLearnerConfig, "analytic": AnalyticConfig}


def check_learner_options(backend: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``learner={...}`` options of ``backend`` ("torch" or "analytic"), checked, as config
    keyword arguments (lists become tuples).

    A backbone variant's network options (``BACKBONE_OPTIONS``) are dropped for the analytic
    model, so a registered variant runs on both backends.

    Raises:
        ValueError: naming every unknown option (and which belong to the torch backend only),
            or every value that breaks its field's rule.
    """
    config_cls = LEARNER_CONFIGS[backend]
    if backend != "torch":  # a backbone variant's network options do not apply to the model
        options = {k: v for k, v in options.items() if k not in BACKBONE_OPTIONS}
    known = set(config_cls.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    torch_only = [k for k in unknown if k in TorchLearnerConfig.__dataclass_fields__]
    if torch_only:
        raise ValueError(f"learner option(s) {torch_only} belong to the torch backend (the "
                         f"{backend} model has no such part); drop them or use "
                         "backend='torch'")
    if unknown:
        raise ValueError(f"unknown {backend} learner option(s) {unknown}; known: {sorted(known)}")
    problems = option_problems(config_cls, options)
    if problems:
        raise ValueError(f"invalid {backend} learner options: " + "; ".join(problems))
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def make_learner(backend: str, options: Mapping[str, Any] | None = None,
                 tasks: str = "split_digits", n_tasks: int | None = None, *,
                 data_root: str | os.PathLike | None = None,
                 weights: str | os.PathLike | None = None, max_train: int | None = None,
                 verify: bool = True) -> Learner:
    """A learner of ``backend`` over ``n_tasks`` tasks of family or benchmark ``tasks``.

    Args:
        backend: ``"torch"`` (:class:`TorchLearner`), ``"analytic"`` (:class:`AnalyticLearner`)
            or ``"pretrained"`` (:func:`~nsr_gym.learners.pretrained.make_paper_learner`).
        options: Fields of the backend's config (``TorchLearnerConfig``, ``AnalyticConfig`` or
            ``PretrainedConfig``; for ``"pretrained"``, ``arch`` too).
        tasks: An embedded task family (:func:`nsr_gym.data.make_tasks`), or for
            ``"pretrained"`` a paper-scale benchmark (``"split_cifar100"``, ``"five_datasets"``).
        n_tasks: ``M``; ``None`` is 5 for an embedded family, the benchmark's own otherwise.
        data_root: ``"pretrained"`` only: the folder with the datasets' files.
        weights: ``"pretrained"`` only: the backbone's state dict file.
        max_train: ``"pretrained"`` only: training examples kept per task.
        verify: ``"pretrained"`` only: keep torchvision's md5 checks of the data files.

    Raises:
        ValueError: for an unknown backend, task family or option, or a bad option value.
        MissingDataError: (``"pretrained"``) naming every missing data file and the weights.
    """
    options = dict(options or {})
    if backend == "pretrained":  # its options are PretrainedConfig's, checked by the dataclass
        from nsr_gym.learners.pretrained import make_paper_learner

        if data_root is None:
            raise ValueError("the pretrained backend reads local files: pass data_root=")
        arch = options.pop("arch", "vit_b_16")
        return make_paper_learner(tasks, data_root, weights, arch=arch, n_tasks=n_tasks,
                                  max_train=max_train, verify=verify, **options)
    if backend not in LEARNER_CONFIGS:
        raise ValueError(f"backend must be one of {LEARNER_BACKENDS} (got {backend!r})")
    n_tasks = 5 if n_tasks is None else n_tasks
    overrides = check_learner_options(backend, options)
    if backend == "torch":
        return TorchLearner(make_tasks(tasks, n_tasks), TorchLearnerConfig(**overrides))
    make_tasks(tasks, n_tasks)  # validates the family and size, so both backends agree
    return AnalyticLearner(n_tasks, AnalyticConfig(**overrides))


def learner_rules() -> dict[str, dict[str, Any]]:
    """backend -> option -> :class:`~nsr_gym.learners.config.Rule`, from the config fields."""
    return {backend: field_rules(cls) for backend, cls in LEARNER_CONFIGS.items()}
