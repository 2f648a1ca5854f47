"""Long-horizon streams, the LongHorizon benchmarks and the scaling study's measurements
(nsr_gym/studies/scaling.py, scaling_diskbank.py, scaling_study.py)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

import nsr_gym
from nsr_gym.executors import Unit
from nsr_gym.streams import SCHEDULES, make_stream, parse_recurrence, recurrence_weights
from nsr_gym.studies import scaling, scaling_diskbank


@pytest.mark.parametrize("kind", ["zipf", "zipf:1.5", "zipf:0", "geometric", "geometric:0.5"])
def test_recurrence_streams_visit_every_task_and_never_repeat(kind):
    s = make_stream(kind, 50, 3, 4, rng=np.random.default_rng(0))
    assert s.n_phases == 200 and set(s.schedule.tolist()) == set(range(50))
    assert not np.any(np.diff(s.schedule) == 0)
    first = [int(np.flatnonzero(s.schedule == m)[0]) for m in range(50)]
    assert first == sorted(first) and first[-1] <= 49 * 4  # arrivals in order, on time
    again = make_stream(kind, 50, 3, 4, rng=np.random.default_rng(0))
    assert np.array_equal(s.schedule, again.schedule)


def test_recurrence_law_sets_the_stack_distances():
    rng = np.random.default_rng(0)
    steep = scaling.stack_distances(make_stream("zipf:2", 200, 1, 5, rng=rng).schedule)
    flat = scaling.stack_distances(make_stream("zipf:0", 200, 1, 5, rng=rng).schedule)
    assert np.median(steep[steep > 0]) < np.median(flat[flat > 0])
    assert scaling.stack_distances(np.array([0, 1, 0, 2, 1])).tolist() == [0, 0, 1, 0, 2]


def test_recurrence_specs_are_validated():
    assert parse_recurrence("zipf") == ("zipf", 1.0) and parse_recurrence("cyclic") is None
    assert "zipf:1.5" in SCHEDULES and "geometric:0.2" in SCHEDULES and "zipf:x" not in SCHEDULES
    for bad in ("zipf:x", "zipf:-1", "geometric:1.5", "geometric:0"):
        with pytest.raises(ValueError):
            parse_recurrence(bad)
    np.testing.assert_allclose(recurrence_weights("geometric", 0.5, 4), [1, 0.5, 0.25])
    with pytest.raises(ValueError, match="schedule"):
        gym.make("nsr_gym/LongHorizonPermutedDigits-v0", backend="analytic", schedule="zipf:x")


def test_long_horizon_benchmark_is_registered_and_runs():
    name = "LongHorizonPermutedDigits"
    spec = gym.spec(nsr_gym.env_id(name))
    assert spec.kwargs["n_tasks"] == 1000 and spec.kwargs["schedule"] == "zipf"
    env = gym.make(nsr_gym.env_id(name), backend="analytic", n_tasks=12, phase_length=2,
                   n_cycles=2, schedule="zipf:1.2", capacity=6)
    obs, info = env.reset(seed=0)
    done, tasks = False, set()
    while not done:
        obs, _, term, trunc, info = env.step(int(np.flatnonzero(env.unwrapped.action_masks())[-1]))
        tasks.add(info["task_id"])
        done = term or trunc
    assert tasks == set(range(12)) and info["bank_entries"] == 6
    env.close()


def test_recall_stats_on_separable_and_crowded_keys():
    rng = np.random.default_rng(0)
    keys = np.eye(8, dtype=np.float32)
    clean = scaling.recall_stats(keys, keys + 0.01 * rng.standard_normal((8, 8)), novel=-keys[:2])
    assert clean["precision_at_1"] == 1.0 and clean["false_recall"] == 0.0
    assert clean["self_cos"] > 0.99 and abs(clean["pairwise_cos"]) < 1e-6
    crowded = scaling.recall_stats(keys, keys + 2.0 * rng.standard_normal((8, 8)))
    assert crowded["precision_at_1"] < 1.0 and crowded["error_margin"] < 0


def test_permuted_digit_keys_follow_the_torch_learners_recipe():
    from nsr_gym.data import permuted_digits
    from nsr_gym.learners import TorchLearner

    learner = TorchLearner(permuted_digits(3))
    full = scaling_diskbank.permuted_digit_keys(3, probe_size=1258, n_probes=1, centre_tasks=3)[0]
    ref = np.stack([f.mean(0).numpy() for f in learner._features])  # the full-batch embedding
    np.testing.assert_allclose(full, ref, atol=1e-5)
    learner.close()


def test_env_unit_reports_recall_events():
    from nsr_gym.agents import RULE_AGENTS

    unit = Unit("similarity", 0, {"env_id": "nsr_gym/LongHorizonPermutedDigits-v0",
                                  "tags": {"n_tasks": 15},
                                  "env_kwargs": {"backend": "analytic", "n_tasks": 15,
                                                 "phase_length": 3, "n_cycles": 3}})
    (row,) = scaling.env_unit(unit, RULE_AGENTS)
    assert row["n_tasks"] == 15 and row["n_tasks_seen"] == 15 and row["n_phases"] == 45
    assert row["precision_at_1"] == 1.0 and row["hit_rate"] == 1.0 and row["lru_hit_bound"] == 1.0
    assert 0.0 <= row["false_recall"] <= 1.0 and row["bank_entries"] == 15


def test_measure_diskbank_small(tmp_path):
    keys = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    res = scaling_diskbank.measure_diskbank(tmp_path / "b", 300, {"w": (16, 8), "b": (3,)},
                                            keys=keys, queries=keys, shard_size=64, n_loads=50,
                                            n_queries=100)
    assert res["precision_at_1"] == 1.0 and res["entry_bytes"] == 4 * (128 + 3)
    assert res["index_bytes_in_memory"] < res["disk_bytes"]
    assert res["load_warm_p50_ms"] > 0 and not (tmp_path / "b").exists()


def test_study_scaling_cli_smoke(tmp_path, capsys):
    # In process (the command's own imports are already paid for here); tests/test_cli.py runs
    # the CLI in subprocesses.
    from nsr_gym.cli import main

    out = tmp_path / "scaling"
    assert main(["study", "scaling", "--quick", "--no-progress", "--sections", "eviction,diskbank",
                 "--disk-entries", "300", "--out", str(out)]) == 0
    for name in ("eviction.csv", "diskbank.csv", "scaling.md", "eviction.png", "manifest.json"):
        assert (out / name).exists(), name
    board = pd.read_csv(out / "eviction.csv")
    assert set(board["eviction"]) == {"lru", "fifo", "lfu", "least_unique", "reject", "uncapped"}
    assert "written by" in (out / "scaling.md").read_text()  # provenance of each section
    assert main(["study", "scaling", "--report-only", "--out", str(out)]) == 0
    assert main(["study", "scaling", "--sections", "nope", "--out", str(out)]) == 2
    assert "unknown section" in capsys.readouterr().err
