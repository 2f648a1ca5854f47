"""Property tests: any action sequence keeps the env's invariants (both backends), and a bank file
corrupted in any way is rejected (or, for a change that leaves its content as it was, loads that
same content: never a silently different bank).

The compress/decompress error = Eckart-Young tail property is in tests/test_bank.py
(``test_property_eckart_young_error``), as are 14 named corruptions; ``EXTRA_CORRUPTIONS`` here adds
the kinds those miss, and the exhaustive tests flip every bit position of the manifest (one bit
per byte) and truncate it at every length.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym import LOAD_OFFSET
from nsr_gym.atomic import sha256_file
from nsr_gym.bank import BankEntry, BankFormatError, TaskKnowledgeBank, compress_lora
from nsr_gym.bank.files import entry_sha256, manifest_sha256

ENV = "nsr_gym/CyclicSplitDigits-v0"
_ENVS: dict[tuple, gym.Env] = {}


def _env(backend: str, capacity: int, eviction: str) -> gym.Env:
    """One env per setting for the whole module: building is the slow part, reset is cheap."""
    key = (backend, capacity, eviction)
    if key not in _ENVS:
        _ENVS[key] = gym.make(ENV, backend=backend, capacity=capacity, eviction=eviction,
                              phase_length=2, n_cycles=2).unwrapped
    return _ENVS[key]


def _max_entry_bytes(env) -> int:
    """The largest entry the learner can produce: full LoRA rank, the head and the key."""
    learner = env.learner
    if env.backend == "torch":
        lora = sum(a.numel() + b.numel() for a, b, _ in learner._lora)
        head = sum(p.numel() for p in learner.head.parameters())
        return 4 * (lora + head + learner.key_dim)
    return 8 * learner.n_tasks + 4 * learner.key_dim  # float64 experience vector, float32 key


def _check_invariants(env, obs, reward, info, action: int, was_occupied: np.ndarray) -> None:
    K = env.capacity
    assert env.observation_space.contains(obs), obs
    assert all(v.dtype == np.float32 for v in obs.values())
    assert math.isfinite(reward)
    assert 0.0 <= info["accuracy"] <= 1.0
    occupied = env.bank.occupied()
    mask = env.action_masks()
    assert mask.dtype == bool and mask.tolist() == [True, True] + occupied.tolist()
    assert np.array_equal(info["action_mask"], mask)
    assert np.array_equal(obs["occupied"], occupied.astype(np.float32))
    assert np.all(obs["similarity"][~occupied] == 0.0)
    active = obs["active"]
    assert active.sum() == 1.0 and (active.argmax() == 0 or occupied[active.argmax() - 1])
    assert info["bank_entries"] == len(env.bank) == occupied.sum() <= K
    assert info["bank_bytes"] == env.bank.total_bytes <= K * _max_entry_bytes(env)
    expect_invalid = action >= LOAD_OFFSET and not was_occupied[action - LOAD_OFFSET]
    assert info["invalid_load"] == int(expect_invalid)
    assert info["switched"] == int(action == 1 or (action >= LOAD_OFFSET and not expect_invalid))
    for e in env.bank.slots:
        if e is not None:
            assert all(bool(torch.isfinite(t).all()) for t in e.tensors.values())


_BAD_ACTIONS = st.sampled_from([-1, 99, 0.5, float("nan"), "0", None, [0, 1]])


def _episode(backend: str, data) -> None:
    capacity = data.draw(st.sampled_from([1, 2, 5]), label="capacity")
    eviction = data.draw(st.sampled_from(["lru", "lfu", "least_unique", "reject"]), label="ev")
    env = _env(backend, capacity, eviction)
    obs, info = env.reset(seed=data.draw(st.integers(0, 2**16), label="seed"))
    assert env.observation_space.contains(obs)
    done = False
    while not done:
        if data.draw(st.integers(0, 9), label="try invalid") == 0:
            t = env._t
            with pytest.raises(ValueError, match="action"):
                env.step(data.draw(_BAD_ACTIONS, label="bad action"))
            assert env._t == t
        action = data.draw(st.integers(0, capacity + 1), label="action")
        was_occupied = env.bank.occupied()
        obs, reward, terminated, truncated, info = env.step(action)
        _check_invariants(env, obs, reward, info, action, was_occupied)
        assert not truncated and isinstance(terminated, bool)
        done = terminated
    assert env._t == env.n_steps


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_action_sequence_keeps_the_invariants_analytic(data):
    _episode("analytic", data)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_action_sequence_keeps_the_invariants_torch(data):
    _episode("torch", data)


# ----------------------------------------------------------------------------- corrupted banks


def _bank() -> TaskKnowledgeBank:
    bank = TaskKnowledgeBank(4, 3, "lfu")
    g = torch.Generator().manual_seed(0)
    b, a = compress_lora(torch.randn(16, 4, generator=g), torch.randn(4, 10, generator=g), rank=3)
    bank.insert(BankEntry(np.array([1, 2, 3], np.float32), {"B": b, "A": a}, 7, [7]), step=2)
    bank.insert(BankEntry(np.array([0, 1, 0], np.float32), {"head": torch.ones(2, 3)}, 8, [8, 3]),
                step=5)
    bank.touch(1, 9)
    bank.pin(0)
    return bank


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    _bank().save(tmp_path / "bank")
    return tmp_path / "bank"


def _content(bank: TaskKnowledgeBank) -> list:
    """Everything a bank holds, comparable with ==."""
    out: list = [bank.capacity, bank.key_dim, bank.eviction, bank.next_inserted_order]
    for e in bank.slots:
        if e is None:
            out.append(None)
            continue
        tensors = {n: (t.dtype, tuple(t.shape), t.numpy().tobytes()) for n, t in e.tensors.items()}
        out.append((e.key.tobytes(), e.owner, e.tasks_served, e.usage, e.created_step,
                    e.last_used_step, e.inserted_order, e.pinned, tensors))
    return out


def _reseal(root: Path, edit_manifest=None, edit_tensors=None) -> None:
    """Change the bank and recompute every checksum, so only the semantic checks can object."""
    manifest = json.loads((root / "manifest.json").read_text())
    tensors = load_file(str(root / "bank.safetensors"))
    if edit_tensors is not None:
        edit_tensors(tensors, manifest)
        save_file(tensors, str(root / "bank.safetensors"))
    for e in manifest["entries"]:
        prefix = f"slot{e['slot']}/"
        named = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
        e["sha256"] = entry_sha256(named)
    manifest["safetensors_sha256"] = sha256_file(root / "bank.safetensors")
    if edit_manifest is not None:
        edit_manifest(manifest)
    manifest["manifest_sha256"] = manifest_sha256(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _set_entry(field: str, value):
    return lambda r: _reseal(r, lambda m: m["entries"][0].update({field: value}))


def _set(field: str, value):
    return lambda r: _reseal(r, lambda m: m.update({field: value}))


def _drop_key(t, m):
    del t["slot0/__key__"]
    del m["entries"][0]["tensors"]["__key__"]


def _key_shape(t, m):
    t["slot0/__key__"] = torch.zeros(4)
    m["entries"][0]["tensors"]["__key__"]["shape"] = [4]


def _nan(name: str):
    def edit(t, m):
        t[name] = t[name].clone()
        t[name].view(-1)[0] = float("nan")
    return edit


def _replace_text(old: str, new: str):
    """Edit the manifest's text without resealing: what a flipped byte does."""
    def corrupt(r: Path) -> None:
        text = (r / "manifest.json").read_text()
        assert text.count(old) >= 1, old
        (r / "manifest.json").write_text(text.replace(old, new, 1))
    return corrupt


