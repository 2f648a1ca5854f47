"""Tests for nsr_gym.interchange: bank entries <-> standard peft adapter directories."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym.bank import BankFormatError, TaskKnowledgeBank
from nsr_gym.interchange import BackboneSpec, export_adapter, import_adapter, load_peft_model
from nsr_gym.learners.torch_learner import build_backbone

TOL = 1e-6


@pytest.fixture(scope="module")
def trained():
    """A torch env after one short episode: five trained, compressed entries in its bank."""
    env = gym.make("nsr_gym/CyclicSplitDigits-v0", phase_length=4, n_cycles=1,
                   updates_per_step=3).unwrapped
    env.reset(seed=0)
    done = False
    while not done:
        done = env.step(0)[2]
    yield env
    env.close()


@pytest.fixture(scope="module")
def x(trained) -> torch.Tensor:
    return torch.as_tensor(trained.learner.tasks[0].x_test[:50])


def _learner_logits(env, payload, x) -> torch.Tensor:
    """What the env's learner computes with ``payload`` as its active subspace."""
    env.learner.load(payload)
    with torch.no_grad():
        return env.learner.head(env.learner.model(x))


def test_export_loads_with_peft_from_pretrained_and_gives_the_same_outputs(trained, x, tmp_path):
    spec = BackboneSpec.of(trained.learner)
    assert spec == BackboneSpec(64, (64, 32), 0)
    for slot in range(len(trained.bank)):
        entry = trained.bank.get(slot)
        root = export_adapter(entry, tmp_path / f"slot{slot}", spec)
        assert {"adapter_config.json", "adapter_model.safetensors", "head.safetensors",
                "nsr_gym.json"} <= {p.name for p in root.iterdir()}
        # peft's own key naming, per-layer ranks of the compressed entry.
        ranks = [int(entry.tensors[f"layer{i}.A"].shape[0]) for i in range(2)]
        assert {k: tuple(v.shape) for k, v in load_file(str(root / "adapter_model.safetensors"))
                .items()} == {"base_model.model.0.lora_A.weight": (ranks[0], 64),
                              "base_model.model.0.lora_B.weight": (64, ranks[0]),
                              "base_model.model.2.lora_A.weight": (ranks[1], 64),
                              "base_model.model.2.lora_B.weight": (32, ranks[1])}
        # The standard call, on a backbone built independently of the learner.
        model = PeftModel.from_pretrained(build_backbone(64, (64, 32), 0), str(root))
        head = load_file(str(root / "head.safetensors"))
        with torch.no_grad():
            got = model(x) @ head["weight"].T + head["bias"]
        want = _learner_logits(trained, entry.tensors, x)
        assert got.abs().max() > 0.1 and (got - want).abs().max().item() <= TOL
        model2, head2 = load_peft_model(root, spec)  # the convenience wrapper agrees
        with torch.no_grad():
            assert torch.equal(head2(model2(x)), got)


def test_round_trip_is_bit_exact(trained, tmp_path):
    spec = BackboneSpec.of(trained.learner)
    entry = trained.bank.get(2)
    back = import_adapter(export_adapter(entry, tmp_path / "a", spec), spec)
    assert sorted(back.tensors) == sorted(entry.tensors)
    for name, t in entry.tensors.items():
        assert torch.equal(back.tensors[name], t), name
    assert back.key.tobytes() == entry.key.tobytes()
    assert (back.owner, back.tasks_served) == (entry.owner, entry.tasks_served)
    # It is a valid bank entry: insert, save, load.
    bank = TaskKnowledgeBank(2, spec.hidden[-1])
    bank.insert(back, step=0)
    bank.save(tmp_path / "bank")
    assert torch.equal(TaskKnowledgeBank.load(tmp_path / "bank").get(0).tensors["layer1.B"],
                       entry.tensors["layer1.B"])
    # Exporting a bare payload works too (no key stored: import needs one).
    export_adapter(entry.tensors, tmp_path / "p", spec)
    with pytest.raises(BankFormatError, match="key="):
        import_adapter(tmp_path / "p", spec)
    assert import_adapter(tmp_path / "p", spec, key=entry.key, owner=3).owner == 3


