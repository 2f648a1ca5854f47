"""Bank files malformed in a self-consistent way (issue 15, bank part): every checksum recomputed
after the edit, so only validation can object. Each case of the issue's bank examples is a test
here: over-limit sizes refused before any allocation, deep or huge JSON, integer/bool payloads,
A/B ranks that disagree, negative counts, geometry.json outside the manifest, and the DiskBank's
manifest and index to the same standard."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import load_file, save_file

import nsr_gym  # noqa: F401 - registers the envs
from nsr_gym import KEEP
from nsr_gym.atomic import sha256_json
from nsr_gym.bank import BankEntry, BankFormatError, TaskKnowledgeBank, check_bank_fits
from nsr_gym.bank.checks import MAX_CAPACITY, MAX_KEY_BYTES
from nsr_gym.bank.disk import DiskBank
from nsr_gym.bank.files import entry_sha256, manifest_sha256

ENV = "nsr_gym/CyclicSplitDigits-v0"
SMALL = dict(phase_length=2, n_cycles=1)


# ----------------------------------------------------------------------------- helpers


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reseal(root: Path, edit_manifest=None, edit_tensors=None) -> None:
    """Edit a bank and recompute every checksum (anyone can: they are unkeyed)."""
    manifest = json.loads((root / "manifest.json").read_text())
    tensors = load_file(str(root / "bank.safetensors"))
    if edit_tensors is not None:
        edit_tensors(tensors, manifest)
        save_file(tensors, str(root / "bank.safetensors"))
    for e in manifest["entries"]:
        prefix = f"slot{e['slot']}/"
        e["sha256"] = entry_sha256({k[len(prefix):]: t for k, t in tensors.items()
                                    if k.startswith(prefix)})
    manifest["safetensors_sha256"] = _sha(root / "bank.safetensors")
    if edit_manifest is not None:
        edit_manifest(manifest)
    manifest["manifest_sha256"] = manifest_sha256(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _cast(name: str, dtype: torch.dtype):
    """Cast a stored tensor and say so in the manifest (a self-consistent lie)."""
    def edit(t, m):
        slot, tensor = name.split("/")
        t[name] = t[name].to(dtype)
        spec = m["entries"][[e["slot"] for e in m["entries"]].index(int(slot[4:]))]["tensors"]
        spec[tensor]["dtype"] = str(dtype).removeprefix("torch.")
    return edit


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    bank = TaskKnowledgeBank(4, 3, "lfu")
    bank.insert(BankEntry(np.array([1, 2, 3], np.float32),
                          {"layer0.B": torch.ones(5, 2), "layer0.A": torch.ones(2, 4)}, 0, [0]), 2)
    bank.insert(BankEntry(np.array([0, 1, 0], np.float32), {"head": torch.ones(2, 3)}, 1, [1]), 5)
    bank.save(tmp_path / "bank")
    return tmp_path / "bank"


@pytest.fixture(scope="module")
def env_bank(tmp_path_factory) -> Path:
    """A bank saved by a small torch env (with its geometry.json)."""
    env = gym.make(ENV, **SMALL).unwrapped
    env.reset(seed=0)
    done = False
    while not done:
        done = env.step(KEEP)[2]
    path = tmp_path_factory.mktemp("banks") / "torch"
    env.save_bank(path)
    env.close()
    return path


@pytest.fixture
def env_copy(env_bank: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(env_bank, tmp_path / "b")
    return tmp_path / "b"


def _load_into_env(path: Path, **kwargs):
    env = gym.make(ENV, **{**SMALL, **kwargs}).unwrapped
    try:
        return env.reset(seed=1, options={"bank": path})[0], env
    except BaseException:
        env.close()
        raise


# ----------------------------------------------------------------------------- sizes and JSON


@pytest.mark.parametrize("field,value,message", [
    ("capacity", 10**12, f"capacity is 1000000000000; it must be in \\[1, {MAX_CAPACITY}\\]"),
    ("key_dim", 10**9, "key_dim is 1000000000"),
    ("capacity", MAX_CAPACITY, f"over the limit of {MAX_KEY_BYTES:,} bytes"),
    ("capacity_bytes", 0, "capacity_bytes"),
    ("next_inserted_order", -1, "next_inserted_order"),
])
def test_declared_sizes_are_checked_before_allocating(saved, field, value, message):
    if field == "capacity" and value == MAX_CAPACITY:  # within the slot limit, over key bytes
        _reseal(saved, lambda m: m.update(capacity=value, key_dim=3000))
    else:
        _reseal(saved, lambda m: m.update({field: value}))
    with pytest.raises(BankFormatError, match=message) as info:
        TaskKnowledgeBank.load(saved)
    assert str(saved) in str(info.value)


@pytest.mark.parametrize("text,message", [
    ("[" * 5000 + "]" * 5000, "nesting deeper"),
    ('{"format_version": 2, "capacity": ' + "9" * 5000 + "}", "digits"),
    ('{"format_version": 2, "capacity": NaN}', "non-finite"),
], ids=["deep", "digits", "nan"])
@pytest.mark.parametrize("name", ["manifest.json", "geometry.json"])
def test_deep_or_huge_json_is_a_bank_format_error(env_copy, text, message, name):
    if name == "geometry.json":  # keep the manifest's coverage, so the JSON is what is wrong
        (env_copy / name).write_text(text)
        _reseal(env_copy, lambda m: m.update(geometry_sha256=_sha(env_copy / name)))
    else:
        (env_copy / name).write_text(text)
    with pytest.raises(BankFormatError, match=message) as info:
        TaskKnowledgeBank.load(env_copy)
    assert name in str(info.value)


# ----------------------------------------------------------------------------- payloads


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool, torch.int64,
                                   torch.bfloat16])
def test_integer_and_bool_payloads_are_refused(saved, dtype):
    _reseal(saved, edit_tensors=_cast("slot0/layer0.B", dtype))
    with pytest.raises(BankFormatError, match="integer and bool payloads are refused"):
        TaskKnowledgeBank.load(saved)


def test_float16_payloads_load_when_declared_and_not_otherwise(saved):
    _reseal(saved, edit_tensors=_cast("slot0/layer0.B", torch.float16))
    back = TaskKnowledgeBank.load(saved)
    assert back.get(0).tensors["layer0.B"].dtype == torch.float16
    assert back.get(0).nbytes == 5 * 2 * 2 + 2 * 4 * 4 + 3 * 4
    _reseal(saved, lambda m: m["entries"][0]["tensors"]["layer0.B"].update(dtype="float32"))
    with pytest.raises(BankFormatError, match="manifest says"):
        TaskKnowledgeBank.load(saved)


def test_the_env_refuses_payload_casts(env_copy):
    """The issue's case: int32/uint8/bool factors loaded silently and halved accuracy."""
    for dtype in (torch.int32, torch.uint8, torch.bool):
        _reseal(env_copy, edit_tensors=_cast("slot0/layer0.B", dtype))
        with pytest.raises(BankFormatError, match="refused"):
            _load_into_env(env_copy)


