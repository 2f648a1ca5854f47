"""The shipped pretrained backbone: disjoint data, byte-identical regeneration, checksum refusal,
frozen loading with LoRA on its Linear layers; and the lora-check comparison that uses it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from nsr_gym import data_mnist1d, weights
from nsr_gym.atomic import sha256_file
from nsr_gym.data import make_tasks
from nsr_gym.learners.backbones import CNN1D, load_pretrained
from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig
from nsr_gym.studies import lora_check
from nsr_gym.studies.pretrain import PretrainConfig, check_shipped, pretrain

TINY = PretrainConfig(samples=200, epochs=2, batch_size=32, channels=(4, 4), hidden=(8, 4))


def _min_distance(a: np.ndarray, b: np.ndarray, chunk: int = 2000) -> float:
    """Smallest Euclidean distance between a row of ``a`` and a row of ``b``."""
    b2 = (b.astype(np.float64) ** 2).sum(1)
    best = np.inf
    for i in range(0, len(a), chunk):
        x = a[i:i + chunk].astype(np.float64)
        d2 = (x**2).sum(1)[:, None] + b2[None, :] - 2 * x @ b.T.astype(np.float64)
        best = min(best, float(d2.min()))
    return float(np.sqrt(max(best, 0.0)))


# ----------------------------------------------------------------------------- the data


def test_pretraining_never_reads_the_task_sample(monkeypatch, tmp_path):
    """Every signal a pretraining run draws comes from its own seed, never the tasks'."""
    seen = []
    real = data_mnist1d.generate

    def spy(seed, num_samples):
        seen.append(seed)
        return real(seed, num_samples)

    monkeypatch.setattr(data_mnist1d, "generate", spy)
    monkeypatch.setattr(data_mnist1d, "load_mnist1d_split", lambda: pytest.fail("task data"))
    pretrain(TINY, tmp_path)
    assert seen and set(seen) == {data_mnist1d.PRETRAIN_SEED} != {data_mnist1d.TASK_SEED}


@pytest.mark.slow
def test_pretraining_sample_is_disjoint_from_every_task():
    """No signal of the shipped pretraining sample is (near) any task's train or test signal,
    in either MNIST-1D family; near duplicates within the task sample set the scale."""
    x_tr, _, x_va, _ = data_mnist1d.pretrain_split(PretrainConfig().samples)
    pre = np.concatenate([x_tr, x_va])
    for family in ("split_mnist1d", "mnist1d_domains"):
        for task in make_tasks(family, 5):
            for x in (task.x_train, task.x_test):
                rows = {r.tobytes() for r in x}
                assert not any(r.tobytes() in rows for r in pre)
                assert _min_distance(x, pre) > 0.1, (family, task.name)
    task_x = data_mnist1d.load_mnist1d_split()[0]
    assert _min_distance(task_x[:500], task_x[500:]) > 0.1  # the scale: distinct draws


# ----------------------------------------------------------------------------- regeneration


def test_tiny_pretraining_regenerates_byte_identically(tmp_path):
    threads = torch.get_num_threads()
    first, curve = pretrain(TINY, tmp_path / "a")
    second, _ = pretrain(TINY, tmp_path / "b")
    for name in (f"{TINY.name}.safetensors", f"{TINY.name}.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first == second and first["sha256"] == sha256_file(tmp_path / "a" / first["file"])
    assert list(curve["epoch"]) == [1, 2] and curve["train_loss"].notna().all()
    assert torch.get_num_threads() == threads  # pinned to one thread only while training


@pytest.mark.slow
def test_the_command_regenerates_the_same_bytes_in_another_process(tmp_path):
    cfg = PretrainConfig(samples=200, epochs=1)
    record, _ = pretrain(cfg, tmp_path / "here")
    script = shutil.which("nsr-gym")
    cmd = [script] if script else [sys.executable, "-m", "nsr_gym.cli"]
    subprocess.run([*cmd, "pretrain", "--samples", "200", "--epochs", "1", "--weights-dir",
                    str(tmp_path / "there"), "--out", str(tmp_path / "results")],
                   check=True, capture_output=True, timeout=300)
    assert sha256_file(tmp_path / "there" / record["file"]) == record["sha256"]
    for name in ("pretrain.md", "pretrain_curve.csv", "manifest.json"):
        assert (tmp_path / "results" / name).is_file()
    assert "nsr-gym pretrain" in (tmp_path / "results" / "pretrain.md").read_text()


@pytest.mark.slow
def test_the_full_command_reproduces_the_shipped_weights():
    """Retrains the shipped configuration (~20 s on one CPU thread) and compares the sha256
    (``nsr-gym pretrain --check`` does the same from the command line)."""
    same, message = check_shipped()
    assert same, message


# ----------------------------------------------------------------------------- loading


def test_shipped_weights_match_their_record_and_are_small():
    record = weights.read_record("mnist1d_cnn")
    path = weights.weights_path("mnist1d_cnn")
    assert sha256_file(path) == record["sha256"] and path.stat().st_size == record["bytes"]
    assert record["bytes"] < 2 * 2**20 and record["input_dim"] == data_mnist1d.SIGNAL_LENGTH
    assert record["pretraining"]["data"]["seed"] == data_mnist1d.PRETRAIN_SEED
    assert record["pretraining"]["final_val_accuracy"] > 0.85
    assert record["architecture"] == CNN1D().architecture()  # "cnn1d" is its random control


def test_a_changed_file_is_refused_naming_it(tmp_path, monkeypatch):
    for suffix in (".safetensors", ".json"):
        shutil.copy(weights.WEIGHTS_DIR / f"mnist1d_cnn{suffix}", tmp_path)
    load_pretrained(40, directory=tmp_path)  # the copy loads
    target = tmp_path / "mnist1d_cnn.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    target.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match=r"mnist1d_cnn\.safetensors.*sha256"):
        load_pretrained(40, directory=tmp_path)
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)  # the learner reads the default dir
    with pytest.raises(weights.WeightsError, match="refusing to load"):
        TorchLearner(make_tasks("split_mnist1d", 5), TorchLearnerConfig(backbone="pretrained"))
    target.unlink()
    with pytest.raises(weights.WeightsError, match="cannot read pretrained weights"):
        load_pretrained(40, directory=tmp_path)