@pytest.mark.parametrize("r,alpha,rslora", [(3, 6.0, False), (4, 4.0, True), (2, 1.0, False)])
def test_import_of_a_foreign_peft_adapter_gives_the_same_outputs(trained, x, tmp_path, r, alpha,
                                                                 rslora):
    spec = BackboneSpec.of(trained.learner)
    g = torch.Generator().manual_seed(r)
    model = get_peft_model(spec.build(), LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora,
                                                    target_modules=["0", "2"], lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(str(tmp_path / "foreign"))
    head = (torch.randn(2, 32, generator=g), torch.randn(2, generator=g))
    key = np.ones(32, np.float32)
    entry = import_adapter(tmp_path / "foreign", spec, key=key, head=head, owner=1)
    assert entry.tensors["layer0.A"].shape == (r, 64) and entry.owner == 1
    with torch.no_grad():
        want = model(x) @ head[0].T + head[1]
    got = _learner_logits(trained, entry.tensors, x)
    assert (got - want).abs().max().item() <= TOL * max(1.0, want.abs().max().item())


def test_higher_rank_adapter_is_compressed_on_request(trained, tmp_path):
    spec = BackboneSpec.of(trained.learner)
    model = get_peft_model(spec.build(), LoraConfig(r=8, lora_alpha=8, target_modules=["0"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_pretrained(str(tmp_path / "r8"))
    head = (torch.zeros(2, 32), torch.zeros(2))
    full = import_adapter(tmp_path / "r8", spec, key=np.ones(32), head=head)
    assert full.tensors["layer0.A"].shape == (8, 64)
    assert not full.tensors["layer1.B"].any()  # layer "2" not targeted: a zero update
    small = import_adapter(tmp_path / "r8", spec, key=np.ones(32), head=head, max_rank=4)
    assert small.tensors["layer0.A"].shape == (4, 64)
    dense = full.tensors["layer0.B"] @ full.tensors["layer0.A"]
    s = torch.linalg.svdvals(dense.double())
    approx = small.tensors["layer0.B"] @ small.tensors["layer0.A"]
    err = torch.linalg.norm((dense - approx).double())
    assert err.item() == pytest.approx(s[4:].square().sum().sqrt().item(), rel=1e-4)


# ----------------------------------------------------------------------------- bad files


def _flip_last_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))


def _edit_json(p: Path, **changes) -> None:
    obj = json.loads(p.read_text())
    obj.update(changes)
    p.write_text(json.dumps(obj))


def _plain(root: Path) -> None:
    """Drop nsr_gym.json: a plain peft adapter (the key stays in head.safetensors), so no
    checksum stops an edit before the check under test."""
    (root / "nsr_gym.json").unlink()


def _nan_weights(root: Path) -> None:
    t = load_file(str(root / "adapter_model.safetensors"))
    t["base_model.model.0.lora_A.weight"][0, 0] = float("nan")
    save_file(t, str(root / "adapter_model.safetensors"))
    _plain(root)


def _wrong_shape(root: Path) -> None:
    t = load_file(str(root / "adapter_model.safetensors"))
    t["base_model.model.2.lora_B.weight"] = torch.zeros(16, t["base_model.model.2.lora_B.weight"]
                                                        .shape[1])
    save_file(t, str(root / "adapter_model.safetensors"))
    _plain(root)


def _foreign_key(root: Path) -> None:
    t = load_file(str(root / "adapter_model.safetensors"))
    t["base_model.model.1.lora_A.weight"] = torch.zeros(1, 64)
    save_file(t, str(root / "adapter_model.safetensors"))
    _plain(root)


def _plain_config(**changes):
    def corrupt(root: Path) -> None:
        _edit_json(root / "adapter_config.json", **changes)
        _plain(root)
    return corrupt


#: Corrupted or mismatched adapter directories: (corruption, message fragment).
BAD_ADAPTERS = {
    "missing_config": (lambda r: (r / "adapter_config.json").unlink(), "not a peft adapter"),
    "missing_weights": (lambda r: (r / "adapter_model.safetensors").unlink(), "missing"),
    "pickle_weights_only": (lambda r: (r / "adapter_model.safetensors").rename(
        r / "adapter_model.bin"), "pickle files are not loaded"),
    "flipped_weights": (lambda r: _flip_last_byte(r / "adapter_model.safetensors"), "sha256"),
    "flipped_head": (lambda r: _flip_last_byte(r / "head.safetensors"), "sha256"),
    "truncated_weights": (lambda r: (r / "adapter_model.safetensors").write_bytes(
        (r / "adapter_model.safetensors").read_bytes()[:50]), "sha256"),
    "bad_config_json": (lambda r: (_plain(r), (r / "adapter_config.json").write_text("{")),
                        "not valid JSON"),
    "bad_meta_json": (lambda r: (r / "nsr_gym.json").write_text("[1]"), "JSON object"),
    "unknown_version": (lambda r: _edit_json(r / "nsr_gym.json", format_version=9),
                        "format_version"),
    "other_backbone_seed": (lambda r: _edit_json(
        r / "nsr_gym.json", backbone={"input_dim": 64, "hidden": [64, 32], "backbone_seed": 1}),
        "backbone_seed"),
    "edited_config": (lambda r: _edit_json(r / "adapter_config.json", lora_alpha=7), "sha256"),
    "edited_owner": (lambda r: _edit_json(r / "nsr_gym.json", owner=4), "meta_sha256"),
    "dora": (_plain_config(use_dora=True), "use_dora"),
    "not_lora": (_plain_config(peft_type="IA3"), "LORA"),
    "bias": (_plain_config(bias="all"), "bias"),
    "modules_to_save": (_plain_config(modules_to_save=["1"]), "modules_to_save"),
    "nan_weights": (_nan_weights, "NaN"),
    "wrong_shape": (_wrong_shape, "does not fit"),
    "foreign_module": (_foreign_key, "not a LoRA factor"),
}


@pytest.mark.parametrize("case", sorted(BAD_ADAPTERS))
def test_bad_adapter_directories_raise_bank_format_error(trained, tmp_path, case):
    spec = BackboneSpec.of(trained.learner)
    root = export_adapter(trained.bank.get(0), tmp_path / "a", spec)
    corrupt, message = BAD_ADAPTERS[case]
    corrupt(root)
    with pytest.raises(BankFormatError, match=message) as info:
        import_adapter(root, spec)
    assert str(root) in str(info.value)


def test_adapter_for_another_backbone_is_refused(trained, tmp_path):
    spec = BackboneSpec.of(trained.learner)
    root = export_adapter(trained.bank.get(0), tmp_path / "a", spec)
    with pytest.raises(BankFormatError, match="backbone"):
        import_adapter(root, BackboneSpec(64, (128, 32), 0))
    (root / "nsr_gym.json").unlink()  # a plain peft adapter: the shapes still say no
    with pytest.raises(BankFormatError, match="does not fit"):
        import_adapter(root, BackboneSpec(64, (128, 32), 0), key=np.ones(32))


def test_export_rejects_bad_payloads_and_never_clobbers(trained, tmp_path):
    spec = BackboneSpec.of(trained.learner)
    entry = trained.bank.get(0)
    bad_shape = {**entry.tensors, "layer0.B": torch.zeros(32, 2)}
    with pytest.raises(ValueError, match="do not fit"):
        export_adapter(bad_shape, tmp_path / "x", spec)
    with pytest.raises(ValueError, match="NaN"):
        export_adapter({**entry.tensors, "head.bias": torch.tensor([0.0, float("inf")])},
                       tmp_path / "x", spec)
    with pytest.raises(ValueError, match="expected tensors"):
        export_adapter({"h": torch.zeros(5)}, tmp_path / "x", spec)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        export_adapter(entry, tmp_path / "mine", spec)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "x").exists()
    export_adapter(entry, tmp_path / "a", spec)
    export_adapter(trained.bank.get(1), tmp_path / "a", spec)  # replacing an adapter is fine
    assert import_adapter(tmp_path / "a", spec).owner == trained.bank.get(1).owner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "mine"]  # no temporaries left


def test_every_single_bit_flip_in_the_metadata_is_detected(trained, tmp_path):
    """nsr_gym.json checksums itself and the other files: one flipped bit in either JSON file
    (every byte of nsr_gym.json, every other byte of adapter_config.json) is an error, never a
    silently different entry."""
    spec = BackboneSpec.of(trained.learner)
    root = export_adapter(trained.bank.get(0), tmp_path / "a", spec)
    tried = 0
    for name, stride in (("nsr_gym.json", 1), ("adapter_config.json", 2)):
        original = (root / name).read_bytes()
        for i in range(0, len(original), stride):
            data = bytearray(original)
            data[i] ^= 1 << (i % 8)
            (root / name).write_bytes(bytes(data))
            with pytest.raises(BankFormatError):
                import_adapter(root, spec)
            tried += 1
        (root / name).write_bytes(original)
    assert tried > 1000
    assert torch.equal(import_adapter(root, spec).tensors["layer0.A"],
                       trained.bank.get(0).tensors["layer0.A"])