def _other_bank_tensors(r: Path) -> None:
    other = TaskKnowledgeBank(4, 3, "lfu")
    other.insert(BankEntry(np.array([1, 2, 3], np.float32), {"B": torch.zeros(16, 3),
                                                             "A": torch.zeros(3, 10)}, 7, [7]), 2)
    other.save(r.parent / "other")
    (r / "bank.safetensors").write_bytes((r.parent / "other" / "bank.safetensors").read_bytes())


#: Kinds that tests/test_bank.py's CORRUPTIONS do not cover: (corruption, message fragment).
EXTRA_CORRUPTIONS = {
    "empty_tensor_file": (lambda r: (r / "bank.safetensors").write_bytes(b""), "truncated"),
    "appended_bytes": (lambda r: (r / "bank.safetensors").write_bytes(
        (r / "bank.safetensors").read_bytes() + b"\0"), "truncated or modified"),
    "tensors_of_another_bank": (_other_bank_tensors, "truncated or modified"),
    "tensor_file_is_a_directory": (lambda r: ((r / "bank.safetensors").unlink(),
                                              (r / "bank.safetensors").mkdir()), "missing"),
    "empty_manifest": (lambda r: (r / "manifest.json").write_text(""), "not valid JSON"),
    "manifest_not_utf8": (lambda r: (r / "manifest.json").write_bytes(b"\xff\xfe{"),
                          "not valid JSON"),
    "manifest_is_a_list": (lambda r: (r / "manifest.json").write_text("[1, 2]"),
                           "no format_version"),
    "version_as_string": (_set("format_version", "2"), "unknown format_version"),
    "version_as_bool": (_set("format_version", True), "unknown format_version"),
    "capacity_zero": (_set("capacity", 0), "bad bank parameters"),
    "unknown_eviction": (_set("eviction", "random"), "bad bank parameters"),
    "entries_not_a_list": (_set("entries", {"0": 1}), "'entries'"),
    "missing_file_checksum": (lambda r: _reseal(r, lambda m: m.pop("safetensors_sha256")),
                              "safetensors_sha256"),
    "slot_out_of_range": (_set_entry("slot", 9), "out of range or repeated"),
    "slot_repeated": (lambda r: _reseal(r, lambda m: m["entries"][1].update(slot=0)),
                      "out of range or repeated"),
    "pinned_not_bool": (_set_entry("pinned", 1), "'pinned'"),
    "usage_float": (_set_entry("usage", 1.5), "'usage'"),
    "tasks_served_not_ints": (_set_entry("tasks_served", ["7"]), "tasks_served"),
    "missing_key_tensor": (lambda r: _reseal(r, edit_tensors=_drop_key), "__key__"),
    "key_wrong_shape": (lambda r: _reseal(r, edit_tensors=_key_shape), "__key__"),
    "nan_key": (lambda r: _reseal(r, edit_tensors=_nan("slot0/__key__")), "NaN or inf"),
    "nan_payload": (lambda r: _reseal(r, edit_tensors=_nan("slot0/B")), "NaN or inf"),
    # One changed byte in the metadata: only the manifest's own checksum can see these.
    "owner_digit": (_replace_text('"owner": 7', '"owner": 6'), "manifest_sha256"),
    "usage_digit": (_replace_text('"usage": 0', '"usage": 1'), "manifest_sha256"),
    "step_digit": (_replace_text('"last_used_step": 9', '"last_used_step": 8'),
                   "manifest_sha256"),
    "pinned_flag": (_replace_text('"pinned": true', '"pinned": fals'), "not valid JSON"),
    "version_downgrade": (_replace_text('"format_version": 2', '"format_version": 1'),
                          "manifest_sha256"),
    "eviction_letter": (_replace_text('"lfu"', '"lru"'), "manifest_sha256"),
    "checksum_removed_and_renamed": (_replace_text('"manifest_sha256"', '"manifest_sha257"'),
                                     "manifest_sha256"),
}


