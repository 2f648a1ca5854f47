"""A bank larger than memory: entries on disk in safetensors shards, only the keys in memory.

At paper scale an entry is about 0.29 MB, so 1e5 entries are about 29 GB: more than one machine
holds. A :class:`DiskBank` keeps every entry's tensors on disk, in safetensors shards that are
memory-mapped on demand (``safe_open``), and holds in memory only what recall needs: the keys, one
contiguous L2-normalised ``(N, d)`` float32 matrix (so a recall over the whole bank is one
matrix-vector product, as in :class:`~nsr_gym.bank.TaskKnowledgeBank`), and a few integers per
entry (owner, usage, steps, where its tensors are). Loading an entry reads only that entry's bytes.

The bank is an archive: entries are appended (ids ``0 .. N - 1`` never change) and read; there is
no capacity and no eviction (a :class:`TaskKnowledgeBank` in front of it is the working set).

On disk::

    root/manifest.json                  format version, key_dim, shard size, entry count, the
                                        index and shard files with their sha256
    root/index-<gen>.safetensors        keys (N, d) float32; owner, usage, created_step,
                                        last_used_step, group, row (N,) int64; tasks_served as
                                        flat values + offsets
    root/shards/<shard>-<gen>-<n>.safetensors
                                        entries ``shard * shard_size ..``, grouped by their tensor
                                        shapes; group ``g`` stacks each tensor ``name`` of its
                                        entries as ``"g<g>/<name>"`` ``(n_g, *shape)``, and entry
                                        ``i`` is row ``row[i]`` of group ``group[i]``

Stacking keeps a shard's safetensors header a few lines long (opening a shard costs microseconds
and almost no memory) and a load reads one row of each tensor (``get_slice``). Real entries
differ only in their kept SVD rank, so a shard holds a handful of groups.

:meth:`DiskBank.commit` writes new files under new names and replaces the manifest last
(``os.replace``), so a reader or a crash sees the previous commit or the new one, never a mix;
files no manifest names are removed after the commit. Opening reads the manifest and the index
and checks both before allocating anything (:mod:`nsr_gym.bank.disk_files`: limits, counts,
shapes, dtypes, values, the manifest's own checksum and the index's sha256); a shard's header is
checked when it is opened, and :meth:`DiskBank.verify` re-hashes the shards (it reads them all).
Nothing is unpickled.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save_file as np_save_file

from nsr_gym.atomic import atomic_path, sha256_file
from nsr_gym.bank.checks import PAYLOAD_DTYPES
from nsr_gym.bank.core import TaskKnowledgeBank
from nsr_gym.bank.disk_files import (
    DISKBANK_FORMAT_VERSION,
    INT_FIELDS,
    MANIFEST,
    check_shard,
    read_index,
    read_manifest,
    write_manifest,
)
from nsr_gym.bank.disk_files import fail as _fail
from nsr_gym.bank.entry import BankEntry

__all__ = ["DISKBANK_FORMAT_VERSION", "DiskBank"]

_MANIFEST = MANIFEST
_INT_FIELDS = INT_FIELDS


class DiskBank:
    """Entries on disk, keys in memory.

    Open an existing bank with ``DiskBank(root)``, create one with :meth:`DiskBank.create`.

    Args:
        root: The bank's directory.
        max_open_shards: Shard files kept open (memory-mapped) at once, least recently used
            closed first. An open shard costs its parsed header (a few groups) and address
            space; the pages it reads stay in the OS page cache, which the OS reclaims.

    Raises:
        BankFormatError: when the manifest or index is missing, corrupt or of another version.
    """

    def __init__(self, root: str | os.PathLike, max_open_shards: int = 1024) -> None:
        self.root = Path(root)
        self.max_open_shards = int(max_open_shards)
        m = read_manifest(self.root)  # every field checked before anything is allocated
        idx = read_index(self.root, m) if m["index"] is not None else None
        self.key_dim, self.shard_size = m["key_dim"], m["shard_size"]
        self._gen = m["generation"]
        self._shards: list[dict[str, Any]] = list(m["shards"])
        n = m["n_entries"]
        self._keys = np.zeros((max(n, 16), self.key_dim), dtype=np.float32)
        self._ints = {f: np.zeros(max(n, 16), dtype=np.int64) for f in _INT_FIELDS}
        self._served: list[int] = []  # tasks_served of every entry, flat
        # entry i served self._served[off[i]:off[i + 1]]
        self._served_off = np.zeros(len(self._keys) + 1, dtype=np.int64)
        self._n = 0
        if idx is not None:
            self._keys[:n] = idx["keys"]
            for f in _INT_FIELDS:
                self._ints[f][:n] = idx[f]
            self._served = idx["served"].tolist()
            self._served_off[: n + 1] = idx["served_offsets"]
            self._n = n
        self._pending: list[dict[str, np.ndarray]] = []  # entries of the shard being filled
        self._pending_shard = -1
        self._open: OrderedDict[int, Any] = OrderedDict()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, root: str | os.PathLike, key_dim: int, shard_size: int = 1024,
               exist_ok: bool = False) -> DiskBank:
        """Create an empty bank in ``root`` (an existing bank there is an error unless
        ``exist_ok``, which opens it instead)."""
        root = Path(root)
        if (root / _MANIFEST).exists():
            if exist_ok:
                return cls(root)
            raise FileExistsError(f"{root} already holds a DiskBank; open it with DiskBank(root)")
        if int(key_dim) < 1 or int(shard_size) < 1:
            raise ValueError("DiskBank needs key_dim >= 1 and shard_size >= 1")
        (root / "shards").mkdir(parents=True, exist_ok=True)
        write_manifest(root, {"key_dim": int(key_dim), "shard_size": int(shard_size),
                              "generation": 0, "n_entries": 0, "index": None, "shards": []})
        return cls(root)

    @classmethod
    def from_bank(cls, bank: TaskKnowledgeBank, root: str | os.PathLike,
                  shard_size: int = 1024) -> DiskBank:
        """Archive the occupied slots of an in-memory bank, in slot order, into a new DiskBank."""
        disk = cls.create(root, bank.key_dim, shard_size)
        for e in bank.slots:
            if e is not None:
                disk.append(e)
        disk.commit()
        return disk

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return self._n

    @property
    def keys(self) -> np.ndarray:
        """``(N, d)`` float32 L2-normalised keys (a read-only view)."""
        view = self._keys[: self._n]
        view.flags.writeable = False
        return view

    def similarities(self, query: np.ndarray) -> np.ndarray:
        """``(N,)`` float32 cosine of ``query`` ``(d,)`` with every key (zeros for a zero query)."""
        q = np.asarray(query, dtype=np.float64).reshape(-1)
        if q.shape != (self.key_dim,) or not np.isfinite(q).all():
            raise ValueError(f"query must be a finite ({self.key_dim},) vector, got {q.shape}")
        norm = float(np.linalg.norm(q))
        if norm == 0.0:
            return np.zeros(self._n, dtype=np.float32)
        sims = self._keys[: self._n] @ (q / norm).astype(np.float32)
        return np.clip(sims, -1.0, 1.0)

    def recall(self, query: np.ndarray, top_k: int = 1) -> list[tuple[int, float]]:
        """At most ``top_k`` ``(entry id, cosine)``, most similar first (ties: lower id)."""
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        sims = self.similarities(query)
        k = min(top_k, len(sims))
        if k == 0:
            return []
        if k == 1:  # argmax returns the lowest id among ties
            i = int(np.argmax(sims))
            return [(i, float(sims[i]))]
        part = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
        # Stable sort on (-sim, id) so ties keep the lower id, as TaskKnowledgeBank.recall does.
        order = part[np.lexsort((part, -sims[part]))]
        return [(int(i), float(sims[i])) for i in order]

    def recall_many(self, queries: np.ndarray) -> np.ndarray:
        """``(Q,)`` int64 top-1 entry id of each row of ``queries`` ``(Q, d)`` (-1 when empty)."""
        q = np.asarray(queries, dtype=np.float32)
        if len(self) == 0:
            return np.full(len(q), -1, dtype=np.int64)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        step = max(1, (1 << 24) // self._n)  # at most 16M similarities (64 MB) at a time
        return np.concatenate([np.argmax(q[lo:lo + step] @ self._keys[: self._n].T, axis=1)
                               for lo in range(0, len(q), step)]).astype(np.int64)

    def get(self, i: int) -> BankEntry:
        """Entry ``i`` with its tensors read from disk (only that entry's bytes)."""
        i = self._check_id(i)
        tensors = self.get_tensors(i)
        lo, hi = self._served_off[i], self._served_off[i + 1]
        return BankEntry(key=self._keys[i].copy(), tensors=tensors,
                         owner=int(self._ints["owner"][i]), tasks_served=self._served[lo:hi],
                         usage=int(self._ints["usage"][i]),
                         created_step=int(self._ints["created_step"][i]),
                         last_used_step=int(self._ints["last_used_step"][i]), inserted_order=i)

    def get_tensors(self, i: int) -> dict[str, torch.Tensor]:
        """Entry ``i``'s tensors, from the memory-mapped shard (or the unwritten last one)."""
        i = self._check_id(i)
        shard = i // self.shard_size
        if shard == self._pending_shard:
            named = self._pending[i - shard * self.shard_size]
            return {k: torch.from_numpy(np.array(v)) for k, v in named.items()}
        handle = self._handle(shard)
        g, r = int(self._ints["group"][i]), int(self._ints["row"][i])
        out = {}
        for name in self._shards[shard]["groups"][g]:
            sl = handle.get_slice(f"g{g}/{name}")
            if r >= sl.get_shape()[0]:
                raise _fail(self.root / "shards" / self._shards[shard]["file"],
                            f"entry {i} is row {r} of group {g}, which has {sl.get_shape()[0]}")
            out[name] = sl[r]
        return out

    def owners(self) -> np.ndarray:
        """``(N,)`` int64 owner task of every entry (a copy)."""
        return self._ints["owner"][: self._n].copy()

    def touch(self, i: int, step: int) -> None:
        """Record a load of entry ``i`` (kept in memory until the next :meth:`commit`)."""
        i = self._check_id(i)
        self._ints["usage"][i] += 1
        self._ints["last_used_step"][i] = int(step)

    # ------------------------------------------------------------------ sizes
    @property
    def memory_bytes(self) -> int:
        """Bytes of the in-memory index: keys, integer fields and tasks_served (not counting the
        shard pages the OS caches, nor an unwritten shard)."""
        return (self._n * (self.key_dim * 4 + 8 * (len(_INT_FIELDS) + 1))
                + 8 * len(self._served))

    @property
    def disk_bytes(self) -> int:
        """Bytes of the committed shard and index files."""
        files = [self.root / "shards" / s["file"] for s in self._shards]
        return sum(p.stat().st_size for p in files if p.exists())

    # ------------------------------------------------------------------ writing
    def append(self, entry: BankEntry) -> int:
        """Append an entry (key normalised here); returns its id. Durable after :meth:`commit`."""
        tensors = {name: t.detach().cpu().contiguous().numpy() for name, t in entry.tensors.items()}
        ids = self.append_many(np.asarray(entry.key, dtype=np.float32)[None], [tensors],
                               owners=[entry.owner], tasks_served=[entry.tasks_served],
                               steps=[entry.created_step])
        return int(ids[0])

    def append_many(self, keys: np.ndarray, tensors: Iterable[Mapping[str, np.ndarray]],
                    owners: Iterable[int], tasks_served: Iterable[Iterable[int]] | None = None,
                    steps: Iterable[int] | None = None) -> np.ndarray:
        """Append ``len(keys)`` entries at once (the fast path for bulk writes).

        Args:
            keys: ``(n, d)`` raw keys.
            tensors: Per entry, name -> array (float32 by convention; any shapes).
            owners: Per entry, the owner task id.
            tasks_served: Per entry, task ids (default ``[owner]``).
            steps: Per entry, the env step of the insert (default 0).

        Returns:
            ``(n,)`` int64 ids.
        """
        keys = np.asarray(keys, dtype=np.float32)
        if keys.ndim != 2 or keys.shape[1] != self.key_dim or not np.isfinite(keys).all():
            raise ValueError(f"keys must be a finite (n, {self.key_dim}) array, got {keys.shape}")
        n0, n = self._n, len(keys)
        owners = [int(o) for o in owners]
        served = [[int(o)] for o in owners] if tasks_served is None else [
            list(dict.fromkeys(int(t) for t in s)) for s in tasks_served]
        steps = [0] * n if steps is None else [int(s) for s in steps]
        if not len(owners) == len(served) == len(steps) == n:
            raise ValueError("append_many: keys, tensors, owners, tasks_served and steps differ "
                             "in length")
        self._grow(n0 + n)
        norms = np.linalg.norm(keys.astype(np.float64), axis=1, keepdims=True)
        self._keys[n0:n0 + n] = (keys / np.where(norms == 0, 1.0, norms)).astype(np.float32)
        self._ints["owner"][n0:n0 + n] = owners
        self._ints["usage"][n0:n0 + n] = 0
        self._ints["created_step"][n0:n0 + n] = steps
        self._ints["last_used_step"][n0:n0 + n] = steps
        for j, s in enumerate(served):
            self._served.extend(s)
            self._served_off[n0 + j + 1] = self._served_off[n0 + j] + len(s)
        count = 0
        for j, named in enumerate(tensors):
            i = n0 + j
            shard = i // self.shard_size
            if shard != self._pending_shard:
                self._write_pending()
                self._load_pending(shard)
            self._pending.append(_checked_tensors(named))
            self._n = i + 1
            count += 1
            if (i + 1) % self.shard_size == 0:
                self._write_pending()
        if count != n:
            raise ValueError(f"append_many: {n} keys but {count} tensor dicts")
        return np.arange(n0, n0 + n, dtype=np.int64)

    def commit(self) -> None:
        """Make every appended entry durable: write the last shard and the index, then the
        manifest (the commit point), then remove files the new manifest does not name."""
        self._write_pending(keep=True)
        self._gen += 1
        n = self._n
        index = {"keys": np.ascontiguousarray(self._keys[:n]),
                 "served": np.asarray(self._served, dtype=np.int64).reshape(-1),
                 "served_offsets": self._served_off[: n + 1].copy(),
                 **{f: self._ints[f][:n].copy() for f in _INT_FIELDS}}
        ipath = self.root / f"index-{self._gen:06d}.safetensors"
        _atomic_save(ipath, index)
        write_manifest(self.root, {"key_dim": self.key_dim, "shard_size": self.shard_size,
                                   "generation": self._gen, "n_entries": n,
                                   "index": {"file": ipath.name, "sha256": sha256_file(ipath)},
                                   "shards": self._shards})
        named = {ipath.name} | {s["file"] for s in self._shards}
        for p in [*self.root.glob("index-*.safetensors"), *(self.root / "shards").glob("*")]:
            if p.name not in named:
                p.unlink(missing_ok=True)

    def verify(self) -> None:
        """Re-hash every shard against the manifest (reads the whole bank).

        Raises:
            BankFormatError: naming the first shard that is missing or differs.
        """
        for s in self._shards:
            p = self.root / "shards" / s["file"]
            if not p.is_file() or sha256_file(p) != s["sha256"]:
                raise _fail(p, "shard is missing or its sha256 differs from the manifest's")

    def close(self) -> None:
        """Close the memory-mapped shards (uncommitted appends are kept in memory)."""
        self._open.clear()

    def __enter__(self) -> DiskBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _check_id(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self._n:
            raise IndexError(f"DiskBank entry {i} is out of range: ids are 0..{self._n - 1}")
        return i

    def _grow(self, n: int) -> None:
        if n <= len(self._keys):
            return
        cap = max(n, 2 * len(self._keys))
        keys = np.zeros((cap, self.key_dim), dtype=np.float32)
        keys[: self._n] = self._keys[: self._n]
        self._keys = keys
        for f, arr in self._ints.items():
            grown = np.zeros(cap, dtype=np.int64)
            grown[: self._n] = arr[: self._n]
            self._ints[f] = grown
        off = np.zeros(cap + 1, dtype=np.int64)
        off[: self._n + 1] = self._served_off[: self._n + 1]
        self._served_off = off

    def _handle(self, shard: int) -> Any:
        handle = self._open.get(shard)
        if handle is None:
            path = self.root / "shards" / self._shards[shard]["file"]
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:  # missing file, or safetensors' own error types
                raise _fail(path, f"shard could not be opened ({exc})") from exc
            check_shard(handle, self._shards[shard], path)
            self._open[shard] = handle
            while len(self._open) > self.max_open_shards:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(shard)
        return handle

    def _load_pending(self, shard: int) -> None:
        """Start filling ``shard``: its committed entries (a partial last shard) come along."""
        self._pending, self._pending_shard = [], shard
        if shard < len(self._shards):
            self._open.pop(shard, None)
            stored = np_load_file(str(self.root / "shards" / self._shards[shard]["file"]))
            groups = self._shards[shard]["groups"]
            first = shard * self.shard_size
            for i in range(first, first + self._shards[shard]["n_entries"]):
                g, r = int(self._ints["group"][i]), int(self._ints["row"][i])
                self._pending.append({name: stored[f"g{g}/{name}"][r] for name in groups[g]})

    def _write_pending(self, keep: bool = False) -> None:
        """Write the shard being filled under a new name and record it (not yet committed)."""
        shard = self._pending_shard
        if shard < 0 or not self._pending:
            return
        if shard < len(self._shards) and self._shards[shard]["n_entries"] == len(self._pending):
            if not keep:
                self._pending, self._pending_shard = [], -1
            return  # nothing new since it was written
        first = shard * self.shard_size
        signatures: dict[tuple, int] = {}  # tensor names, shapes and dtypes -> group
        members: list[list[dict[str, np.ndarray]]] = []
        for j, named in enumerate(self._pending):
            sig = tuple(sorted((k, v.shape, v.dtype.str) for k, v in named.items()))
            g = signatures.setdefault(sig, len(signatures))
            if g == len(members):
                members.append([])
            self._ints["group"][first + j], self._ints["row"][first + j] = g, len(members[g])
            members[g].append(named)
        groups = [sorted(rows[0]) for rows in members]
        stacked = {f"g{g}/{name}": np.stack([e[name] for e in rows])
                   for g, rows in enumerate(members) for name in groups[g]}
        n = len(self._pending)
        path = self.root / "shards" / f"{shard:06d}-{self._gen + 1:06d}-{n:05d}.safetensors"
        _atomic_save(path, stacked)
        record = {"file": path.name, "n_entries": n, "bytes": path.stat().st_size,
                  "sha256": sha256_file(path), "groups": groups}
        if shard < len(self._shards):
            self._shards[shard] = record
            self._open.pop(shard, None)
        else:
            self._shards.append(record)
        if not keep:
            self._pending, self._pending_shard = [], -1


def _checked_tensors(named: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``named`` as arrays, after checking names (non-empty, no ``/``) and payload dtypes."""
    out = {}
    for name, arr in named.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"bad tensor name {name!r}: a non-empty str without '/'")
        out[name] = np.asarray(arr)
        if out[name].dtype.name not in PAYLOAD_DTYPES:
            raise ValueError(f"tensor {name!r} is {out[name].dtype}; a DiskBank stores "
                             f"{', '.join(PAYLOAD_DTYPES)} payloads only")
    return out


def _atomic_save(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write a safetensors file atomically (:func:`nsr_gym.atomic.atomic_path`: fsynced, then
    renamed), so the manifest naming the file is written after it is on disk."""
    with atomic_path(path) as tmp:
        np_save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))