def test_rank_disagreement_is_refused_before_a_step(env_copy):
    def shrink_a(t, m):
        t["slot0/layer0.A"] = t["slot0/layer0.A"][:1].clone()
        m["entries"][0]["tensors"]["layer0.A"]["shape"][0] = 1
    ranks = json.loads((env_copy / "manifest.json").read_text())["entries"][0]["tensors"]
    assert ranks["layer0.A"]["shape"][0] > 1
    _reseal(env_copy, edit_tensors=shrink_a)
    with pytest.raises(BankFormatError, match="ranks must agree"):
        _load_into_env(env_copy)


def test_torch_learner_refuses_rank_disagreement_itself():
    env = gym.make(ENV, **SMALL).unwrapped
    env.reset(seed=0)
    payload, _ = env.learner.snapshot(0)
    payload["layer0.A"] = payload["layer0.A"][:1]
    if payload["layer0.B"].shape[1] == 1:
        payload["layer0.B"] = torch.cat([payload["layer0.B"]] * 2, 1)
    with pytest.raises(ValueError, match="ranks must agree"):
        env.learner.load(payload)
    env.close()


@pytest.mark.parametrize("field,value", [("usage", -1000), ("owner", -2),
                                         ("inserted_order", -1), ("tasks_served", [-3])])
def test_negative_counts_and_ids_are_refused(saved, field, value):
    _reseal(saved, lambda m: m["entries"][0].update({field: value}))
    with pytest.raises(BankFormatError, match=field):
        TaskKnowledgeBank.load(saved)


def test_what_the_bank_hands_the_env_lies_in_observation_space(env_copy):
    _reseal(env_copy, lambda m: [e.update(usage=10**15, last_used_step=-10**15)
                                 for e in m["entries"]])
    obs, env = _load_into_env(env_copy)
    assert env.observation_space.contains(obs)
    env.close()
    _reseal(env_copy, lambda m: m["entries"][0].update(owner=99, tasks_served=[99]))
    with pytest.raises(BankFormatError, match="tasks 0..4"):
        _load_into_env(env_copy)


def test_non_finite_values_are_refused(saved):
    def inf(t, m):
        t["slot1/head"] = t["slot1/head"].clone()
        t["slot1/head"][0, 0] = float("inf")
    _reseal(saved, edit_tensors=inf)
    with pytest.raises(BankFormatError, match="NaN or inf"):
        TaskKnowledgeBank.load(saved)


