"""MNIST-1D task families (nsr_gym.data_mnist1d): offline, deterministic, the registered ids.

The ids also go through every check ``tests/test_envs.py`` runs on each registered spec (both
checkers on both backends, same-seed determinism); here: what is particular to MNIST-1D.
"""

from __future__ import annotations

import pickle
import random
import socket

import gymnasium as gym
import numpy as np
import pytest

import nsr_gym
from nsr_gym import KEEP, data_mnist1d
from nsr_gym.data import make_tasks
from nsr_gym.data_mnist1d import (
    MNIST1D_DOMAINS,
    SIGNAL_LENGTH,
    TASK_SAMPLES,
    generate,
    load_mnist1d_split,
    mnist1d_domains,
    split_mnist1d,
)

NEW_IDS = [nsr_gym.env_id(n) for n in ("CyclicSplitMNIST1D", "MNIST1DDomains",
                                       "CyclicSplitMNIST1DPretrained", "MNIST1DDomainsPretrained")]


def _no_network(*args, **kwargs):
    raise AssertionError(f"MNIST-1D tried the network: {args!r}")


def test_the_generator_is_never_asked_to_download(monkeypatch):
    import mnist1d.data
    import requests

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(requests, "get", _no_network)
    monkeypatch.setattr(requests.Session, "request", _no_network)
    monkeypatch.setattr(mnist1d.data, "get_dataset", _no_network)
    generate.cache_clear()  # what follows generates the task sample under the patches
    for family in ("split_mnist1d", "mnist1d_domains"):
        tasks = make_tasks(family, 5)
        assert len(tasks) == 5 and tasks[0].input_dim == SIGNAL_LENGTH


def test_generation_is_deterministic_and_leaves_the_global_rngs_alone():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    a = generate(7, 40)
    generate.cache_clear()
    b = generate(7, 40)
    assert np.random.random() == expected_np and random.random() == expected_py
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(generate(8, 40)[0], a[0])
    with pytest.raises(ValueError, match="num_samples"):
        generate(0, 10)


def test_task_sample_is_the_canonical_size_and_standardised():
    x_tr, y_tr, x_te, y_te = load_mnist1d_split()
    assert x_tr.shape == (4 * TASK_SAMPLES // 5, SIGNAL_LENGTH) and len(x_te) == TASK_SAMPLES // 5
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert set(np.unique(y_tr)) == set(range(10)) == set(np.unique(y_te))
    both = np.concatenate([x_tr, x_te])
    assert abs(both.mean()) < 1e-3 and abs(both.std() - 1) < 1e-3


def test_split_mnist1d_is_five_binary_tasks_with_local_labels():
    tasks = split_mnist1d(5)
    assert [t.name for t in tasks] == ["mnist1d{0,1}", "mnist1d{2,3}", "mnist1d{4,5}",
                                       "mnist1d{6,7}", "mnist1d{8,9}"]
    x_tr, y_tr, _, _ = load_mnist1d_split()
    for t in tasks:
        assert t.n_classes == 2 and t.x_train.shape[1] == SIGNAL_LENGTH
        assert set(np.unique(t.y_train)) == {0, 1} == set(np.unique(t.y_test))
        assert len(t.x_train) > 700 and len(t.x_test) > 150
    np.testing.assert_array_equal(tasks[1].x_train, x_tr[np.isin(y_tr, (2, 3))])
    assert sum(len(t.x_train) for t in tasks) == len(x_tr)
    with pytest.raises(ValueError, match="n_tasks=3"):
        split_mnist1d(3)


def test_domains_are_the_documented_transforms():
    tasks = mnist1d_domains(5)
    assert [t.name for t in tasks] == list(MNIST1D_DOMAINS)
    x = tasks[0].x_train
    np.testing.assert_array_equal(tasks[1].x_train, x[:, ::-1])
    np.testing.assert_array_equal(tasks[2].x_train, -x)
    np.testing.assert_array_equal(np.sort(tasks[3].x_train, 1), np.sort(x, 1))
    assert not np.array_equal(tasks[3].x_train, x)
    np.testing.assert_allclose(tasks[4].x_train[:, 1:], 3 * np.diff(x, axis=1), rtol=1e-5,
                               atol=1e-6)
    for t in tasks:
        assert t.n_classes == 10 and t.x_train.dtype == np.float32
        np.testing.assert_array_equal(t.y_train, tasks[0].y_train)
    assert len(mnist1d_domains(2)) == 2
    with pytest.raises(ValueError, match="n_tasks=6"):
        mnist1d_domains(6)


def test_make_tasks_names_every_family():
    with pytest.raises(ValueError, match="split_mnist1d"):
        make_tasks("mnist2d", 5)


def test_the_torch_learner_takes_40_wide_inputs():
    learner = nsr_gym.learners.make_learner("torch", {}, "split_mnist1d", 5)
    first = learner.model.base_model.model[0]
    assert first.in_features == SIGNAL_LENGTH
    learner.reset(np.random.default_rng(0))
    learner.train(0, 20)
    assert learner.evaluate(0) > 0.6


@pytest.mark.parametrize("env_id", NEW_IDS)
def test_new_ids_are_registered_as_the_digits_ones(env_id):
    spec = gym.spec(env_id)
    digits = gym.spec(nsr_gym.env_id("CyclicSplitDigits" if "Split" in env_id
                                     else "FiveDomains"))
    same = {k: v for k, v in spec.kwargs.items() if k not in ("tasks", "learner_defaults")}
    assert same == {k: v for k, v in digits.kwargs.items() if k != "tasks"}
    pretrained = "Pretrained" in env_id
    assert spec.kwargs.get("learner_defaults") == ({"backbone": "pretrained"} if pretrained
                                                   else None)
    env = gym.make(env_id, backend="analytic", phase_length=2, n_cycles=1)
    env.reset(seed=0)
    env.step(KEEP)
    env.close()


@pytest.mark.parametrize("env_id", NEW_IDS[::2])
def test_new_ids_pickle_mid_episode(env_id):
    env = gym.make(env_id, backend="torch", phase_length=3, n_cycles=2).unwrapped
    env.reset(seed=0)
    for _ in range(4):
        env.step(KEEP)
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(3):
        a, b = env.step(KEEP), clone.step(KEEP)
        assert a[1] == b[1] and a[4]["accuracy"] == b[4]["accuracy"]
        np.testing.assert_array_equal(a[0]["similarity"], b[0]["similarity"])
    env.close()


@pytest.mark.slow
def test_module_generates_lazily():
    """Importing the data modules does not import mnist1d (matplotlib, requests) or generate."""
    import subprocess
    import sys

    code = ("import sys, nsr_gym, nsr_gym.data_mnist1d; "
            "assert 'mnist1d' not in sys.modules, 'imported mnist1d'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert data_mnist1d.PRETRAIN_SEED != data_mnist1d.TASK_SEED
