"""Paper-scale loaders and the pretrained learner, on tiny files written in the real formats.

The writers below produce exactly what the archives unpack to: CIFAR's pickled batches, IDX
files for MNIST and Fashion-MNIST under torchvision's ``raw/`` folders, SVHN's ``.mat``, and a
letter-per-folder PNG tree for notMNIST. The loaders read them through torchvision's classes.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nsr_gym.paper_data import MissingDataError, five_datasets, load_dataset, split_cifar100

N_PER_CLASS = 3  # images per class in every tiny split


# ----------------------------------------------------------------------------- writers


def _labels(n_classes: int, n_per_class: int = N_PER_CLASS) -> np.ndarray:
    return np.repeat(np.arange(n_classes), n_per_class)


def _pixels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 images whose first pixel is the label, so tests can trace them."""
    rng = np.random.default_rng(len(labels))
    x = rng.integers(0, 256, (len(labels), *shape), dtype=np.uint8)
    x.reshape(len(labels), -1)[:, 0] = labels.astype(np.uint8)
    return x


def write_cifar10(root: Path) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        y = _labels(10, 1)
        batch = {
            "batch_label": name,
            "labels": y.tolist(),
            "data": _pixels(y, (3072,)),
            "filenames": [f"{i}.png" for i in range(len(y))],
        }
        (d / name).write_bytes(pickle.dumps(batch))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def write_cifar100(root: Path) -> None:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for name in ("train", "test"):
        y = _labels(100, 2)
        (d / name).write_bytes(
            pickle.dumps(
                {
                    "fine_labels": y.tolist(),
                    "coarse_labels": (y // 5).tolist(),
                    "data": _pixels(y, (3072,)),
                }
            )
        )
    (d / "meta").write_bytes(
        pickle.dumps(
            {
                "fine_label_names": [f"f{i}" for i in range(100)],
                "coarse_label_names": [f"g{i}" for i in range(20)],
            }
        )
    )


def _idx(path: Path, array: np.ndarray) -> None:
    """An IDX file: magic (0, 0, type 0x08 = ubyte, ndim), big-endian int32 dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST") -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        y = _labels(10)
        _idx(raw / f"{split}-images-idx3-ubyte", _pixels(y, (28, 28)))
        _idx(raw / f"{split}-labels-idx1-ubyte", y)


def write_svhn(root: Path) -> None:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        y = _labels(10)
        x = _pixels(y, (32, 32, 3))  # (n, H, W, C); the .mat stores (H, W, C, n)
        savemat(
            root / f"{split}_32x32.mat",
            {
                "X": np.ascontiguousarray(x.transpose(1, 2, 3, 0)),
                "y": np.where(y == 0, 10, y).reshape(-1, 1),
            },
        )


def write_notmnist(root: Path, per_letter: int = 5) -> None:
    from PIL import Image

    for c, letter in enumerate("ABCDEFGHIJ"):
        d = root / "notMNIST_small" / letter
        d.mkdir(parents=True)
        for i, img in enumerate(_pixels(np.full(per_letter, c), (28, 28))):
            Image.fromarray(img, mode="L").save(d / f"{letter}{i}.png")
    (root / "notMNIST_small" / "A" / "broken.png").write_bytes(b"not a png")  # as in the real set


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root)
    write_cifar100(root)
    write_mnist(root, "MNIST")
    write_mnist(root, "FashionMNIST")
    write_svhn(root)
    write_notmnist(root)
    return root


# ----------------------------------------------------------------------------- loaders


def _first_pixel_labels(x: np.ndarray, shape: tuple[int, ...] = (3, 32, 32)) -> np.ndarray:
    return np.round(x.reshape(len(x), *shape)[:, 0, 0, 0] * 255).astype(int)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_rgb_datasets_load_through_torchvision(data_root, name):
    x_tr, y_tr, x_te, y_te = load_dataset(name, data_root, verify=False)
    assert x_tr.dtype == np.float32 and x_tr.shape[1] == 3 * 32 * 32 and y_tr.dtype == np.int64
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    # the pixel written as the label comes back under that label (SVHN: "10" is digit 0)
    np.testing.assert_array_equal(_first_pixel_labels(x_tr), y_tr)
    np.testing.assert_array_equal(_first_pixel_labels(x_te), y_te)
    assert set(y_tr) == set(range(100 if name == "cifar100" else 10))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "notmnist"])
def test_grayscale_datasets_become_3x32x32(data_root, name):
    x_tr, y_tr, x_te, y_te = load_dataset(name, data_root, verify=False)
    assert x_tr.shape[1] == 3072 and set(y_tr) == set(range(10))
    img = x_tr.reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(img[:, 0], img[:, 2])  # gray repeated over channels
    if name == "notmnist":  # 5 per letter, one unreadable file skipped, 20% held out per letter
        assert len(y_tr) + len(y_te) == 50 and np.bincount(y_te).tolist() == [1] * 10
    else:
        assert len(y_tr) == len(y_te) == 10 * N_PER_CLASS


def test_split_cifar100_tasks(data_root):
    tasks = split_cifar100(data_root, verify=False)
    assert len(tasks) == 10 and all(t.n_classes == 10 for t in tasks)
    for t in tasks:
        assert set(t.y_train) == set(range(10)) and t.input_dim == 3072
        # local labels: global class = 10 * task + local
        np.testing.assert_array_equal(_first_pixel_labels(t.x_train), 10 * t.task_id + t.y_train)
    small = split_cifar100(data_root, n_tasks=20, class_order_seed=1, max_train=4, verify=False)
    assert len(small) == 20 and all(len(t.y_train) == 4 for t in small)


def test_five_datasets_tasks(data_root):
    tasks = five_datasets(data_root, verify=False)
    assert [t.name for t in tasks] == ["cifar10", "mnist", "svhn", "notmnist", "fashion_mnist"]
    assert {t.input_dim for t in tasks} == {3072} and all(t.n_classes == 10 for t in tasks)


def test_checksums_are_checked_by_default(data_root):
    with pytest.raises(ValueError, match="checksum"):
        load_dataset("cifar10", data_root)  # tiny files are not the official ones


def test_missing_data_is_one_message_listing_every_file(tmp_path):
    write_mnist(tmp_path, "MNIST")
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    with pytest.raises(MissingDataError) as err:
        five_datasets(tmp_path)
    msg = str(err.value)
    for rel in [
        "cifar-10-batches-py/data_batch_2",
        "cifar-10-batches-py/batches.meta",
        "train_32x32.mat",
        "test_32x32.mat",
        "notMNIST_small/J/",
        "FashionMNIST/raw/t10k-labels-idx1-ubyte",
    ]:
        assert str(tmp_path / rel) in msg, rel
    assert "data_batch_1" not in msg and "MNIST/raw/train" not in msg.replace("FashionMNIST", "")
    assert "cifar-10-python.tar.gz" in msg and "never downloads" in msg
    with pytest.raises(MissingDataError, match="cifar-100-python/meta"):
        split_cifar100(tmp_path)


# ----------------------------------------------------------------------------- pretrained learner


@pytest.fixture
def tiny_vit(tmp_path, monkeypatch):
    """A 2-block ViT from torchvision's VisionTransformer class, saved as a state dict file."""
    from torchvision.models import VisionTransformer

    from nsr_gym.learners import pretrained

    def build():
        return VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
        )

    monkeypatch.setitem(
        pretrained.ARCHITECTURES,
        "vit_tiny",
        pretrained.Architecture(build, pretrained._prepare_vit, 32, 32, "vit_tiny.pth", "(test)"),
    )
    path = tmp_path / "vit_tiny.pth"
    torch.save({"model": {f"module.{k}": v for k, v in build().state_dict().items()}}, path)
    return path


