"""Malformed files and values: the issue's examples one by one, hypothesis properties, and the
``nsr-gym fuzz`` families run briefly (``nsr-gym fuzz`` runs them long into results/fuzz/).

Bank files (manifests, payload dtypes, geometry, DiskBank) are tested with the bank.
"""

from __future__ import annotations

import argparse
import json
import pickle
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nsr_gym.jsonio import JsonFileError, parse_json, read_json
from nsr_gym.paper_data import DataFileError, MissingDataError, load_dataset
from nsr_gym.studies import fuzz

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- the JSON reader


@pytest.mark.parametrize("text, problem", [
    ("[" * 5000 + "]" * 5000, "nesting deeper"),
    ('{"capacity": ' + "9" * 5000 + "}", "5000 digits"),
    ('{"a": 1.' + "0" * 5000 + "}", "characters"),
    ('{"a": 1, "a": 2}', "duplicate key"),
    ("[1]", "expected a JSON object"),
    ("{", "not valid JSON"),
], ids=["deep", "long-int", "long-float", "duplicate", "list", "invalid"])
def test_json_reader_refuses_by_name_never_recursion_or_bare_value_error(tmp_path, text, problem):
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(JsonFileError, match=problem) as err:
        read_json(path)
    assert str(path) in str(err.value) and isinstance(err.value, ValueError)


def test_json_reader_checks_size_before_reading(tmp_path):
    path = tmp_path / "big.json"
    path.write_text("[" + "1," * 10_000 + "1]")
    tracemalloc.start()
    with pytest.raises(JsonFileError, match="over the 100-byte limit"):
        read_json(path, max_bytes=100, expect=None)
    assert tracemalloc.get_traced_memory()[1] < 100_000
    tracemalloc.stop()
    with pytest.raises(JsonFileError, match="not a regular file"):
        read_json(tmp_path)
    with pytest.raises(JsonFileError, match="missing"):
        read_json(tmp_path / "nope.json")


@FAST
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=4), kids, max_size=4), max_leaves=30))
def test_json_reader_reads_what_json_writes(value):
    assert parse_json(json.dumps(value), max_int_digits=400) == json.loads(json.dumps(value))


@FAST
@given(st.binary(max_size=200) | st.text(alphabet='[]{}",:0123456789.eE-+ \\truefalsn',
                                         max_size=200).map(str.encode))
def test_json_reader_on_any_bytes_is_a_value_or_one_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("j") / "x.json"
    path.write_bytes(data)
    try:
        got = read_json(path, expect=None)
    except JsonFileError as err:
        assert str(path) in str(err)
    else:
        assert json.dumps(got, sort_keys=True) == json.dumps(json.loads(data), sort_keys=True)


# ----------------------------------------------------------------------------- paper-scale data


def _cifar_root(root: Path) -> Path:
    y = np.repeat(np.arange(100), 2)
    batch = {"fine_labels": y.tolist(), "data": np.zeros((len(y), 3072), np.uint8)}
    for split in ("train", "test"):
        fuzz.write_pickle(root / "cifar-100-python" / split, batch)
    fuzz.write_pickle(root / "cifar-100-python/meta", {"fine_label_names": ["c"] * 100})
    return root / "cifar-100-python/train"


def _rewrite(path: Path, **changes) -> None:
    batch = pickle.loads(path.read_bytes())
    batch.update(changes)
    path.write_bytes(pickle.dumps(batch))


def test_truncated_cifar_batch_is_one_error_naming_the_file(tmp_path):
    train = _cifar_root(tmp_path)
    train.write_bytes(train.read_bytes()[:5000])
    with pytest.raises(DataFileError, match="truncated or not a pickle") as err:
        load_dataset("cifar100", tmp_path, verify=False)
    assert str(train) in str(err.value) and "cifar-100-python.tar.gz" in str(err.value)


def test_refused_pickle_names_the_file(tmp_path):
    train = _cifar_root(tmp_path)
    train.write_bytes(pickle.dumps({"data": fuzz._Reduce(print, ("pwned",))}))
    with pytest.raises(MissingDataError, match="refusing to unpickle builtins.print") as err:
        load_dataset("cifar100", tmp_path, verify=False)
    assert str(train) in str(err.value)


def test_a_pickle_declaring_4gb_in_16_bytes_is_refused_before_allocating(tmp_path):
    train = _cifar_root(tmp_path)
    train.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 4 * 2**30) + b"abc.")
    tracemalloc.start()
    with pytest.raises(DataFileError, match=str(train)):
        load_dataset("cifar100", tmp_path, verify=False)
    assert tracemalloc.get_traced_memory()[1] < 50 * 2**20
    tracemalloc.stop()


