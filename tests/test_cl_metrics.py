"""The standard continual-learning metrics (nsr_gym.cl_metrics): formulas on hand-computed
matrices, the serving rule, and a recorded rollout equal to an unrecorded one, bit for bit."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym import cl_metrics as clm
from nsr_gym.agents import make_agent, rollout

# One pass over T = 3 tasks: phase j trains task j.
R1 = np.array([[0.9, 0.5, 0.4],
               [0.7, 0.8, 0.6],
               [0.6, 0.7, 0.9]])
T1 = np.array([0, 1, 2])
B1 = np.array([0.5, 0.45, 0.5])

# Revisits: phases train 0, 1, 0, 1 (the last phase trains task 1, so D = {0}).
R2 = np.array([[0.8, 0.5],
               [0.6, 0.9],
               [0.85, 0.7],
               [0.7, 0.95]])
T2 = np.array([0, 1, 0, 1])
B2 = np.array([0.5, 0.4])


def test_one_pass_matches_the_papers_formulas():
    m = clm.standard_metrics(R1, T1, B1)
    assert m["std_acc"] == pytest.approx((0.6 + 0.7 + 0.9) / 3)
    assert m["std_aia"] == pytest.approx((0.9 + (0.7 + 0.8) / 2 + (0.6 + 0.7 + 0.9) / 3) / 3)
    assert m["std_bwt"] == pytest.approx(((0.6 - 0.9) + (0.7 - 0.8)) / 2)  # -0.2
    assert m["std_forgetting"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.7)) / 2)  # 0.2
    assert m["std_fwt"] == pytest.approx(((0.5 - 0.45) + (0.6 - 0.5)) / 2)  # 0.075


def test_revisits_use_each_tasks_last_and_first_training_phase():
    m = clm.standard_metrics(R2, T2, B2)
    assert m["std_acc"] == pytest.approx((0.7 + 0.95) / 2)
    assert m["std_aia"] == pytest.approx((0.8 + 0.75 + 0.775 + 0.825) / 4)
    assert m["std_bwt"] == pytest.approx(0.7 - 0.85)  # R[3, 0] - R[l_0 = 2, 0]
    assert m["std_forgetting"] == pytest.approx(0.85 - 0.7)  # max over rows 0..2
    assert m["std_fwt"] == pytest.approx(0.5 - 0.4)  # task 1: R[f_1 - 1 = 0, 1] - b_1


def test_forgetting_max_starts_where_the_task_was_first_learned():
    # Task 1's row before it was learned (0.95) is not its peak; its peak after learning is 0.8.
    R = np.array([[0.9, 0.95, 0.5], [0.7, 0.8, 0.6], [0.6, 0.7, 0.9]])
    assert clm.forgetting(R, T1) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.7)) / 2)


def test_empty_task_sets_give_nan():
    R = np.array([[0.8]])
    m = clm.standard_metrics(R, np.array([0]), np.array([0.5]))
    assert m["std_acc"] == 0.8 and m["std_aia"] == 0.8
    assert np.isnan(m["std_bwt"]) and np.isnan(m["std_forgetting"]) and np.isnan(m["std_fwt"])
    assert np.isnan(clm.standard_metrics(R1, T1)["std_fwt"])  # no baseline given


def test_long_format_round_trip_and_tables():
    rows = []
    for seed in (0, 1):
        rows += [{"agent": "a", "seed": seed, "serve": "entry", "phase": -1, "trained_task": -1,
                  "task": i, "accuracy": B1[i], "slot": -1} for i in range(3)]
        rows += [{"agent": "a", "seed": seed, "serve": "entry", "phase": j, "trained_task": j,
                  "task": i, "accuracy": R1[j, i], "slot": i if i <= j else -1}
                 for j in range(3) for i in range(3)]
    frame = pd.DataFrame(rows, columns=clm.MATRIX_COLUMNS)
    R, trained, b = clm.matrix_arrays(frame[frame["seed"] == 0])
    np.testing.assert_array_equal(R, R1)
    np.testing.assert_array_equal(trained, T1)
    np.testing.assert_array_equal(b, B1)
    per_seed = clm.summarize_matrices(frame)
    assert list(per_seed.columns) == clm.CL_COLUMNS and len(per_seed) == 2
    assert per_seed["std_bwt"].tolist() == pytest.approx([-0.2, -0.2])
    board = clm.cl_table(per_seed)
    assert board.loc[0, "seeds"] == 2 and board.loc[0, "std_acc"] == pytest.approx(0.73333333)


def test_serve_mode_by_memory_class():
    assert clm.serve_mode("M0") == clm.serve_mode("M1") == "active"
    for cls in ("history", "oracle", "learned", "clairvoyant"):
        assert clm.serve_mode(cls) == "entry"
    with pytest.raises(ValueError, match="serve"):
        clm.MatrixRecorder(make_agent("similarity"), serve="bank")


def _env(backend: str, **kwargs):
    learner = {"eval_samples": 50} if backend == "analytic" else None  # noisy: draws an RNG
    return gym.make("nsr_gym/CyclicSplitDigits-v0", backend=backend, phase_length=4,
                    n_cycles=2, learner=learner, **kwargs)


@pytest.mark.parametrize("backend", ["torch", "analytic"])
@pytest.mark.parametrize("agent", ["similarity", "keep-current", "oracle"])
def test_recording_does_not_change_the_episode(backend, agent):
    env = _env(backend)
    plain = rollout(env, make_agent(agent), seed=3)
    state = copy.deepcopy(env.unwrapped.learner.__dict__.get("h"))
    recorder = clm.MatrixRecorder(make_agent(agent))
    recorded = rollout(env, recorder, seed=3, agent_name=agent)
    pd.testing.assert_frame_equal(plain, recorded, check_exact=True)
    if state is not None:  # the analytic learner ends where the plain run ended
        assert state.tobytes() == env.unwrapped.learner.h.tobytes()
    frame = recorder.frame(agent, 3)
    u = env.unwrapped
    assert len(frame) == (u.n_phases + 1) * u.n_tasks
    R, trained, b = clm.matrix_arrays(frame)
    assert R.shape == (u.n_phases, u.n_tasks) and b.shape == (u.n_tasks,)
    np.testing.assert_array_equal(trained, np.tile(np.arange(5), 2))
    # The diagonal of each phase: the task just trained, with the subspace that serves it (the
    # torch learner's evaluation is exact; the noisy analytic one draws other test samples).
    ends = plain.groupby("phase").tail(1)
    if recorder.serve == "active":
        if backend == "torch":
            np.testing.assert_array_equal(R[np.arange(len(trained)), trained], ends["accuracy"])
        assert (frame["slot"] == -1).all()
    else:
        assert (frame.loc[frame["phase"] >= 0, "slot"] >= 0).any()


def test_torch_state_is_untouched_bit_for_bit():
    import torch

    env = _env("torch")
    recorder = clm.MatrixRecorder(make_agent("similarity"))
    env.reset(seed=0)
    recorder.bind(env)
    for _ in range(4):  # one phase: the bank holds task 0's entry, Adam has moments
        _, _, _, _, info = env.step(0)
    learner = env.unwrapped.learner
    before = [t.clone() for t in (learner.optimizer.flat, learner.optimizer.exp_avg,
                                  learner.optimizer.exp_avg_sq, learner._gen.get_state(),
                                  learner._init_gen.get_state())]
    steps = learner.optimizer.steps
    recorder.observe(info)
    after = (learner.optimizer.flat, learner.optimizer.exp_avg, learner.optimizer.exp_avg_sq,
             learner._gen.get_state(), learner._init_gen.get_state())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert learner.optimizer.steps == steps
    assert recorder.frame("similarity", 0)["slot"].tolist() == [0, -1, -1, -1, -1]


def test_entry_serving_reads_the_owned_slot_and_pending_under_agent_retention():
    env = _env("analytic", capacity=3, retention="agent")
    recorder = clm.MatrixRecorder(make_agent("lru-retain"))
    rollout(env, recorder, seed=0, agent_name="lru-retain")
    frame = recorder.frame("lru-retain", 0)
    just_trained = frame[(frame["phase"] >= 0) & (frame["task"] == frame["trained_task"])]
    assert (just_trained["slot"] == -1).all()  # pending: served by the active subspace
    assert (frame["slot"] >= 0).any()


def test_benchmark_tables_are_the_same_with_the_matrix_recorded(tmp_path):
    from nsr_gym.executors import Sweep
    from nsr_gym.studies import benchmark as bm

    files = {}
    for record in (False, True):
        out = tmp_path / str(record)
        plan = bm.plan_benchmark(bm.BenchmarkConfig(
            backend="analytic", agents=("similarity", "keep-current"), seeds=(0, 1), cycles=2,
            out=str(out), accuracy_matrix=record, sweep=Sweep(progress=False)))
        assert plan.record_matrix is record
        bm.run_benchmark(plan)
        files[record] = {f: (out / f).read_bytes() for f in ("runs.csv", "leaderboard.csv",
                                                             "phases.csv")}
    assert files[False] == files[True]
    per_seed = pd.read_csv(tmp_path / "True" / "cl_metrics.csv")
    assert list(per_seed.columns) == clm.CL_COLUMNS and len(per_seed) == 4
    assert dict(zip(per_seed["agent"], per_seed["serve"], strict=False)) == {
        "similarity": "entry", "keep-current": "active"}
    matrix = pd.read_csv(tmp_path / "True" / "accuracy_matrix.csv")
    assert len(matrix) == 4 * (10 + 1) * 5  # runs x (phases + b row) x tasks
    assert "Standard continual-learning metrics" in (tmp_path / "True" / "leaderboard.md"
                                                     ).read_text()
    # resumed: both kept files are read back, nothing reruns, the same tables
    plan = bm.plan_benchmark(bm.BenchmarkConfig(
        backend="analytic", agents=("similarity", "keep-current"), seeds=(0, 1), cycles=2,
        out=str(tmp_path / "True"), accuracy_matrix=True, sweep=Sweep(progress=False)))
    bm.run_benchmark(plan)
    assert pd.read_csv(tmp_path / "True" / "accuracy_matrix.csv").equals(matrix)


def test_matrix_is_on_by_default_for_small_offline_benchmarks(tmp_path):
    from nsr_gym.studies import benchmark as bm

    plan = bm.plan_benchmark(bm.BenchmarkConfig(backend="analytic", agents=("similarity",),
                                                seeds=(0,), out=str(tmp_path)))
    assert plan.record_matrix
