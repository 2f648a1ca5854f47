"""Distillation in the torch learner, the env's reserve modes, and a Learner passed to the env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym import AllocationEnv
from nsr_gym.agents import KeepCurrent, SimilarityRule, rollout
from nsr_gym.data import make_tasks
from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig


@pytest.fixture(scope="module")
def domains():
    return make_tasks("five_domains", 5)


def _learner(tasks, **cfg) -> TorchLearner:
    learner = TorchLearner(tasks, TorchLearnerConfig(**cfg))
    learner.reset(np.random.default_rng(0))
    return learner


def _forgetting_run(tasks, **cfg) -> tuple[float, float, float]:
    """Train task 0, protect it, train task 1: (acc 0 before, acc 0 after, acc 1 after)."""
    learner = _learner(tasks, **cfg)
    learner.train(0, 120)
    before = learner.evaluate(0)
    learner.protect([0])
    learner.train(1, 120)
    return before, learner.evaluate(0), learner.evaluate(1)


def test_distillation_protects_the_protected_task(domains):
    before, off, _ = _forgetting_run(domains, distill_weight=0.0)
    _, on, learned = _forgetting_run(domains, distill_weight=1.0)
    assert before > 0.6
    assert off < before - 0.3  # plain training on another domain wipes it out
    assert on > off + 0.2  # the term keeps a large part of it
    assert learned > 0.5  # and the new task is still learned


@pytest.mark.parametrize("backbone", ["mlp", "vit"])
def test_fast_and_reference_paths_agree_with_distillation(backbone):
    tasks = make_tasks("split_digits", 5)
    cfg = dict(distill_weight=2.0, backbone=backbone, vit_depth=3, lora_blocks=1,
               distill_anchors=64)
    runs = []
    for fast in (True, False):
        learner = _learner(tasks, fast=fast, **cfg)
        learner.train(0, 20)
        learner.protect([0])
        report = learner.train(1, 20)
        params = torch.cat([p.detach().flatten() for p in learner.optimizer.params]) if fast \
            else torch.cat([p.detach().flatten() for g in learner.optimizer.param_groups
                            for p in g["params"]])
        runs.append((report.loss, params, learner.evaluate(0)))
    (loss_f, p_f, acc_f), (loss_r, p_r, acc_r) = runs
    assert loss_f == pytest.approx(loss_r, rel=1e-5)
    torch.testing.assert_close(p_f, p_r, rtol=1e-4, atol=1e-5)
    assert acc_f == pytest.approx(acc_r, abs=0.02)


def test_weight_zero_or_nothing_protected_changes_nothing():
    tasks = make_tasks("split_digits", 5)
    base = _learner(tasks)
    off = _learner(tasks, distill_weight=0.0)
    empty = _learner(tasks, distill_weight=1.0)
    for learner, protect in ((base, None), (off, [0]), (empty, [])):
        learner.train(0, 10)
        if protect is not None:
            learner.protect(protect)
        learner.train(1, 10)
    accs = {round(x.evaluate(t), 6) for x in (base, off, empty) for t in (0, 1)}
    assert len(accs) <= 2 and base.evaluate(1) == off.evaluate(1) == empty.evaluate(1)


def test_protect_draws_no_random_numbers():
    tasks = make_tasks("split_digits", 5)
    learner = _learner(tasks, distill_weight=1.0)
    state = learner._gen.get_state().clone()
    learner.protect([0, 1])
    assert torch.equal(state, learner._gen.get_state())


def test_protect_rejects_unknown_tasks():
    learner = _learner(make_tasks("split_digits", 5), distill_weight=1.0)
    with pytest.raises(ValueError, match="tasks 0..4"):
        learner.protect([7])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "x"])
def test_bad_distill_weight_is_rejected(bad):
    with pytest.raises(ValueError, match="distill_weight"):
        gym.make("nsr_gym/CyclicSplitDigits-v0", learner={"distill_weight": bad})


# ----------------------------------------------------------------------------- the env

SHORT = dict(phase_length=6, n_cycles=2)


def test_reserve_active_shares_one_entry_for_keep_current():
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", reserve="active", **SHORT)
    log = rollout(env, KeepCurrent(), seed=0)
    bank = env.unwrapped.bank
    (entry,) = [e for e in bank.slots if e is not None]
    assert entry.tasks_served == [0, 1, 2, 3, 4]
    assert int(log["bank_entries"].iloc[-1]) == 1


def test_reserve_owner_keeps_an_entry_per_task():
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", **SHORT)
    rollout(env, KeepCurrent(), seed=0)
    served = sorted(tuple(e.tasks_served) for e in env.unwrapped.bank.slots if e is not None)
    assert served == [(0,), (1,), (2,), (3,), (4,)]


def test_env_protects_what_the_active_subspace_served():
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", reserve="active",
                   learner={"distill_weight": 1.0}, **SHORT)
    env.reset(seed=0)
    protected = []
    for _ in range(env.unwrapped.n_steps):
        *_, info = env.step(0)
        protected.append(info["protected_tasks"])
    L = SHORT["phase_length"]
    # keep-current: phase p protects the p earlier tasks, up to the 4 others of 5
    assert protected[:L] == [0] * L
    assert protected[L:2 * L] == [1] * L
    assert protected[-1] == 4


def test_distillation_reduces_forgetting_of_shared_entries():
    kw = dict(reserve="active", phase_length=20, n_cycles=2)
    bwt = {}
    for w in (0.0, 1.0):
        env = gym.make("nsr_gym/FiveDomains-v0", learner={"distill_weight": w}, **kw)
        from nsr_gym.metrics import summarize_run

        bwt[w] = summarize_run(rollout(env, SimilarityRule(0.0), seed=0)).bwt
    assert bwt[0.0] < 0
    assert bwt[1.0] > bwt[0.0]


@pytest.mark.parametrize("reserve", ["owner", "active"])
def test_checkers_pass_with_distillation(reserve):
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", reserve=reserve,
                   learner={"distill_weight": 1.0, "distill_anchors": 16}, **SHORT)
    check_env(env.unwrapped, skip_render_check=True)


def test_bad_reserve_mode_is_rejected():
    with pytest.raises(ValueError, match="reserve must be one of"):
        gym.make("nsr_gym/CyclicSplitDigits-v0", reserve="everywhere")


def test_env_takes_a_ready_learner():
    tasks = make_tasks("permuted_digits", 3)
    learner = TorchLearner(tasks, TorchLearnerConfig(hidden=(32, 16)))
    env = AllocationEnv(learner=learner, n_tasks=3, **SHORT)
    assert env.unwrapped.learner is learner
    check_env(env, skip_render_check=True)
    log = rollout(env, SimilarityRule(), seed=1)
    assert len(log) == 3 * SHORT["phase_length"] * SHORT["n_cycles"]


def test_env_rejects_a_learner_of_another_size():
    learner = TorchLearner(make_tasks("permuted_digits", 3))
    with pytest.raises(ValueError, match="pass n_tasks=3"):
        AllocationEnv(learner=learner, n_tasks=5)


# ----------------------------------------------------------------------------- the study


def test_study_distillation_writes_its_results(tmp_path, capsys):
    import pandas as pd

    from nsr_gym.cli import main

    out = tmp_path / "d"
    argv = ["study", "distillation", "--quick", "--benchmarks", "CyclicSplitDigits",
            "--weights", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    for name in ("runs.csv", "summary.csv", "distillation.md", "distillation.png",
                 "manifest.json"):
        assert (out / name).is_file(), name
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["distill_weight"]) == {0.0, 1.0}
    assert set(runs["reserve"]) == {"owner", "active"}
    md = (out / "distillation.md").read_text()
    assert "Written by `" in md and "keep-current" in md
    # a second run resumes from the finished units and writes the same tables
    summary = (out / "summary.csv").read_text()
    assert main(argv) == 0
    assert (out / "summary.csv").read_text() == summary


@pytest.mark.parametrize("args, message", [
    (["--weights", "0"], "at least one weight > 0"),
    (["--weights", "a"], "--weights takes numbers"),
    (["--benchmarks", "Nope"], "unknown benchmark"),
])
def test_study_distillation_bad_input(tmp_path, capsys, args, message):
    from nsr_gym.cli import main

    assert main(["study", "distillation", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_distillation_on_the_analytic_backend_says_it_is_a_torch_option():
    with pytest.raises(ValueError, match=r"\['distill_weight'\] belong to the torch backend"):
        gym.make("nsr_gym/FiveDomains-v0", backend="analytic", learner={"distill_weight": 1.0})


def test_run_cli_takes_reserve_and_distillation(tmp_path):
    import json

    from nsr_gym.cli import main

    out = tmp_path / "run"
    assert main(["run", "--benchmark", "CyclicSplitDigits", "--agents", "keep-current",
                 "--seeds", "1", "--cycles", "2", "--reserve", "active", "--distill-weight",
                 "1", "--out", str(out), "--no-progress"]) == 0
    kwargs = json.loads((out / "manifest.json").read_text())["env_kwargs"]
    assert kwargs["reserve"] == "active" and kwargs["learner"] == {"distill_weight": 1.0}
    assert main(["run", "--backend", "analytic", "--distill-weight", "1",
                 "--out", str(tmp_path / "bad"), "--no-progress"]) == 2


def test_protection_is_capped_at_the_most_recent_tasks():
    learner = _learner(make_tasks("permuted_digits", 6), distill_weight=1.0, distill_max_tasks=2,
                       distill_anchors=8)
    learner.protect([0, 3, 1, 4, 3])
    anchors = sum(len(teacher) for _, _, teacher in learner._teacher)
    assert anchors == 2 * 8  # tasks 1 and 4 of 0, 3, 1, 4 (3 counted once, where first given)


def test_env_names_the_backend_of_a_ready_learner():
    from nsr_gym.learners.analytic import AnalyticLearner

    env = AllocationEnv(learner=AnalyticLearner(5), n_tasks=5, **SHORT)
    assert env.backend == "analytic"
    env.reset(seed=0)
    env.step(1)