@pytest.mark.parametrize("labels, problem", [
    (lambda y: y[:-1], "holds 200 images but 199 labels"),
    (lambda y: [100, *y[1:]], "label 100 is out of range 0..99"),
    (lambda y: [-3, *y[1:]], "label -3 is out of range"),
    (lambda y: [min(v, 98) for v in y], "no training example of class 99"),
])
def test_cifar_label_counts_and_ranges_are_checked(tmp_path, labels, problem):
    train = _cifar_root(tmp_path)
    _rewrite(train, fine_labels=labels(np.repeat(np.arange(100), 2).tolist()))
    with pytest.raises(DataFileError, match=problem):
        load_dataset("cifar100", tmp_path, verify=False)


def _mnist_root(root: Path) -> Path:
    y = np.repeat(np.arange(10), 2)
    for split in ("train", "t10k"):
        fuzz.write_idx(root / f"MNIST/raw/{split}-images-idx3-ubyte",
                       np.full((len(y), 28, 28), 7, np.uint8))
        fuzz.write_idx(root / f"MNIST/raw/{split}-labels-idx1-ubyte", y)
    return root / "MNIST/raw/train-images-idx3-ubyte"


def test_mnist_wrong_magic_and_size_mismatch_say_so(tmp_path):
    images = _mnist_root(tmp_path)
    good = images.read_bytes()
    images.write_bytes(b"\0\0\x08\x01" + good[4:])
    with pytest.raises(DataFileError, match="magic number 0x00000801 is not that of IDX images"):
        load_dataset("mnist", tmp_path)
    images.write_bytes(good[:-28])
    with pytest.raises(DataFileError, match="truncated or padded") as err:
        load_dataset("mnist", tmp_path)
    assert "checksum" not in str(err.value) and str(images) in str(err.value)


def test_legacy_processed_files_never_replace_raw_ones(tmp_path):
    import torch

    _mnist_root(tmp_path)
    (tmp_path / "MNIST/processed").mkdir()
    for f in ("training.pt", "test.pt"):
        torch.save((torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.long)),
                   tmp_path / "MNIST/processed" / f)
    x_tr, y_tr, _, _ = load_dataset("mnist", tmp_path)
    assert len(y_tr) == 20 and np.allclose(x_tr, 7 / 255, atol=1e-6)


def test_svhn_size_lie_is_refused_before_allocation(tmp_path):
    from scipy.io import savemat

    y = np.repeat(np.arange(1, 11), 2).reshape(-1, 1)
    x = np.zeros((32, 32, 3, 20), np.uint8)
    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    path = tmp_path / "train_32x32.mat"
    raw = path.read_bytes()
    path.write_bytes(raw[:172] + struct.pack("<i", 1_400_000) + raw[176:])  # n of X's dims
    tracemalloc.start()
    with pytest.raises(DataFileError, match=r"dims \(32, 32, 3, 1400000\) do not match"):
        load_dataset("svhn", tmp_path, verify=False)
    assert tracemalloc.get_traced_memory()[1] < 10 * 2**20
    tracemalloc.stop()
    savemat(path, {"X": np.zeros((32, 32, 3, 60_000), np.uint8), "y": np.ones((60_000, 1))},
            do_compression=True)  # 180 KB that inflate to 184 MB
    with pytest.raises(DataFileError, match="decompression bomb"):
        load_dataset("svhn", tmp_path, verify=False)


def _notmnist_root(root: Path) -> Path:
    from PIL import Image

    for c, letter in enumerate("ABCDEFGHIJ"):
        d = root / "notMNIST_small" / letter
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((28, 28), 10 * c + i, np.uint8), mode="L").save(d / f"{i}.png")
    return root / "notMNIST_small"


@pytest.mark.parametrize("damage, problem", [
    ("outside", "outside the data root"), ("same", "is the same folder as letter A"),
    ("loop", "directory loop"), ("selfloop", "cannot be resolved"),
])
def test_notmnist_symlinks_leaving_the_root_or_looping_are_refused(tmp_path, damage, problem):
    import shutil

    nm = _notmnist_root(tmp_path / "data")
    if damage == "outside":
        shutil.move(nm / "B", tmp_path / "elsewhere")
        (nm / "B").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    elif damage == "same":
        shutil.rmtree(nm / "C")
        (nm / "C").symlink_to(nm / "A", target_is_directory=True)
    elif damage == "loop":
        (nm / "D" / "again").symlink_to(nm / "D", target_is_directory=True)
    else:
        (nm / "E" / "x.png").symlink_to("x.png")
    with pytest.raises(DataFileError, match=problem):
        load_dataset("notmnist", tmp_path / "data")


# ----------------------------------------------------------------------------- env and CLI values