def test_split_attention_computes_the_same_function():
    from torchvision.models import VisionTransformer

    from nsr_gym.learners.pretrained import split_vit_attention

    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64
    ).eval()
    x = torch.rand(3, 3, 32, 32)
    before = vit(x)
    targets = split_vit_attention(vit)
    assert targets == [
        f"encoder.layers.encoder_layer_{i}.self_attention.{p}" for i in (0, 1) for p in "qv"
    ]
    torch.testing.assert_close(vit(x), before, rtol=1e-5, atol=1e-5)


def test_pretrained_learner_trains_compresses_and_reloads(data_root, tiny_vit):
    from nsr_gym.learners.pretrained import PretrainedConfig, PretrainedLearner

    tasks = five_datasets(data_root, n_tasks=2, verify=False)
    learner = PretrainedLearner(
        tasks,
        PretrainedConfig(
            arch="vit_tiny", weights=str(tiny_vit), embed_pool=16, device="cpu", lr=1e-2
        ),
    )
    learner.reset(np.random.default_rng(0))
    assert learner.key_dim == 32 and learner.embed(1).shape == (32,)
    assert len(learner.adapter_shapes()) == 4  # q and v of 2 blocks
    learner.train(0, 5)
    trained = learner.evaluate(0)
    payload, gap = learner.snapshot(0)
    assert {"layer0.B", "layer3.A", "head.weight"} <= set(payload) and gap == pytest.approx(
        0.0, abs=0.1
    )
    learner.fresh()
    learner.load(payload)
    assert learner.evaluate(0) == pytest.approx(trained, abs=0.1)


