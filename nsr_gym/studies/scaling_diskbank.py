"""The disk-bank section of ``nsr-gym study scaling``: a DiskBank of 1e5 entries, recall
precision and latency, load latency and memory.

* :func:`permuted_digit_keys`: TorchLearner's embedding recipe vectorised for 1e5 tasks (the keys
  of the measurement);
* :func:`real_entry_shapes` and :func:`paper_entry_shapes`: the tensors of one entry of the
  default torch learner (about 4.9 KB) and of a paper-scale one (0.29 MB);
* :func:`measure_diskbank`: write a DiskBank of synthetic entries, reopen it, time recall and
  loads warm and cold;
* :func:`diskbank_section`: the section itself, as :mod:`nsr_gym.studies.scaling_study` runs it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from nsr_gym.data import load_digits_split
from nsr_gym.results import write_csv


class DiskSpaceError(RuntimeError):
    """The disk banks would not fit comfortably where they are to be written."""


def diskbank_section(plan: dict[str, Any], out: Path, disk_dir: Path | None = None,
                     progress: bool = True) -> pd.DataFrame:
    """1e5 entries shaped like the torch learner's, keyed by real permuted-digit embeddings;
    optionally a paper-scale entry size. Written to ``disk_dir`` (default ``out/.diskbank``)
    and deleted after; the rows are written to ``out/diskbank.csv``.

    Args:
        plan: The study's sizes (``disk_entries``, ``paper_entries``, ``large_n``).
        out: The study's output directory.
        disk_dir: Where the banks are written.
        progress: Show progress bars.

    Raises:
        DiskSpaceError: when the banks would take more than a quarter of the free space there.
    """
    n = plan["disk_entries"]
    disk_dir = Path(disk_dir or out / ".diskbank")
    need = n * sum(4 * int(np.prod(s)) for s in real_entry_shapes().values())
    paper = paper_entry_shapes().values()
    need += plan["paper_entries"] * sum(4 * int(np.prod(s)) for s in paper)
    disk_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(disk_dir).free
    if need > free / 4:
        raise DiskSpaceError(f"the disk bank needs {need / 1e9:.1f} GB and {disk_dir} has "
                             f"{free / 1e9:.1f} GB free")
    t0 = time.perf_counter()
    keys = permuted_digit_keys(n, seed=0, n_probes=2, centre_tasks=min(n, 1000))
    key_s = time.perf_counter() - t0
    rows = []
    for size in plan["large_n"]:  # precision@1 of the same keys at growing bank sizes
        rng = np.random.default_rng(size)
        ids = rng.choice(size, size=min(2000, size), replace=False)
        k = keys[0, :size] / np.linalg.norm(keys[0, :size], axis=1, keepdims=True)
        q = keys[1, ids] / np.linalg.norm(keys[1, ids], axis=1, keepdims=True)
        top, own, rival = [], [], []
        for i in range(0, len(q), 200):
            sims = q[i:i + 200] @ k.T
            top.append(np.argmax(sims, axis=1))
            rows_i = np.arange(len(sims))
            own.append(sims[rows_i, ids[i:i + 200]].copy())
            sims[rows_i, ids[i:i + 200]] = -np.inf
            rival.append(sims.max(1))
        rows.append({"kind": "recall", "n_entries": size,
                     "precision_at_1": float(np.mean(np.concatenate(top) == ids)),
                     "self_cos": float(np.concatenate(own).mean()),
                     "rival_cos": float(np.concatenate(rival).mean())})
    for kind, count, shapes in (("real", n, real_entry_shapes()),
                                ("paper", plan["paper_entries"], paper_entry_shapes())):
        if count == 0:
            continue
        bank_keys = keys[0, :count]
        with _progress(count, f"diskbank {kind}", progress) as bar:
            res = measure_diskbank(disk_dir / f"bank-{kind}", count, shapes, keys=bank_keys,
                                           queries=keys[1, :count], progress=bar)
        rows.append({"kind": kind, **res, "key_build_s": round(key_s, 1)})
    shutil.rmtree(disk_dir, ignore_errors=True)
    frame = pd.DataFrame(rows)
    write_csv(out / "diskbank.csv", frame)
    return frame


class _progress:
    """A tqdm bar advanced to an absolute count (the disk-bank writer reports entries written)."""

    def __init__(self, total: int, desc: str, progress: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="entry", disable=not progress)

    def __enter__(self) -> Callable[[int], None]:
        return lambda done: self.bar.update(done - self.bar.n)

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def permuted_digit_keys(n_tasks: int, seed: int = 0, probe_size: int = 64, n_probes: int = 2,
                        first: int = 0, centre_tasks: int = 1000, batch: int = 512) -> np.ndarray:
    """``(n_probes, n_tasks, 32)`` float32 embeddings of permuted-digit tasks ``first ..
    first + n_tasks - 1``: TorchLearner.embed's recipe (the mean frozen feature of a random
    ``probe_size`` batch of the task's training inputs, centred), vectorised so that 1e5 tasks
    take a minute. The permutations are :func:`nsr_gym.data.permuted_digits`'s; the centre is the
    mean feature of the first ``centre_tasks`` tasks' training sets (a TorchLearner over that
    many tasks centres by exactly this).
    """
    from nsr_gym.learners.torch_learner import TorchLearnerConfig, build_backbone

    cfg = TorchLearnerConfig()
    x_tr = torch.from_numpy(np.ascontiguousarray(load_digits_split()[0]))
    backbone = build_backbone(64, cfg.hidden, cfg.backbone_seed)

    def perm(t: int) -> np.ndarray:
        return np.arange(64) if t == 0 else np.random.default_rng([0, t]).permutation(64)

    with torch.no_grad():
        centre = torch.stack([backbone(x_tr[:, perm(t)]).mean(0)
                              for t in range(centre_tasks)]).mean(0)
        g = torch.Generator().manual_seed(seed)
        out = np.empty((n_probes, n_tasks, centre.numel()), dtype=np.float32)
        for lo in range(0, n_tasks, batch):
            ids = range(first + lo, first + min(lo + batch, n_tasks))
            perms = torch.from_numpy(np.stack([perm(t) for t in ids]))  # (b, 64)
            for p in range(n_probes):
                # A probe batch without replacement per task, as TorchLearner.embed draws it.
                rows = torch.rand(len(ids), len(x_tr), generator=g).argsort(1)[:, :probe_size]
                x = x_tr[rows]  # (b, probe, 64)
                x = torch.gather(x, 2, perms[:, None, :].expand(-1, probe_size, -1))
                out[p, lo:lo + len(ids)] = (backbone(x).mean(1) - centre).numpy()
    return out


def real_entry_shapes(ranks: int = 4) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of one bank entry of the default torch learner (64-64-32 MLP, LoRA rank
    ``ranks`` kept, 10-way head): about 4.9 KB in float32."""
    return {"layer0.B": (64, ranks), "layer0.A": (ranks, 64), "layer1.B": (32, ranks),
            "layer1.A": (ranks, 64), "head.weight": (10, 32), "head.bias": (10,)}


