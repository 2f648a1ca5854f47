"""The fast torch path computes the peft reference path's learner: same seed, same trajectory.

Tolerance: accuracies must agree to 1e-6 (one held-out example is ~1e-2, so this means the same
predictions) and losses to 1e-5 relative. On the MLP the two paths agree bit for bit on CPU (the
fast path runs the same kernels in the same order), which the tests assert too. The ViT's fast
path merges each adapter into its weight (``W + s B A``), the same function to float rounding:
over a full 150-step cycle its accuracies equal the peft path's and its losses differ by < 3e-7.
"""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch

import nsr_gym
from nsr_gym.data import permuted_digits, split_digits
from nsr_gym.learners import TorchLearner, TorchLearnerConfig
from nsr_gym.learners.fast import FlatAdam

ACC_TOL, LOSS_RTOL = 1e-6, 1e-5


def _rollout(env_id: str, fast: bool, seed: int = 3, **kw) -> np.ndarray:
    """(accuracy, zero-shot accuracy, reward, loss, truncation gap) per step under a fixed
    action stream with fresh starts and loads, so every learner method is exercised."""
    # a variant's own learner options stay under the user's (the ViT's backbone)
    registered = gym.spec(env_id).kwargs.get("learner_defaults", {})
    learner = {**kw.pop("learner", {}), "fast": fast}
    env = gym.make(env_id, learner=learner, **kw)
    assert env.unwrapped.learner.config.backbone == registered.get("backbone", "mlp")
    rng = np.random.default_rng(11)
    _, info = env.reset(seed=seed)
    rows, done = [], False
    while not done:
        a = int(rng.integers(env.action_space.n)) if rng.random() < 0.3 else 0
        if not info["action_mask"][a]:
            a = 0
        _, reward, terminated, truncated, info = env.step(a)
        rows.append((info["accuracy"], info["zero_shot_accuracy"], reward, info["loss"],
                     info["truncation_gap"]))
        done = terminated or truncated
    env.close()
    return np.array(rows)


def _assert_same(fast: np.ndarray, ref: np.ndarray) -> None:
    np.testing.assert_allclose(fast[:, [0, 1, 2, 4]], ref[:, [0, 1, 2, 4]], rtol=0, atol=ACC_TOL)
    np.testing.assert_allclose(fast[:, 3], ref[:, 3], rtol=LOSS_RTOL)


def test_mlp_fast_path_equals_peft_path_bitwise():
    kw = dict(phase_length=5, n_cycles=2)
    ref = _rollout("nsr_gym/CyclicSplitDigits-v0", fast=False, **kw)
    fast = _rollout("nsr_gym/CyclicSplitDigits-v0", fast=True, **kw)
    _assert_same(fast, ref)
    assert np.array_equal(fast, ref)  # on CPU: bit for bit


@pytest.mark.parametrize("options", [
    dict(train_adapters=False),                      # head-only control
    dict(lora_rank=3, lora_alpha=6.0),               # scaling s = 2: the multiply is not skipped
    dict(compression_rank=1, hidden=(48, 24, 16)),   # truncating bank, three adapted layers
])
def test_mlp_fast_path_equals_peft_path_across_options(options):
    kw = dict(phase_length=4, n_cycles=1, learner=options)
    _assert_same(_rollout("nsr_gym/CyclicSplitDigits-v0", fast=True, **copy.deepcopy(kw)),
                 _rollout("nsr_gym/CyclicSplitDigits-v0", fast=False, **copy.deepcopy(kw)))


def test_vit_variant_fast_path_equals_peft_path():
    kw = dict(phase_length=2, n_cycles=1)
    ref = _rollout("nsr_gym/CyclicSplitDigitsViT-v0", fast=False, **kw)
    fast = _rollout("nsr_gym/CyclicSplitDigitsViT-v0", fast=True, **kw)
    _assert_same(fast, ref)


def test_vit_variant_is_registered_and_runs_on_both_backends():
    assert "CyclicSplitDigitsViT" in nsr_gym.BENCHMARKS
    # the registered backbone options do not apply to the analytic backend
    env = gym.make("nsr_gym/CyclicSplitDigitsViT-v0", backend="analytic")
    env.reset(seed=0)
    env.step(0)
    env.close()
    learner = TorchLearner(split_digits(5), TorchLearnerConfig(backbone="vit"))
    assert learner.key_dim == 32 and len(learner._lora) == 8  # qkv/proj/fc1/fc2 of 2 blocks
    trainable = {n for n, p in learner.model.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in n and ("blocks.10." in n or "blocks.11." in n) for n in trainable)


def test_mixed_class_counts_slice_the_head_identically():
    tasks = split_digits(5)[:2] + permuted_digits(2)  # 2- and 10-class tasks share a 10-wide head
    out = {}
    for fast in (False, True):
        learner = TorchLearner(tasks, TorchLearnerConfig(fast=fast))
        learner.reset(np.random.default_rng(0))
        out[fast] = [(learner.train(t, 3).loss, learner.evaluate(t)) for t in (0, 2, 1, 3)]
    assert out[True] == out[False]


def test_hand_written_gradients_equal_autograd():
    learner = TorchLearner(split_digits(5), TorchLearnerConfig(fast=True, hidden=(32, 16)))
    learner.reset(np.random.default_rng(5))
    learner.train(0, 3)  # nonzero B, so every gradient term is live
    x, y = learner._data[0][0][:32], learner._data[0][1][:32]
    grads = [torch.empty_like(p) for p in learner.optimizer.params]
    loss = learner._fast.mlp_loss_and_grads(x, y, 2, grads, adapters=True)
    ref_loss = torch.nn.functional.cross_entropy(learner.head(learner.model(x))[:, :2], y)
    ref = torch.autograd.grad(ref_loss, learner.optimizer.params)
    assert torch.equal(loss, ref_loss.detach())
    assert all(torch.equal(g, r) for g, r in zip(grads, ref, strict=True))


def test_flat_adam_equals_torch_adam():
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 7), (7,), (3, 4)]
    ref = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    mine = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    torch_adam, flat = torch.optim.Adam(ref, lr=1e-2), FlatAdam(mine, lr=1e-2)
    for _ in range(5):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for p, g in zip(ref, grads, strict=True):
            p.grad = g.clone()
        torch_adam.step()
        assert flat.step(tuple(grads))
    assert all(torch.equal(a, b) for a, b in zip(ref, mine, strict=True))
    assert not flat.step(tuple(torch.full(s, float("nan")) for s in shapes))  # skipped
    assert all(torch.equal(a, b) for a, b in zip(ref, mine, strict=True))


@pytest.mark.parametrize("backbone", ["mlp", "vit"])
def test_pickled_fast_learner_continues_identically(backbone):
    learner = TorchLearner(split_digits(5), TorchLearnerConfig(backbone=backbone))
    learner.reset(np.random.default_rng(1))
    learner.train(0, 2)
    clone = pickle.loads(pickle.dumps(learner))
    for lr in (learner, clone):
        lr.train(0, 2)
    assert learner.evaluate(0) == clone.evaluate(0)
    assert torch.equal(learner.optimizer.flat, clone.optimizer.flat)
    # the clone's parameters are its own, and still views of its flat buffer
    with torch.no_grad():
        clone.head.bias.add_(1.0)
    assert not torch.equal(learner.head.bias, clone.head.bias)
    assert torch.equal(clone.optimizer.flat[-clone.head.bias.numel():], clone.head.bias)