def test_no_pretrained_backbone_for_the_digits():
    with pytest.raises(ValueError, match="no pretrained backbone ships for 64-wide inputs"):
        TorchLearner(make_tasks("split_digits", 5), TorchLearnerConfig(backbone="pretrained"))


@pytest.fixture(scope="module")
def pretrained() -> TorchLearner:
    return TorchLearner(make_tasks("split_mnist1d", 5), TorchLearnerConfig(backbone="pretrained"))


def test_the_learner_loads_the_weights_frozen_with_lora_on_the_linears(pretrained):
    from peft import PeftModel

    _, tensors = weights.load_verified("mnist1d_cnn")
    stem = dict(pretrained._stem.state_dict())
    for name, value in stem.items():
        assert torch.equal(value, tensors[f"stem.{name}"])
    assert all(not p.requires_grad for p in pretrained._stem.parameters())
    assert isinstance(pretrained.model, PeftModel)
    trunk = pretrained.model.base_model.model
    assert torch.equal(trunk[0].base_layer.weight, tensors["trunk.0.weight"])
    trainable = {n for n, p in pretrained.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(pretrained._lora) == 2  # the trunk's two Linear layers
    assert pretrained._data[0][0].shape[1] == CNN1D().stem_dim  # the stem ran once


def test_pretrained_features_beat_random_ones_head_only():
    tasks = make_tasks("split_mnist1d", 5)
    accs = {}
    for backbone in ("cnn1d", "pretrained"):
        learner = TorchLearner(tasks, TorchLearnerConfig(backbone=backbone, train_adapters=False))
        runs = []
        for seed in (0, 1):
            learner.reset(np.random.default_rng(seed))
            learner.train(4, 100)
            runs.append(learner.evaluate(4))
        accs[backbone] = np.mean(runs)
    assert accs["pretrained"] > accs["cnn1d"] + 0.1 and accs["pretrained"] > 0.9


def test_fast_and_reference_paths_agree_on_the_cnn():
    tasks = make_tasks("split_mnist1d", 5)[:2]
    out = []
    for fast in (True, False):
        learner = TorchLearner(tasks, TorchLearnerConfig(backbone="pretrained", fast=fast))
        learner.reset(np.random.default_rng(3))
        report = learner.train(1, 5)
        out.append((report.loss, learner.evaluate(1), learner.embed(0).tolist()))
    assert out[0] == out[1]


# ----------------------------------------------------------------------------- lora-check


def test_recall_precision_and_backbone_tables_are_well_formed():
    recall = lora_check.recall_precision(families=("split_mnist1d",),
                                         backbones=("mlp", "pretrained"), seeds=[0], revisits=1)
    assert len(recall) == 2 * 5 and set(recall["correct"]) <= {0, 1}
    table = lora_check.summarize_recall(recall)
    assert list(table["backbone"]) == ["mlp", "pretrained"]
    assert ((table["precision"] >= 0) & (table["precision"] <= 1)).all()
    raw = lora_check.backbone_ablation(families=("split_mnist1d",), backbones=("pretrained",),
                                       seeds=[0, 1], budgets=[2])
    summary = lora_check.summarize_backbones(raw)
    assert len(raw) == 2 * 2 * 5 and len(summary) == 1
    row = summary.iloc[0]
    assert row["gap"] == pytest.approx(row["lora+head"] - row["head-only"])
    with pytest.raises(ValueError, match="unknown lora-check part"):
        lora_check.run_study([0], [2], "unused", parts=("cifar",))


@pytest.mark.slow
def test_lora_check_command_writes_the_mnist1d_tables(tmp_path, monkeypatch):
    from nsr_gym.cli import main

    args = ["lora-check", "--part", "mnist1d", "--seeds", "1", "--budgets", "2", "--revisits",
            "1", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["nsr-gym", *args])
    assert main(args) == 0
    for name in ("lora_check_mnist1d.md", "lora_check_mnist1d.csv", "lora_check_mnist1d_raw.csv",
                 "recall_mnist1d.csv", "recall_mnist1d_raw.csv", "manifest_mnist1d.json"):
        assert (tmp_path / name).is_file()
    assert not (tmp_path / "lora_check.csv").exists()  # the digits part did not run
    assert "Written by `nsr-gym lora-check --part mnist1d" in (
        tmp_path / "lora_check_mnist1d.md").read_text()


def test_the_weights_ship_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml")
                              .read_text())["tool"]["setuptools"]
    assert "nsr_gym.weights" in pyproject["packages"]
    assert set(pyproject["package-data"]["nsr_gym.weights"]) == {"*.safetensors", "*.json"}