@pytest.mark.parametrize("case", sorted(EXTRA_CORRUPTIONS))
def test_extra_corruptions_are_rejected(saved: Path, case: str):
    corrupt, message = EXTRA_CORRUPTIONS[case]
    corrupt(saved)
    with pytest.raises(BankFormatError, match=message) as info:
        TaskKnowledgeBank.load(saved)
    assert str(saved) in str(info.value)


def _flip_every_byte(saved: Path, name: str, stride: int = 1) -> tuple[int, int]:
    """Flip one bit of every ``stride``-th byte of ``name``; returns (variants, rejected).

    A flip must be rejected, or load the very same content (JSON whitespace changed into other
    whitespace): never a different bank."""
    want = _content(TaskKnowledgeBank.load(saved))
    path = saved / name
    original = path.read_bytes()
    tried = rejected = 0
    for i in range(0, len(original), stride):
        data = bytearray(original)
        data[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(data))
        tried += 1
        try:
            got = TaskKnowledgeBank.load(saved)
        except BankFormatError:
            rejected += 1
            continue
        assert _content(got) == want, f"byte {i} of {name}: silently different bank"
        assert chr(original[i]).isspace() and chr(data[i]).isspace(), (i, original[i], data[i])
    path.write_bytes(original)
    return tried, rejected


@pytest.mark.slow
def test_every_single_byte_flip_is_detected(saved: Path):
    tried, rejected = _flip_every_byte(saved, "manifest.json")
    assert tried > 1000 and rejected >= tried - 300  # only whitespace-to-whitespace may pass
    tried, rejected = _flip_every_byte(saved, "bank.safetensors", stride=7)
    assert tried == rejected > 50  # the file checksum catches every flip in the tensors


def test_every_truncation_is_detected(saved: Path):
    for name, stride in (("manifest.json", 3), ("bank.safetensors", 11)):
        path = saved / name
        original = path.read_bytes()
        for n in range(0, len(original), stride):
            path.write_bytes(original[:n])
            with pytest.raises(BankFormatError):
                TaskKnowledgeBank.load(saved)
        path.write_bytes(original)
    assert _content(TaskKnowledgeBank.load(saved)) == _content(_bank())
