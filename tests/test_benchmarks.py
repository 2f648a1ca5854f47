"""The offline heterogeneous and domain-incremental benchmarks (issue 5): data, schedule, recall."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import nsr_gym
from nsr_gym.data import DOMAINS, five_domains, load_digits_split, make_tasks
from nsr_gym.learners.torch_learner import TorchLearner
from nsr_gym.streams import make_stream


def test_five_domains_are_ten_way_64d_and_visibly_different():
    tasks = five_domains()
    assert (
        [t.name for t in tasks]
        == list(DOMAINS)
        == ["digits", "inverted", "rotated", "permuted", "shifted_blurred"]
    )
    x_tr, y_tr, _, y_te = load_digits_split()
    for t in tasks:
        assert t.n_classes == 10 and t.input_dim == 64 and t.x_train.dtype == np.float32
        assert 0.0 <= t.x_train.min() and t.x_train.max() <= 1.0
        np.testing.assert_array_equal(t.y_train, y_tr)
        np.testing.assert_array_equal(t.y_test, y_te)
        if t.task_id:  # every transform moves the images a lot, not by a rounding error
            assert np.abs(t.x_train - x_tr).mean() > 0.1, t.name
    # deterministic: built twice, bit for bit
    for a, b in zip(tasks, five_domains(), strict=True):
        np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_allclose(
        tasks[2].x_train.reshape(-1, 8, 8), np.rot90(x_tr.reshape(-1, 8, 8), 1, axes=(1, 2))
    )
    with pytest.raises(ValueError, match="n_tasks=6"):
        make_tasks("five_domains", 6)


def test_revisit_schedule_is_sequential_then_seeded_passes():
    s = make_stream("revisit", 5, 3, 4, rng=np.random.default_rng(0))
    passes = s.schedule.reshape(4, 5)
    assert passes[0].tolist() == [0, 1, 2, 3, 4]
    assert all(sorted(p) == [0, 1, 2, 3, 4] for p in passes)
    assert np.all(s.schedule[1:] != s.schedule[:-1])
    assert any(p.tolist() != [0, 1, 2, 3, 4] for p in passes[1:])  # not a counter's cycle
    again = make_stream("revisit", 5, 3, 4, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(s.schedule, again.schedule)
    with pytest.raises(ValueError, match="rng"):
        make_stream("revisit", 5, 3, 2)


@pytest.mark.parametrize("name", ["FiveDomains", "PermutedDigits"])
def test_registered(name):
    spec = gym.spec(nsr_gym.env_id(name))
    assert spec.kwargs["schedule"] == "revisit" and spec.kwargs["n_tasks"] == 5
    env = gym.make(nsr_gym.env_id(name), backend="analytic", phase_length=2, n_cycles=2)
    env.reset(seed=0)
    env.close()


@pytest.mark.parametrize("family", ["five_domains", "permuted_digits"])
def test_probe_embeddings_retrieve_their_own_task(family):
    """Recall is right: every fresh probe of task t is closest (cosine) to task t's key.

    Keys are the learner's own (centred) probe embeddings. Uncentred ReLU features of these
    tasks all point one way; the pool-mean centring of TorchLearner is what separates them.
    """
    learner = TorchLearner(make_tasks(family, 5))
    learner.reset(np.random.default_rng(0))
    keys = np.stack([learner.embed(t) for t in range(5)])
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    for _ in range(10):
        for t in range(5):
            q = learner.embed(t)
            sims = keys @ (q / np.linalg.norm(q))
            assert int(np.argmax(sims)) == t and sims[t] > 0.7, (family, t, sims)
    learner.close()


def test_similarity_rule_loads_the_returning_tasks_entry():
    from nsr_gym.agents import SimilarityRule

    env = gym.make(nsr_gym.env_id("FiveDomains"), phase_length=3, n_cycles=2, updates_per_step=1,
                   privileged_info=True)
    policy = SimilarityRule()
    obs, info = env.reset(seed=3)
    done, checked = False, 0
    while not done:
        slot = info["next_task_slot"]
        action = int(policy.predict(obs)[0])
        if info["next_is_phase_start"] and slot >= 0:  # a revisit: its entry must be recalled
            assert action == 2 + slot, (info["next_task_id"], action, slot)
            checked += 1
        obs, _, term, trunc, info = env.step(action)
        done = term or trunc
    assert checked == 5
    env.close()
