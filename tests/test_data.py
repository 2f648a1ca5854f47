from __future__ import annotations

import numpy as np
import pytest

from nsr_gym.data import load_digits_split, make_tasks, permuted_digits, split_digits
from nsr_gym.streams import make_stream


def test_split_is_stratified_disjoint_and_deterministic():
    x_tr, y_tr, x_te, y_te = load_digits_split()
    assert x_tr.dtype == np.float32 and x_tr.shape[1] == 64
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    # every class keeps ~30% for testing
    for c in range(10):
        frac = (y_te == c).sum() / ((y_te == c).sum() + (y_tr == c).sum())
        assert 0.28 < frac < 0.32
    # no test image is also a training image (rows of the original data are unique by index)
    train_rows = {row.tobytes() for row in x_tr}
    overlap = sum(row.tobytes() in train_rows for row in x_te)
    assert overlap <= 2  # the raw digits data has a couple of exact duplicate images
    load_digits_split.cache_clear()
    again = load_digits_split()
    np.testing.assert_array_equal(again[0], x_tr)


def test_split_digits_tasks_are_binary_with_local_labels():
    tasks = split_digits(5)
    assert [t.name for t in tasks] == ["digits{0,1}", "digits{2,3}", "digits{4,5}", "digits{6,7}",
                                       "digits{8,9}"]
    for t in tasks:
        assert t.n_classes == 2
        assert set(np.unique(t.y_train)) == {0, 1} and set(np.unique(t.y_test)) == {0, 1}


def test_permuted_digits_keeps_labels_and_permutes_pixels():
    tasks = permuted_digits(3)
    np.testing.assert_array_equal(tasks[0].y_train, tasks[1].y_train)
    assert not np.array_equal(tasks[0].x_train, tasks[1].x_train)
    np.testing.assert_allclose(np.sort(tasks[0].x_train, 1), np.sort(tasks[1].x_train, 1))


def test_bad_family_and_sizes_get_clear_errors():
    with pytest.raises(ValueError, match="unknown task family"):
        make_tasks("cifar", 5)
    with pytest.raises(ValueError, match="n_tasks=3"):
        split_digits(3)


def test_streams():
    s = make_stream("cyclic", 3, 4, 2)
    assert s.schedule.tolist() == [0, 1, 2, 0, 1, 2] and s.n_steps == 24 and s.task_at(5) == 1
    r1 = make_stream("recurring", 4, 2, 5, rng=np.random.default_rng(1))
    r2 = make_stream("recurring", 4, 2, 5, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(r1.schedule, r2.schedule)
    assert np.all(r1.schedule[1:] != r1.schedule[:-1])
    with pytest.raises(ValueError, match="phase_length"):
        make_stream("cyclic", 3, 0, 2)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_stream("zigzag", 3, 2, 2)