def test_make_paper_learner_checks_data_and_weights_in_one_message(data_root, tiny_vit, tmp_path):
    from nsr_gym.learners.pretrained import make_paper_learner

    with pytest.raises(MissingDataError) as err:
        make_paper_learner("split_cifar100", tmp_path / "empty", tmp_path / "vit.pth")
    assert "cifar-100-python/train" in str(err.value) and "vit_b_16-c867db91.pth" in str(err.value)
    learner = make_paper_learner(
        "five_datasets",
        data_root,
        tiny_vit,
        arch="vit_tiny",
        n_tasks=2,
        max_train=8,
        verify=False,
        embed_pool=8,
        device="cpu",
    )
    assert learner.n_tasks == 2 and len(learner.tasks[0].y_train) == 8


def test_resnet_adapts_layer4_convs_as_2d_views(tmp_path):
    from nsr_gym.learners.pretrained import build_pretrained_backbone

    backbone, targets = build_pretrained_backbone("resnet18", None, 32, random_init=True)
    assert targets == [f"net.layer4.{i}.{c}" for i in (0, 1) for c in ("conv1", "conv2")]
    assert not any(p.requires_grad for p in backbone.parameters()) and not backbone.training


def test_missing_or_wrong_weights_say_what_to_do(tmp_path):
    from nsr_gym.learners.pretrained import MissingWeightsError, build_pretrained_backbone

    with pytest.raises(MissingWeightsError, match="vit_b_16-c867db91.pth"):
        build_pretrained_backbone("vit_b_16", None, 32)
    with pytest.raises(MissingWeightsError, match="resnet18-f37072fd.pth.*download.pytorch.org"):
        build_pretrained_backbone("resnet18", tmp_path / "nope.pth", 32)
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(MissingWeightsError, match="does not fit"):
        build_pretrained_backbone("resnet18", bad, 32)


def test_cifar_reader_refuses_a_pickle_that_names_code(tmp_path):
    """A 'CIFAR batch' that would call os.system on load is refused, not run."""
    import pickle

    from nsr_gym.paper_data import MissingDataError, _read_cifar_pickle

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(MissingDataError, match="refusing to unpickle"):
        _read_cifar_pickle(str(path))
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- registered envs


def test_paper_envs_are_registered_and_run_on_local_files(data_root, tiny_vit):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    import nsr_gym  # noqa: F401 - registers the envs
    from nsr_gym.agents import SimilarityRule, rollout

    env = gym.make("nsr_gym/FiveDatasets-v0", data_root=data_root, weights=tiny_vit,
                   arch="vit_tiny", n_tasks=2, max_train=16, verify=False,
                   learner=dict(embed_pool=8, device="cpu", distill_weight=1.0,
                                distill_anchors=4),
                   phase_length=3, n_cycles=2, reserve="active")
    check_env(env.unwrapped, skip_render_check=True)
    log = rollout(env, SimilarityRule(), seed=0)
    assert len(log) == 2 * 3 * 2 and log["accuracy"].between(0, 1).all()
    assert env.unwrapped.learner.pretrained_config.arch == "vit_tiny"


def test_paper_envs_say_which_files_they_need(tmp_path):
    import gymnasium as gym

    import nsr_gym  # noqa: F401

    with pytest.raises(ValueError, match="pass data_root="):
        gym.make("nsr_gym/SplitCIFAR100-v0")
    with pytest.raises(MissingDataError, match="cifar-100-python/train"):
        gym.make("nsr_gym/SplitCIFAR100-v0", data_root=tmp_path, weights=tmp_path / "w.pth")


@pytest.mark.slow
def test_nsr_gym_run_on_a_paper_benchmark(data_root, tiny_vit, tmp_path, capsys):
    import pandas as pd

    from nsr_gym.cli import main

    out = tmp_path / "run"
    argv = ["run", "--benchmark", "FiveDatasets", "--data-root", str(data_root), "--weights",
            str(tiny_vit), "--arch", "vit_tiny", "--max-train", "16", "--no-verify",
            "--agents", "similarity,keep-current", "--seeds", "1", "--cycles", "1",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["agent"]) == {"similarity", "keep-current"}
    assert main([*argv[:3], "--weights", "w.pth"]) == 2
    assert "FiveDatasets reads local files: pass --data-root" in capsys.readouterr().err
    assert main(["run", "--data-root", str(data_root)]) == 2
    assert "--data-root is only for the paper-scale benchmarks" in capsys.readouterr().err