def paper_entry_shapes(layers: int = 12, width: int = 768,
                       rank: int = 4) -> dict[str, tuple[int, ...]]:
    """A paper-scale entry: rank-``rank`` LoRA factors on ``layers`` ``width x width`` layers
    (the default: 0.29 MB, the issue's figure)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        shapes[f"layer{i}.B"], shapes[f"layer{i}.A"] = (width, rank), (rank, width)
    return shapes


def _evict_page_cache(root: Path) -> bool:
    """Ask the OS to drop the cached pages of the bank's shard files (cold reads)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in (root / "shards").glob("*.safetensors"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def measure_diskbank(root: str | os.PathLike, n_entries: int, shapes: Mapping[str, tuple[int, ...]],
                     keys: np.ndarray | None = None, queries: np.ndarray | None = None,
                     seed: int = 0, shard_size: int = 1024, n_loads: int = 1000,
                     n_queries: int = 2000, keep: bool = False,
                     progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write a DiskBank of ``n_entries`` synthetic entries (random tensors of ``shapes``), reopen
    it and time recall and loads; the bank is deleted afterwards unless ``keep``.

    Args:
        root: Directory for the bank (must not exist).
        n_entries: Entries to write.
        shapes: Name -> shape of each entry's float32 tensors.
        keys: ``(n_entries, d)`` keys (default: Gaussian, ``d = 32``); ``queries`` ``(n, d)``
            probes of the same tasks give precision@1 (of ``n_queries`` of them).
        seed: Seed of the synthetic contents and of the sampled ids.
        shard_size: Entries per shard file.
        n_loads: Entries loaded per latency measurement.
        n_queries: Recall queries timed (and scored when ``queries`` is given).
        keep: Keep the bank on disk.
        progress: Called with the number of entries written so far.

    Returns:
        Sizes (bytes on disk, in-memory index bytes, bytes allocated by opening the bank), write
        rate, open time, recall latency (one query; a batch), precision@1, and load latency
        (median, p90, p99 in ms) warm (page cache) and cold (shard pages dropped with
        ``posix_fadvise``, shards reopened).
    """
    from nsr_gym.bank.disk import DiskBank

    root = Path(root)
    rng = np.random.default_rng(seed)
    if keys is None:
        keys = rng.standard_normal((n_entries, 32), dtype=np.float32)
    entry_bytes = sum(4 * int(np.prod(s)) for s in shapes.values())
    t0 = time.perf_counter()
    bank = DiskBank.create(root, keys.shape[1], shard_size=shard_size)
    for lo in range(0, n_entries, shard_size):
        n = min(shard_size, n_entries - lo)
        stacked = {k: rng.standard_normal((n, *s), dtype=np.float32) for k, s in shapes.items()}
        bank.append_many(keys[lo:lo + n], ({k: v[j] for k, v in stacked.items()} for j in range(n)),
                         owners=range(lo, lo + n))
        if progress is not None:
            progress(lo + n)
    bank.commit()
    write_s = time.perf_counter() - t0
    disk = bank.disk_bytes
    del bank

    import tracemalloc

    tracemalloc.start()  # numpy reports its allocations: what opening the bank keeps in memory
    t0 = time.perf_counter()
    bank = DiskBank(root)
    open_s = time.perf_counter() - t0
    open_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    qids = rng.choice(n_entries, size=min(n_queries, n_entries), replace=False)
    probe = queries[qids] if queries is not None else keys[qids]
    t0 = time.perf_counter()
    for q in probe[:200]:
        bank.recall(q, 1)
    recall_ms = (time.perf_counter() - t0) / min(200, len(probe)) * 1e3
    t0 = time.perf_counter()
    top1 = bank.recall_many(probe)
    batch_ms = (time.perf_counter() - t0) / len(probe) * 1e3
    out: dict[str, Any] = {
        "n_entries": n_entries, "entry_bytes": entry_bytes, "key_dim": int(keys.shape[1]),
        "shard_size": shard_size, "disk_bytes": disk, "index_bytes_in_memory": bank.memory_bytes,
        "allocated_on_open_bytes": open_bytes, "write_s": round(write_s, 2),
        "write_mb_per_s": round(disk / 1e6 / write_s, 1), "open_s": round(open_s, 4),
        "recall_ms": round(recall_ms, 4), "recall_batch_ms_per_query": round(batch_ms, 5),
        "precision_at_1": float(np.mean(top1 == qids)) if queries is not None else np.nan,
    }
    ids = rng.choice(n_entries, size=min(n_loads, n_entries), replace=False)
    for mode in ("cold", "warm"):
        if mode == "cold":
            bank.close()
            out["cold_is_uncached"] = _evict_page_cache(root)
        times = []
        for i in ids:
            t0 = time.perf_counter()
            tensors = bank.get_tensors(int(i))
            times.append(time.perf_counter() - t0)
            assert len(tensors) == len(shapes)
        ms = np.array(times) * 1e3
        for name, qv in (("p50", 50), ("p90", 90), ("p99", 99)):
            out[f"load_{mode}_{name}_ms"] = round(float(np.percentile(ms, qv)), 4)
    bank.close()
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return out