def test_env_values_booleans_and_upper_bounds(capsys):
    import gymnasium as gym

    with pytest.raises(ValueError, match="lambda_switch .*booleans are not numbers"):
        gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", lambda_switch=True)
    with pytest.raises(ValueError, match="capacity=1,000,000,000 is above 100,000: the bank "
                                         "would preallocate"):
        gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", capacity=10**9)


@pytest.mark.slow
def test_learner_lr_1e38_is_rejected_at_construction():
    import gymnasium as gym

    with pytest.raises(ValueError, match="lr=1e\\+38 is above 10"):
        gym.make("nsr_gym/CyclicSplitDigits-v0", learner={"lr": 1e38})


def test_learner_5_is_a_clear_error():
    import gymnasium as gym

    with pytest.raises(ValueError, match="learner must be a dict of learner options"):
        gym.make("nsr_gym/CyclicSplitDigits-v0", backend="analytic", learner=5)


def test_validation_rejects_learner_values_by_itself():
    from nsr_gym import validation

    kw = dict(n_tasks=5, phase_length=4, n_cycles=2, capacity=5, updates_per_step=1,
              lambda_switch=0.1, acc_weight=1.0, schedule="cyclic", eviction="lru",
              backend="torch", reserve="owner", reserve_modes=("owner",), render_mode=None,
              render_modes=("ansi",))
    assert validation.env_config_problems(**kw) == []
    (lr,) = validation.env_config_problems(**kw, learner={"lr": 1e38})
    assert "lr=1e+38 is above 10" in lr
    (five,) = validation.env_config_problems(**kw, learner=5)
    assert "learner must be a dict" in five
    digits = validation.env_config_problems(**{**kw, "n_tasks": 10**5000})
    assert "digits" in digits[0] and len(digits[0]) < 300  # never echoes 5,000 digits back


@FAST
@given(st.sampled_from(fuzz.ENV_KEYS), st.sampled_from(fuzz.ENV_VALUES) | st.integers()
       | st.floats() | st.text(max_size=3))
def test_env_config_problems_never_raise(key, value):
    from nsr_gym import validation

    kw = dict(n_tasks=5, phase_length=4, n_cycles=2, capacity=5, updates_per_step=1,
              lambda_switch=0.1, acc_weight=1.0, schedule="cyclic", eviction="lru",
              backend="analytic", reserve="owner", reserve_modes=("owner",), render_mode=None,
              render_modes=("ansi",))
    problems = validation.env_config_problems(**{**kw, key: value})
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        assert problems and key in problems[0]


@FAST
@given(st.text(max_size=30))
def test_parse_seeds_is_a_bounded_list_or_an_argparse_error(text):
    from nsr_gym.cli._common import MAX_SEEDS, parse_seeds

    try:
        seeds = parse_seeds(text)
    except argparse.ArgumentTypeError as err:
        assert "--seeds" in str(err)
    else:
        assert 1 <= len(seeds) <= MAX_SEEDS and all(0 <= s < 2**32 for s in seeds)


def test_run_with_a_billion_seeds_is_a_clear_error(capsys):
    from nsr_gym.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--seeds", "1000000000"])
    assert exit_.value.code == 2
    assert "--seeds 1,000,000,000 is above 10,000" in capsys.readouterr().err


def test_unreachable_ray_address_fails_fast_saying_so(tmp_path, capsys):
    pytest.importorskip("grpc")
    from nsr_gym.cli import main

    t0 = time.perf_counter()
    assert main(["run", "--executor", "ray", "--ray-address", "127.0.0.1:1", "--backend",
                 "analytic", "--seeds", "1", "--no-progress", "--out", str(tmp_path)]) == 2
    assert time.perf_counter() - t0 < 30
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- unit logs


def test_a_hand_edited_unit_log_is_recomputed_not_trusted(tmp_path, capsys):
    from nsr_gym.executors import FrameStore, JsonStore, Unit

    unit = Unit("similarity", 0, {"env": "x"})
    store = FrameStore(tmp_path / "f")
    frame = pd.DataFrame({"agent": ["similarity"] * 3, "reward": [0.5, 0.25, 1.0]})
    store.save(unit, frame)
    pd.testing.assert_frame_equal(store.load(unit), frame)
    path = store.path(unit)
    path.write_text(path.read_text().replace("0.25", "0.75"))  # a better leaderboard, by hand
    assert store.load(unit) is None
    assert "its sha256 differs" in capsys.readouterr().err
    jstore = JsonStore(tmp_path / "j")
    jstore.save(unit, {"return": 1.5})
    jpath = tmp_path / "j" / f"{unit.key}.json"
    jpath.write_text(jpath.read_text().replace("1.5", "9.5"))
    assert jstore.load(unit) is None and "does not match its sha256" in capsys.readouterr().err


