"""Wrong input is rejected before work starts with a message that says what to do; NaN/inf never
reaches the bank; a saved bank is refused by an env whose backbone it does not fit.

The invalid inputs tried are listed in ``INVALID_ENV_KWARGS``, ``INVALID_ACTIONS`` and
``INVALID_CLI_ARGS``; each must get a clear error (a ``ValueError`` / exit status 2 whose message
names the culprit and what is allowed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.error import ResetNeeded

import nsr_gym
from nsr_gym import FRESH, KEEP, LOAD_OFFSET
from nsr_gym.bank import BankEntry, BankFormatError, TaskKnowledgeBank
from nsr_gym.cli import main as cli_main

ENV = "nsr_gym/CyclicSplitDigits-v0"
SMALL = dict(phase_length=3, n_cycles=1)

#: (kwargs of gym.make, regex the message must match). The message names the argument and what
#: values it takes: that is what "says what to do" means here.
INVALID_ENV_KWARGS: list[tuple[dict, str]] = [
    (dict(capacity=0), r"capacity must be an integer >= 1"),
    (dict(capacity=-2), r"capacity must be an integer >= 1"),
    (dict(capacity=2.5), r"capacity must be an integer >= 1"),
    (dict(capacity="3"), r"capacity must be an integer >= 1"),
    (dict(phase_length=0), r"phase_length must be an integer >= 1"),
    (dict(phase_length=-3), r"phase_length must be an integer >= 1"),
    (dict(phase_length=True), r"phase_length must be an integer >= 1"),
    (dict(n_cycles=0), r"n_cycles must be an integer >= 1"),
    (dict(n_tasks=0), r"n_tasks must be an integer >= 1"),
    (dict(n_tasks=7), r"n_tasks=7 .* use 1, 2 or 5"),
    (dict(updates_per_step=0), r"updates_per_step must be an integer >= 1"),
    (dict(lambda_switch=-0.1), r"lambda_switch must be a finite number >= 0"),
    (dict(lambda_switch=float("nan")), r"lambda_switch must be a finite number >= 0"),
    (dict(lambda_switch=float("inf")), r"lambda_switch must be a finite number >= 0"),
    (dict(lambda_switch="0.1"), r"lambda_switch must be a finite number >= 0"),
    (dict(acc_weight=-1.0), r"acc_weight must be a finite number >= 0"),
    (dict(backend="jax"), r"backend must be one of .*torch.*analytic"),
    (dict(tasks="cifar"), r"unknown task family 'cifar'; choose one of"),
    (dict(schedule="zigzag"), r"schedule must be one of"),
    (dict(eviction="random"), r"eviction must be one of .*lru"),
    (dict(render_mode="human"), r"render_mode must be None or 'ansi'"),
    (dict(learner={"nope": 1}), r"unknown torch learner option\(s\) \['nope'\]; known:"),
    (dict(learner={"lora_rank": 0}), r"lora_rank must be an integer >= 1"),
    (dict(learner={"lr": -1.0}), r"lr must be a finite number > 0"),
    (dict(learner={"lr": float("nan")}), r"lr must be a finite number > 0"),
    (dict(learner={"batch_size": 0}), r"batch_size must be an integer >= 1"),
    (dict(learner={"probe_size": 0}), r"probe_size must be an integer >= 1"),
    (dict(learner={"hidden": []}), r"hidden must be a non-empty list"),
    (dict(learner={"hidden": [64, 0]}), r"hidden must be a non-empty list"),
    (dict(learner={"compression_energy": 2.0}), r"compression_energy must be None or a number"),
    (dict(learner={"compression_rank": 0}), r"compression_rank must be None or an integer"),
    (dict(learner={"device": "tpu"}), r"unknown device 'tpu'; use 'cpu', 'cuda' or 'auto'"),
    (dict(backend="analytic", learner={"tau": -1.0}), r"tau must be a finite number > 0"),
    (dict(backend="analytic", learner={"key_dim": 0}), r"key_dim must be an integer >= 1"),
    (dict(backend="analytic", learner={"eval_samples": -1}), r"eval_samples must be an integer"),
    (dict(backend="analytic", learner={"probe_noise": -1.0}), r"probe_noise must be a finite"),
    (dict(backend="analytic", learner={"gamma": 2.0}), r"gamma must be a number in \[0, 1\]"),
    (dict(backend="analytic", learner={"kappa": 0.0}), r"kappa must be a number in \(0, 1\]"),
    (dict(backend="analytic", learner={"task_similarity": 1.0}), r"task_similarity must be"),
    (dict(backend="analytic", learner={"a_star": [0.9, 2.0]}), r"a_star must be a finite"),
]


@pytest.mark.filterwarnings("ignore:.*render_mode")
@pytest.mark.parametrize("kwargs,message", INVALID_ENV_KWARGS,
                         ids=[json.dumps(k, default=str) for k, _ in INVALID_ENV_KWARGS])
def test_invalid_env_config_is_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gym.make(ENV, **{**SMALL, **kwargs})


#: Actions that are not one integer in [0, K + 2): each raises ValueError naming the valid range.
INVALID_ACTIONS = [-1, 7, 100, 1.5, float("nan"), float("inf"), "1", b"\x01", [1, 2],
                   np.array([0, 1]), None, True, np.bool_(False), 1 + 0j, np.float32("nan")]


@pytest.fixture(scope="module")
def analytic_env():
    env = gym.make(ENV, backend="analytic", **SMALL).unwrapped
    yield env
    env.close()


@pytest.mark.parametrize("action", INVALID_ACTIONS, ids=[repr(a) for a in INVALID_ACTIONS])
def test_invalid_actions_are_rejected_and_change_nothing(analytic_env, action):
    env = analytic_env
    env.reset(seed=1)
    env.step(KEEP)
    t, acc = env._t, env._last_acc
    with pytest.raises(ValueError, match=r"action .*(0, 1|\[0, 7\)|keep)"):
        env.step(action)
    assert (env._t, env._last_acc) == (t, acc)  # rejected before anything happened
    env.step(np.int64(KEEP))  # and the episode goes on


#: (argv after ``nsr-gym run``, fragment of the error on stderr).
INVALID_CLI_ARGS: list[tuple[list[str], str]] = [
    (["--benchmark", "Nope"], "unknown benchmark 'Nope'; known:"),
    (["--backend", "jax"], "invalid choice: 'jax'"),
    (["--cycles", "0"], "n_cycles must be an integer >= 1"),
    (["--cycles", "-1"], "n_cycles must be an integer >= 1"),
    (["--cycles", "x"], "invalid int value: 'x'"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--seeds", "-3"], "--seeds must be at least 1"),
    (["--seeds", "a"], "--seeds takes a count (5) or a list (0,3,7)"),
    (["--seeds", ","], "--seeds names nothing; pass e.g."),
    (["--seeds", "1,1"], "--seeds lists 1 more than once"),
    (["--seeds=-1,2"], "--seeds must be >= 0"),
    (["--agents", "nope"], "unknown agent"),
    (["--agents", ","], "--agents names nothing; pass e.g."),
    (["--agents", "oracle,oracle"], "--agents lists oracle more than once"),
    (["--out", "<file>"], "cannot write results to"),
]


@pytest.mark.parametrize("argv,message", INVALID_CLI_ARGS,
                         ids=[" ".join(a) for a, _ in INVALID_CLI_ARGS])
def test_invalid_cli_input_is_rejected_before_work_starts(argv, message, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    out = tmp_path / "out"
    argv = [str(a_file) if a == "<file>" else a for a in argv]
    args = ["run", "--backend", "analytic", "--agents", "oracle", "--seeds", "1", "--cycles", "1",
            "--no-progress", "--out", str(out), *argv]
    try:
        code = cli_main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not out.exists() and a_file.read_text() == "not a directory"  # no work started


# ----------------------------------------------------------------------------- NaN / inf


def _bank_is_finite(bank: TaskKnowledgeBank) -> bool:
    return all(bool(torch.isfinite(t).all()) and np.isfinite(e.key).all()
               for e in bank.slots if e is not None for t in e.tensors.values())


def test_nan_loss_skips_updates_and_never_reaches_the_bank():
    env = gym.make(ENV, phase_length=3, n_cycles=1, updates_per_step=2).unwrapped
    env.reset(seed=0)
    for _ in range(3):  # phase 0 trains normally and is reserved
        env.step(KEEP)
    assert len(env.bank) == 1 and _bank_is_finite(env.bank)
    with torch.no_grad():  # a diverged head: every loss is NaN from here on
        env.learner.head.weight.fill_(float("nan"))
    infos = [env.step(KEEP)[-1] for _ in range(3)]
    assert [i["skipped_updates"] for i in infos] == [2, 2, 2]
    assert all(math.isfinite(i["accuracy"]) for i in infos)
    assert infos[-1]["phase_end"] == 1 and infos[-1]["reserve_skipped"] == 1
    assert len(env.bank) == 1 and _bank_is_finite(env.bank)  # the NaN subspace was not stored
    # NaN LoRA factors (compress_lora refuses them) are skipped the same way.
    for _a, b, _ in env.learner._lora:
        with torch.no_grad():
            b.fill_(float("inf"))
    infos = [env.step(KEEP)[-1] for _ in range(3)]
    assert infos[-1]["reserve_skipped"] == 1 and len(env.bank) == 1 and _bank_is_finite(env.bank)
    # A fresh subspace trains and is stored again.
    obs, reward, *_, info = env.step(FRESH)
    assert info["skipped_updates"] == 0 and math.isfinite(reward)
    infos = [env.step(KEEP)[-1] for _ in range(2)]
    assert infos[-1]["reserve_skipped"] == 0 and len(env.bank) == 2 and _bank_is_finite(env.bank)
    assert env.observation_space.contains(obs)
    env.close()


def test_the_bank_itself_refuses_non_finite_tensors(tmp_path):
    bank = TaskKnowledgeBank(2, 3)
    bad = BankEntry(np.ones(3, np.float32), {"w": torch.tensor([1.0, float("nan")])}, 0, [0])
    with pytest.raises(ValueError, match="NaN or inf"):
        bank.insert(bad, 0)
    with pytest.raises(ValueError, match="finite"):
        bank.insert(BankEntry(np.array([1, np.inf, 0], np.float32), {}, 0, [0]), 0)
    # finite entries whose sum overflows are finite (the one-reduction check falls back)
    big = BankEntry(np.ones(3, np.float32), {"w": torch.full((4,), 3e38)}, 0, [0])
    assert bank.insert(big, 0)[0] == 0
    with pytest.raises(ValueError, match="NaN or inf"):
        bank.insert(BankEntry(np.ones(3, np.float32), {"w": torch.tensor([-np.inf, np.inf])},
                              1, [1]), 0)
    assert len(bank) == 1


# ----------------------------------------------------------------------------- bank geometry


STORED_ACCURACY: dict[int, float] = {}  # task -> accuracy of its compressed entry when saved


@pytest.fixture(scope="module")
def saved_torch_bank(tmp_path_factory) -> Path:
    env = gym.make(ENV, **SMALL, updates_per_step=3).unwrapped
    env.reset(seed=0)
    done = False
    while not done:
        _, _, done, _, info = env.step(KEEP)
        if info["phase_end"]:
            STORED_ACCURACY[info["task_id"]] = info["accuracy"] - info["truncation_gap"]
    path = tmp_path_factory.mktemp("banks") / "torch_bank"
    env.save_bank(path)
    env.close()
    return path


def test_saved_bank_round_trips_into_a_matching_env(saved_torch_bank):
    env = gym.make(ENV, **SMALL).unwrapped
    with pytest.raises(ResetNeeded):
        env.load_bank(saved_torch_bank)
    obs, _ = env.reset(seed=3, options={"bank": saved_torch_bank})
    assert len(env.bank) == 5 and obs["occupied"].all()
    assert env.observation_space.contains(obs)  # ages re-based to this episode: within [0, 1]
    stored = TaskKnowledgeBank.load(saved_torch_bank)
    assert [e.owner for e in env.bank.slots] == [e.owner for e in stored.slots]
    slot = env.bank.slot_of_owner(0)
    obs, _, _, _, info = env.step(LOAD_OFFSET + slot)
    assert info["switched"] == 1  # the stored subspace computes what it did when it was saved
    assert info["zero_shot_accuracy"] == pytest.approx(STORED_ACCURACY[0], abs=1e-6)
    env.load_bank(saved_torch_bank)  # mid-episode too
    assert env.observation_space.contains(env._get_obs())
    env.close()


#: (env kwargs that differ from the saved bank's, fragment the error must name).
MISMATCHES = [
    (dict(learner={"backbone_seed": 1}), "backbone_seed is 0 in the bank, 1 here"),
    (dict(learner={"hidden": [32, 32]}), "layer0.B is (64,"),
    (dict(learner={"lora_rank": 2}), "lora_rank"),
    (dict(capacity=3), "capacity=3"),
    (dict(tasks="permuted_digits"), "head.weight"),
    (dict(backend="analytic"), "backend is 'torch' in the bank, 'analytic' here"),
]


@pytest.mark.parametrize("kwargs,message", MISMATCHES, ids=[str(k) for k, _ in MISMATCHES])
def test_bank_for_another_geometry_is_refused(saved_torch_bank, kwargs, message):
    env = gym.make(ENV, **{**SMALL, **kwargs}).unwrapped
    with pytest.raises(BankFormatError, match="does not fit the env") as info:
        env.reset(seed=0, options={"bank": saved_torch_bank})
    assert message in str(info.value) and str(saved_torch_bank) in str(info.value)
    env.close()


def test_shapes_are_checked_without_geometry_file(saved_torch_bank, tmp_path):
    bare = tmp_path / "bare"
    TaskKnowledgeBank.load(saved_torch_bank).save(bare)  # a bank saved without the env
    assert not (bare / "geometry.json").exists()
    env = gym.make(ENV, **{**SMALL, "learner": {"hidden": [32, 32]}}).unwrapped
    with pytest.raises(BankFormatError, match=r"layer0.B is \(64, \d\), this backbone needs"):
        env.reset(seed=0, options={"bank": bare})
    env.close()
    (saved_torch_bank.parent / "broken").mkdir()
    TaskKnowledgeBank.load(saved_torch_bank).save(saved_torch_bank.parent / "broken")
    (saved_torch_bank.parent / "broken" / "geometry.json").write_text("{oops")
    env = gym.make(ENV, **SMALL).unwrapped
    with pytest.raises(BankFormatError, match="geometry.json: not valid JSON"):
        env.reset(seed=0, options={"bank": saved_torch_bank.parent / "broken"})
    env.close()


def test_figures_for_the_issue_note():
    """Keeps the counts quoted in the issue note next to the lists they come from."""
    assert len(INVALID_ENV_KWARGS) + len(INVALID_ACTIONS) + len(INVALID_CLI_ARGS) + \
        len(MISMATCHES) >= 70
    assert nsr_gym.BankFormatError is BankFormatError