def test_the_bank_stores_only_what_it_can_load():
    bank = TaskKnowledgeBank(2, 3)
    for t in (torch.ones(2, dtype=torch.int32), torch.ones(2, dtype=torch.bool)):
        with pytest.raises(ValueError, match="payloads only"):
            bank.insert(BankEntry(np.ones(3, np.float32), {"w": t}, 0, [0]), 0)
    disk = DiskBank.create(Path(__import__("tempfile").mkdtemp()) / "d", key_dim=3)
    with pytest.raises(ValueError, match="payloads only"):
        disk.append_many(np.ones((1, 3)), [{"w": np.ones(2, np.int32)}], owners=[0])


# ----------------------------------------------------------------------------- geometry


def test_env_saved_geometry_is_covered_by_the_manifest(env_bank):
    manifest = json.loads((env_bank / "manifest.json").read_text())
    assert manifest["geometry_sha256"] == _sha(env_bank / "geometry.json")
    assert sorted(p.name for p in env_bank.iterdir()) == ["bank.safetensors", "geometry.json",
                                                          "manifest.json"]


def test_deleted_geometry_is_refused(env_copy):
    (env_copy / "geometry.json").unlink()
    with pytest.raises(BankFormatError, match="geometry.json: is missing"):
        _load_into_env(env_copy)


def test_replaced_geometry_is_refused(env_copy):
    """The issue's case: a bank of another backbone seed loaded with no error."""
    geo = json.loads((env_copy / "geometry.json").read_text())
    (env_copy / "geometry.json").write_text(json.dumps({**geo, "backbone_seed": 1}))
    with pytest.raises(BankFormatError, match="sha256 differs"):
        _load_into_env(env_copy, learner={"backbone_seed": 1})


def test_geometry_added_after_the_save_is_refused(saved):
    (saved / "geometry.json").write_text(json.dumps({"backend": "torch"}))
    with pytest.raises(BankFormatError, match="not covered by the manifest"):
        TaskKnowledgeBank.load(saved)


def test_stray_files_are_refused(saved):
    (saved / "notes.txt").write_text("hello")
    with pytest.raises(BankFormatError, match="no manifest covers"):
        TaskKnowledgeBank.load(saved)


def test_a_bank_saved_before_geometry_coverage_still_loads_with_a_warning(env_copy):
    _reseal(env_copy, lambda m: m.pop("geometry_sha256"))
    with pytest.warns(UserWarning, match="not covered"):
        obs, env = _load_into_env(env_copy)
    env.close()


def test_save_with_geometry_and_write_geometry_agree(saved, tmp_path):
    from nsr_gym.bank import write_geometry

    bank = TaskKnowledgeBank.load(saved)
    bank.save(tmp_path / "one", geometry={"backend": "torch", "capacity": 4})
    bank.save(tmp_path / "two")
    write_geometry(tmp_path / "two", {"backend": "torch", "capacity": 4})
    for name in ("manifest.json", "geometry.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank", "one", "two"]  # no temp dirs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TaskKnowledgeBank.load(tmp_path / "two")


def test_check_bank_fits_names_dtypes_per_backend(saved):
    class _Learner:
        key_dim, n_tasks, n_classes, config = 3, 5, 2, type("C", (), {"lora_rank": 4})()
        tasks = [type("T", (), {"input_dim": 4})()]

        def payload_shapes(self):
            return {"layer0.B": (5, None), "layer0.A": (None, 4)}
    bank = TaskKnowledgeBank(1, 3)
    wide = {"layer0.B": torch.ones(5, 2, dtype=torch.float64), "layer0.A": torch.ones(2, 4)}
    bank.insert(BankEntry(np.ones(3, np.float32), wide, 0, [0]), 0)
    with pytest.raises(BankFormatError, match=r"layer0.B \(float64\); a torch entry"):
        check_bank_fits(bank, saved, "torch", _Learner(), 1, 5)


# ----------------------------------------------------------------------------- property


_VALUES = st.one_of(st.integers(-(2**70), 2**70), st.booleans(), st.none(), st.text(max_size=3),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.lists(st.integers(-5, 5), max_size=3))
_FIELDS = ["capacity", "key_dim", "eviction", "capacity_bytes", "next_inserted_order",
           "entries.0.slot", "entries.0.owner", "entries.0.usage", "entries.0.created_step",
           "entries.0.pinned", "entries.0.tasks_served", "entries.1.inserted_order"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_FIELDS), value=_VALUES)