@FAST
@given(st.binary(max_size=300))
def test_unit_stores_never_return_other_data(tmp_path_factory, junk):
    from nsr_gym.executors import FrameStore, Unit

    unit, folder = Unit("a", 1), tmp_path_factory.mktemp("u")
    store = FrameStore(folder)
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    store.save(unit, frame)
    store.path(unit).write_bytes(junk)
    got = store.load(unit)
    assert got is None or got.equals(frame)


# ----------------------------------------------------------------------------- SB3 policies


def test_sb3_loads_only_from_checked_safetensors(tmp_path):
    from nsr_gym.agents.sb3_policy import PolicyFormatError, load_sb3_policy

    folder = fuzz.write_policy_folder(tmp_path / "p")
    assert load_sb3_policy(folder).weights_sha256
    (folder / "model.zip").write_bytes(b"PK another model")
    with pytest.raises(PolicyFormatError, match="model.zip: its sha256 differs"):
        load_sb3_policy(folder)
    folder = fuzz.write_policy_folder(tmp_path / "q")
    (folder / "policy.safetensors").unlink()
    with pytest.raises(PolicyFormatError, match="safetensors copy only, never the zip's pickled"):
        load_sb3_policy(folder)


@pytest.mark.parametrize("damage", ["policy.safetensors missing (only the zip's policy.pth)",
                                    "config.json a 5,000-deep list",
                                    "n_actions a 5,000-digit int", "net_arch [9] (weights do "
                                    "not fit)", "weights with a NaN (sha256 updated)"])
def test_malformed_policy_folders_through_run_exit_2(tmp_path, capsys, damage):
    from nsr_gym.cli import main

    folder = fuzz.write_policy_folder(tmp_path / "p")
    fuzz.SB3_DAMAGE[damage](folder)
    assert main(["run", "--backend", "analytic", "--agents", f"maskable-ppo:{folder}",
                 "--seeds", "1", "--no-progress", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "Traceback" not in err


# ----------------------------------------------------------------------------- adapters, learner


@pytest.mark.parametrize("damage, problem", [
    ("r = 2e6", "integers in 1..4096"), ("target_modules partial ['0']", "does not adapt"),
    ("r a 5,000-digit int", "5000 digits"), ("weights cast to int32", "dtype I32"),
])
def test_adapter_configs_are_checked_before_peft_allocates(tmp_path, damage, problem):
    from nsr_gym.bank import BankFormatError
    from nsr_gym.interchange import BackboneSpec, export_adapter, import_adapter

    root = export_adapter(fuzz._adapter_payload(), tmp_path / "a", BackboneSpec())
    fuzz.ADAPTER_DAMAGE[damage](root)
    t0 = time.perf_counter()
    with pytest.raises(BankFormatError, match=problem) as err:
        import_adapter(root, BackboneSpec())
    assert str(root) in str(err.value) and time.perf_counter() - t0 < 2


def test_pretrained_rank_and_targets_are_checked_before_peft():
    from torch import nn

    from nsr_gym.learners.pretrained import (
        PretrainedConfig,
        check_lora_targets,
        check_pretrained_config,
    )

    with pytest.raises(ValueError, match="lora_rank=2000000 is above 1024"):
        check_pretrained_config(PretrainedConfig(lora_rank=2_000_000))
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
    with pytest.raises(ValueError, match="above min\\(out, in\\) = 8"):
        check_lora_targets(net, ["0"], 9)
    with pytest.raises(ValueError, match="is a ReLU"):
        check_lora_targets(net, ["1"], 2)
    check_lora_targets(net, ["0"], 8)


# ----------------------------------------------------------------------------- the fuzz families

@pytest.mark.parametrize("family", ["json", "cifar100", "mnist", "svhn", "units", "sb3",
                                    "adapter", "env", "cli", "pretrained"])
def test_fuzz_families_give_no_failure(family):
    report = fuzz.run_families({family: fuzz.FAMILIES[family]}, cases=3,
                               seed=1, progress=False)
    failed = [(o.case, o.detail) for o in report.outcomes if o.kind == "FAIL"]
    assert report.outcomes and failed == []


@pytest.mark.slow
@pytest.mark.parametrize("family", ["notmnist"])
def test_slow_fuzz_families_give_no_failure(family):
    report = fuzz.run_families({family: fuzz.FAMILIES[family]}, cases=3, seed=1, progress=False)
    assert [(o.case, o.detail) for o in report.outcomes if o.kind == "FAIL"] == []


def test_fuzz_command_writes_counts_per_family(tmp_path):
    from nsr_gym.cli import main

    assert main(["fuzz", "--families", "json,units", "--cases", "2", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary["family"]) == ["json", "units"] and (summary["failed"] == 0).all()
    assert "Allocation cap" in (tmp_path / "fuzz.md").read_text()
    assert main(["fuzz", "--families", "nope", "--out", str(tmp_path)]) == 2
