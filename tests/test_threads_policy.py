"""The env's thread policy (nsr_gym/threads.py): the torch learner computes on one intra-op
thread and gives the caller's count back; a forked process always computes on one; the setting
can be changed (and left alone); studies keep their scoped context managers. Why one thread:
``nsr_gym/threads.py``'s docstring.
"""

from __future__ import annotations

import os

import gymnasium as gym
import pytest
import torch

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym import threads
from nsr_gym.learners.fast import FastForward
from nsr_gym.learners.pretrained import PretrainedLearner
from nsr_gym.learners.torch_learner import _THREADED, TorchLearner

SHORT = dict(phase_length=2, n_cycles=1)


@pytest.fixture
def two_threads():
    """The caller runs on two torch threads (the tests' default is one, tests/conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def policy():
    """Restore the module's setting (and its environment variable) after a test changes it."""
    saved, var = threads._setting, os.environ.get(threads.THREADS_VAR)
    yield
    threads._setting = saved
    if var is None:
        os.environ.pop(threads.THREADS_VAR, None)
    else:
        os.environ[threads.THREADS_VAR] = var


def _threads_seen_in_training(monkeypatch, **make_kwargs) -> list[int]:
    """Torch's thread count inside the learner's training steps of a short episode."""
    seen: list[int] = []
    original = FastForward.mlp_loss_and_grads

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FastForward, "mlp_loss_and_grads", spy)
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", **SHORT, **make_kwargs)
    env.reset(seed=0)
    for action in (1, 0, 2):
        env.step(action)
    env.close()
    return seen


def test_the_learner_computes_on_one_thread_and_restores_the_callers(two_threads, monkeypatch):
    seen = _threads_seen_in_training(monkeypatch)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_the_setting_changes_the_count_or_leaves_it_alone(two_threads, monkeypatch, policy):
    threads.set_env_threads(None)
    assert os.environ[threads.THREADS_VAR] == "0"  # spawned workers follow
    assert set(_threads_seen_in_training(monkeypatch)) == {2}
    torch.set_num_threads(1)
    threads.set_env_threads(2)
    assert set(_threads_seen_in_training(monkeypatch)) == {2}
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="int >= 1 or None"):
        threads.set_env_threads(0)


def test_a_forked_process_always_computes_on_one_thread(policy):
    threads.set_env_threads(None)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what the policy would apply, and leave at once
        os.write(write, str(threads.env_thread_count()).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 16) == b"1" and os.WEXITSTATUS(status) == 0
    os.close(read)
    assert threads.env_thread_count() is None  # the parent keeps its own setting


def test_a_bad_environment_variable_warns_and_keeps_one_thread(monkeypatch):
    monkeypatch.setenv(threads.THREADS_VAR, "many")
    with pytest.warns(UserWarning, match="ignored"):
        assert threads._read_setting() == 1
    monkeypatch.setenv(threads.THREADS_VAR, "0")
    assert threads._read_setting() is None
    monkeypatch.setenv(threads.THREADS_VAR, "3")
    assert threads._read_setting() == 3


def test_every_entry_point_and_subclass_override_is_scoped():
    for cls in (TorchLearner, PretrainedLearner):
        for name in _THREADED:
            assert getattr(getattr(cls, name), "__wrapped_by_env_threads__", False), (cls, name)


def test_scoped_context_managers_restore_the_count(two_threads):
    from nsr_gym.studies.threads import limited_threads, torch_threads

    with torch_threads(1):
        assert torch.get_num_threads() == 1
    with limited_threads(1):
        assert torch.get_num_threads() == 1
    with threads.env_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
