"""The torch learner (peft LoRA on a frozen backbone) and the analytic learner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsr_gym.data import split_digits
from nsr_gym.learners import AnalyticConfig, AnalyticLearner, TorchLearner, TorchLearnerConfig


@pytest.fixture(scope="module")
def learner() -> TorchLearner:
    return TorchLearner(split_digits(5))


def test_backbone_frozen_lora_through_peft(learner):
    from peft import PeftModel

    assert isinstance(learner.model, PeftModel)
    trainable = {n for n, p in learner.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen = [p.clone() for n, p in learner.model.named_parameters() if not p.requires_grad]
    learner.reset(np.random.default_rng(0))
    learner.train(0, 5)
    after = [p for n, p in learner.model.named_parameters() if not p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(frozen, after, strict=True))


def test_fresh_adapter_computes_the_backbone(learner):
    learner.reset(np.random.default_rng(1))
    x = learner._data[0][0][:8]
    with torch.no_grad():
        with learner.model.disable_adapter():
            base = learner.model(x)
        assert torch.allclose(learner.model(x), base)


def test_training_learns_and_snapshot_load_round_trip(learner):
    learner.reset(np.random.default_rng(2))
    before = learner.evaluate(1)
    learner.train(1, 40)
    trained = learner.evaluate(1)
    assert trained > max(before, 0.85)
    payload, gap = learner.snapshot(1)
    assert set(payload) == {"layer0.A", "layer0.B", "layer1.A", "layer1.B", "head.weight",
                            "head.bias"}
    assert abs(gap) < 0.1
    learner.fresh()
    learner.load(payload)
    assert learner.evaluate(1) == pytest.approx(trained - gap, abs=1e-9)


def test_fresh_and_load_draw_what_torch_rand_draws(learner):
    """Fresh adapters and heads, and a load's padding rows, are ``(torch.rand * 2 - 1) * bound``
    from the init generator, drawn in place: the values (and generator states) that every
    committed trajectory was made with."""
    learner.reset(np.random.default_rng(4))
    gen = torch.Generator()
    gen.set_state(learner._init_gen.get_state())

    def draw(t: torch.Tensor, bound: float) -> torch.Tensor:
        return (torch.rand(t.shape, generator=gen) * 2 - 1) * bound

    learner.fresh()
    for a, b, _ in learner._lora:
        assert torch.equal(a, draw(a, 1.0 / a.shape[1] ** 0.5)) and not b.any()
    bound = 1.0 / learner.head.in_features ** 0.5
    assert torch.equal(learner.head.weight, draw(learner.head.weight, bound))
    assert torch.equal(learner.head.bias, draw(learner.head.bias, bound))
    learner.train(0, 20)
    payload = {k: v.clone() for k, v in learner.snapshot(0)[0].items()}
    payload["layer0.B"], payload["layer0.A"] = payload["layer0.B"][:, :1], payload["layer0.A"][:1]
    learner.load(payload)
    for i, (a, b, scaling) in enumerate(learner._lora):
        k = payload[f"layer{i}.A"].shape[0]
        padded = draw(a, 1.0 / a.shape[1] ** 0.5)
        padded[:k] = payload[f"layer{i}.A"]
        assert torch.equal(a, padded)
        assert torch.equal(b[:, :k], payload[f"layer{i}.B"] / scaling) and not b[:, k:].any()
    assert torch.equal(learner._init_gen.get_state(), gen.get_state())


def test_embeddings_identify_tasks(learner):
    learner.reset(np.random.default_rng(3))
    keys = np.stack([learner.embed(t) for t in range(5)])
    probes = np.stack([learner.embed(t) for t in range(5)])
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    assert (np.argmax(p @ k.T, axis=1) == np.arange(5)).all()


def test_nan_loss_skips_the_update(learner):
    learner.reset(np.random.default_rng(4))
    with torch.no_grad():
        learner.head.weight.fill_(float("nan"))
    state = [p.clone() for a, b, _ in learner._lora for p in (a, b)]
    report = learner.train(0, 3)
    assert report.skipped == 3 and np.isnan(report.loss)
    params = [p for a, b, _ in learner._lora for p in (a, b)]
    assert all(torch.equal(s, p) for s, p in zip(state, params, strict=True))


def test_device_errors():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            TorchLearner(split_digits(5), TorchLearnerConfig(device="cuda"))
    with pytest.raises(ValueError, match="unknown device"):
        TorchLearner(split_digits(5), TorchLearnerConfig(device="tpu"))


def test_analytic_learner_follows_the_model():
    cfg = AnalyticConfig(a_star=0.9, D=0.4, tau=5.0, gamma=0.5, kappa=0.8)
    lr = AnalyticLearner(3, cfg)
    lr.reset(np.random.default_rng(0))
    lr.train(0, 2)
    assert lr.evaluate(0) == pytest.approx(0.9 - 0.4 * np.exp(-2 / 5))
    lr.train(1, 1)
    assert lr.h[0] == pytest.approx(1.0) and lr.h[1] == 1.0
    payload, gap = lr.snapshot(1)
    assert payload["h"].tolist() == pytest.approx([0.8, 0.8, 0.0])
    assert gap == pytest.approx((0.9 - 0.4 * np.exp(-1 / 5)) - (0.9 - 0.4 * np.exp(-0.8 / 5)))
    lr.fresh()
    assert lr.evaluate(0) == pytest.approx(0.5)
    lr.load(payload)
    assert lr.h.tolist() == pytest.approx([0.8, 0.8, 0.0])
    with pytest.raises(ValueError):
        AnalyticLearner(3, AnalyticConfig(tau=0.0))


def test_make_learner_builds_each_backend_and_checks_options():
    from nsr_gym.learners import make_learner

    torch_learner = make_learner("torch", {"hidden": [32, 16], "lr": 1e-2}, "split_digits", 5)
    assert isinstance(torch_learner, TorchLearner)
    assert torch_learner.config == TorchLearnerConfig(hidden=(32, 16), lr=1e-2)
    analytic = make_learner("analytic", {"tau": 3.0, "backbone": "vit"}, n_tasks=2)
    assert isinstance(analytic, AnalyticLearner) and analytic.n_tasks == 2
    assert analytic.config == AnalyticConfig(tau=3.0)  # network options do not apply to it
    with pytest.raises(ValueError, match=r"belong to the torch backend"):
        make_learner("analytic", {"lora_rank": 2})
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0"):
        make_learner("torch", {"lr": 0.0})
    with pytest.raises(ValueError, match=r"backend must be one of"):
        make_learner("jax")


def test_config_fields_have_one_home():
    """TorchLearnerConfig and PretrainedConfig share AdapterConfig's fields (and rules); the
    validation rules are read from the fields, never listed again."""
    import dataclasses

    from nsr_gym import validation
    from nsr_gym.learners.config import AdapterConfig, field_rules
    from nsr_gym.learners.pretrained import PretrainedConfig

    shared = {f.name for f in dataclasses.fields(AdapterConfig)}
    for cls in (TorchLearnerConfig, PretrainedConfig):
        assert issubclass(cls, AdapterConfig)
        assert set(field_rules(AdapterConfig)) <= set(field_rules(cls))
    assert PretrainedConfig().lr == 1e-3 and TorchLearnerConfig().lr == 5e-3
    assert set(validation.LEARNER_RULES["torch"]) == {f.name for f in
                                                      dataclasses.fields(TorchLearnerConfig)}
    assert shared <= set(validation.LEARNER_RULES["torch"])
    assert set(validation.LEARNER_RULES["analytic"]) == set(AnalyticConfig.__dataclass_fields__)


def test_batch_draws_serve_randints_stream():
    """Read-ahead batch indices equal one ``randint`` per update, whatever happens between them:
    a new range, another use of the generator (after ``settle``), a reseed (``discard``)."""
    from nsr_gym.learners.draws import BatchDraws

    # the premise: one long draw is the short draws concatenated, and leaves the same state
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    long = torch.randint(252, (5 * 32,), generator=g1)
    short = torch.cat([torch.randint(252, (32,), generator=g2) for _ in range(5)])
    assert torch.equal(long, short) and torch.equal(g1.get_state(), g2.get_state())

    gen, ref = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    draws = BatchDraws(gen, 8, most_ahead=4)
    rng = np.random.default_rng(0)
    high, furthest = 252, 0
    for step in range(300):
        if rng.random() < 0.05:  # another task
            high = 262 - high
        furthest = max(furthest, draws.ahead)
        assert torch.equal(draws.next(high), torch.randint(high, (8,), generator=ref)), step
        if rng.random() < 0.1:  # a probe between updates
            draws.settle()
            assert torch.equal(torch.randperm(50, generator=gen), torch.randperm(50, generator=ref))
        if rng.random() < 0.02:  # a reseed
            gen.manual_seed(step)
            ref.manual_seed(step)
            draws.discard()
    draws.settle()
    assert torch.equal(gen.get_state(), ref.get_state())
    assert furthest == 4  # it did read ahead, as far as allowed