def test_any_resealed_field_loads_a_valid_bank_or_is_a_bank_format_error(saved, field, value):
    original = (saved / "manifest.json").read_text()

    def edit(m):
        *path, last = field.split(".")
        target = m
        for part in path:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value
    _reseal(saved, edit)
    try:
        bank = TaskKnowledgeBank.load(saved)
    except BankFormatError:
        pass
    else:
        assert 1 <= bank.capacity <= MAX_CAPACITY and len(bank) == 2
        for e in bank.slots:
            if e is not None:
                assert e.usage >= 0 and e.owner >= -1 and all(t >= 0 for t in e.tasks_served)
    finally:
        (saved / "manifest.json").write_text(original)


# ----------------------------------------------------------------------------- DiskBank


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    bank = DiskBank.create(tmp_path / "d", key_dim=3, shard_size=2)
    for i in range(3):
        bank.append(BankEntry(np.array([1.0, i, 0], np.float32), {"w": torch.full((2,), i * 1.0)},
                              i, [i]))
    bank.commit()
    return tmp_path / "d"


def _edit_disk(root: Path, edit) -> None:
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    m["manifest_sha256"] = sha256_json(m, exclude="manifest_sha256")
    (root / "manifest.json").write_text(json.dumps(m))


def _edit_index(root: Path, edit) -> None:
    m = json.loads((root / "manifest.json").read_text())
    ipath = root / m["index"]["file"]
    idx = np_load_file(str(ipath))
    edit(idx)
    np_save_file(idx, str(ipath))
    _edit_disk(root, lambda m: m["index"].update(sha256=_sha(ipath)))


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(n_entries=10**12), "n_entries"),
    (lambda m: m.update(key_dim=10**9), "key_dim"),
    (lambda m: m.update(key_dim=60000, n_entries=10**7), "bytes"),
    (lambda m: m.update(shard_size=True), "shard_size"),
    (lambda m: m.update(n_entries=5), "shards hold"),
    (lambda m: m["shards"][0].update(file="../../etc/passwd.safetensors"), "plain"),
    (lambda m: m["index"].update(file="/tmp/x.safetensors"), "plain"),
    (lambda m: m["shards"][0].update(groups=[[]]), "groups"),
])
def test_diskbank_manifest_is_checked_before_allocating(disk, edit, message):
    _edit_disk(disk, edit)
    with pytest.raises(BankFormatError, match=message):
        DiskBank(disk)


def test_diskbank_manifest_carries_its_own_checksum(disk):
    text = (disk / "manifest.json").read_text()
    (disk / "manifest.json").write_text(text.replace('"generation":1', '"generation":7'))
    with pytest.raises(BankFormatError, match="manifest_sha256"):
        DiskBank(disk)


@pytest.mark.parametrize("text,message", [("[" * 5000 + "]" * 5000, "nesting"),
                                          ('{"n_entries": ' + "9" * 5000 + "}", "digits")],
                         ids=["deep", "digits"])
def test_diskbank_deep_or_huge_json(disk, text, message):
    (disk / "manifest.json").write_text(text)
    with pytest.raises(BankFormatError, match=message):
        DiskBank(disk)


@pytest.mark.parametrize("edit,message", [
    (lambda i: i.update(usage=np.array([0, -5, 0], np.int64)), "usage"),
    (lambda i: i.update(owner=np.array([0, -7, 0], np.int64)), "owner"),
    (lambda i: i["keys"].__setitem__((0, 0), np.nan), "NaN"),
    (lambda i: i.update(row=np.array([0, 9, 0], np.int64)), "outside its shard"),
    (lambda i: i.update(row=np.array([0, 0, 0], np.int64)), "share a shard row"),
    (lambda i: i.update(served=np.array([0, -1, 2], np.int64)), "served"),
    (lambda i: i.update(served_offsets=np.array([0, 2, 1, 3], np.int64)), "monotone"),
    (lambda i: i.update(keys=i["keys"].astype(np.float64)), "keys"),
    (lambda i: i.pop("usage"), "index holds"),
])
def test_diskbank_index_values_are_checked(disk, edit, message):
    _edit_index(disk, edit)
    with pytest.raises(BankFormatError, match=message):
        DiskBank(disk)


def test_diskbank_shard_dtype_is_checked_when_opened(disk):
    m = json.loads((disk / "manifest.json").read_text())
    spath = disk / "shards" / m["shards"][0]["file"]
    tensors = np_load_file(str(spath))
    np_save_file({k: v.astype(np.int32) for k, v in tensors.items()}, str(spath))
    _edit_disk(disk, lambda m: m["shards"][0].update(sha256=_sha(spath)))
    bank = DiskBank(disk)
    with pytest.raises(BankFormatError, match="payloads are float16/32/64"):
        bank.get(0)
    assert bank.get(2).tensors["w"].tolist() == [2.0, 2.0]  # the other shard is fine
