"""Executors: run the independent units of a sweep here, one after another, or as Ray tasks.

A sweep (a leaderboard, a study) is a list of :class:`Unit` s, one ``(agent, seed, setting)``
each, and a *unit function* ``fn(unit) -> result`` (a step log, a dict of metrics). Units share
nothing: a unit function builds its own env, takes every random draw from ``unit.seed`` and
returns its result, so where a unit runs never changes what it computes, and every executor
returns the results in unit order. The executors differ only in where ``fn`` runs:

* :class:`LocalExecutor` (the default): in this process, in order.
* :class:`RayExecutor`: as Ray tasks (``pip install "nsr-gym[ray]"``), on a local Ray instance
  started for the sweep (``ray.init(num_cpus=2)``), or on a running cluster when given its
  address (``"auto"`` on a node of the cluster, ``"ray://<head>:10001"`` through Ray Client).

A unit function must be picklable: a module-level function, or a ``functools.partial`` of one,
of a module every worker can import (Ray sends functions from installed modules by reference).
On a cluster every node needs nsr-gym's dependencies; :class:`RayExecutor` ships the
``nsr_gym`` package itself (``runtime_env`` ``py_modules``) unless
told otherwise.

Pointing it at a cluster:

1. Start Ray on the machines with the same Python and nsr-gym's dependencies
   (``pip install "nsr-gym[ray]"``): ``ray start --head --port=6379`` on the head,
   ``ray start --address=<head>:6379`` on each worker.
2. Run the sweep with ``--executor ray --ray-address <head>:6379`` from a node of the cluster
   (or ``--ray-address auto`` there), or ``--ray-address ray://<head>:10001`` from outside it
   (Ray Client). Units are scheduled one CPU each; the results come back to the driver, which
   writes the tables as before.
3. Ray 2.59+ turns on token authentication: the driver needs the cluster's token
   (``RAY_AUTH_TOKEN``, or ``ray get-auth-token`` on the head), or the whole cluster must be
   started with ``RAY_AUTH_MODE=disabled`` on a private network.

Resuming, the one path every sweep takes: :func:`run_units_kept` keeps each finished unit in a
:class:`UnitStore` (:class:`JsonStore` for JSON-able results, :class:`FrameStore` for tables
such as step logs, floats exact) and reads kept units back instead of running them again;
:meth:`Sweep.run` does the same on an executor it makes from a study's options. A kept unit is
trusted only when its checksum matches: :class:`JsonStore` stores the result's sha256 and the
unit's key inside the file, :class:`FrameStore` in a ``<name>.csv.sha256`` sidecar written before
the table (with the table's name, so another unit's pair copied in is refused too). A unit
whose file was edited, cut short, copied from another unit or has no checksum
is reported on stderr and runs again (the checksum guards against corruption and accidental
edits; it is not a signature: whoever can write the folder can recompute it).

This module imports nothing above the library core; the CLI and the studies hand it their
unit functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from nsr_gym.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    sha256_bytes,
    sha256_file,
    sha256_json,
)
from nsr_gym.jsonio import JsonFileError, read_json

#: Executor names, as the ``--executor`` options take them.
EXECUTORS: tuple[str, ...] = ("local", "ray")
#: Seconds :class:`RayExecutor` waits for a TCP connection to a given cluster address.
RAY_CONNECT_TIMEOUT_S = 10.0
#: Largest kept unit file read back (bytes); a bigger one is recomputed, never parsed.
MAX_UNIT_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Unit:
    """One independent piece of a sweep.

    Attributes:
        agent: Policy name (or the name of whatever the unit evaluates).
        seed: The seed every random draw of the unit comes from.
        setting: JSON-able configuration (env id and kwargs, a study's parameters).
    """

    agent: str
    seed: int
    setting: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A stable file-name-safe id, e.g. ``similarity__seed3__1f2e3d4c5b6a``: a hash of the
        setting and, where it names a registered ``env_id``, of that registration's kwargs, so
        that changing a registered benchmark never resumes a unit made on the old one."""
        setting = dict(self.setting)
        registered = registered_kwargs(setting.get("env_id"))
        if registered is not None:
            setting["__registered__"] = registered
        blob = json.dumps(setting, sort_keys=True, default=str)
        return f"{self.agent}__seed{self.seed}__{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def registered_kwargs(env_id: Any) -> dict[str, Any] | None:
    """The kwargs Gymnasium's registry holds for ``env_id`` (None: not a registered id)."""
    if not isinstance(env_id, str):
        return None
    from gymnasium.envs.registration import registry

    spec = registry.get(env_id)
    return None if spec is None else dict(spec.kwargs)


UnitFn = Callable[[Unit], Any]
OnDone = Callable[[Unit, Any], None]


class Executor(Protocol):
    """Runs a unit function over units; results come back in unit order."""

    name: str

    def map(self, fn: UnitFn, units: Sequence[Unit], on_done: OnDone | None = None,
            progress: bool = True, desc: str = "units") -> list[Any]:
        """``[fn(u) for u in units]``, calling ``on_done(unit, result)`` as each one finishes."""
        ...

    def close(self) -> None:
        """Release what the executor started."""
        ...


def _bar(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not progress, desc=desc, unit="unit")


class LocalExecutor:
    """Runs units in this process, in order."""

    name = "local"

    def map(self, fn: UnitFn, units: Sequence[Unit], on_done: OnDone | None = None,
            progress: bool = True, desc: str = "units") -> list[Any]:
        results = []
        with _bar(len(units), progress, desc) as bar:
            for unit in units:
                bar.set_postfix_str(f"{unit.agent} seed={unit.seed}")
                result = fn(unit)
                if on_done is not None:
                    on_done(unit, result)
                results.append(result)
                bar.update(1)
        return results

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _call(fn: UnitFn, unit: Unit) -> Any:
    """The Ray task body: ``fn`` travels as an argument, so partials and closures work too."""
    return fn(unit)


class RayExecutor:
    """Runs each unit as a Ray task.

    Args:
        address: ``None`` starts a private local Ray instance with ``num_cpus`` CPUs (and stops it
            on :meth:`close`); ``"auto"`` joins the cluster this machine belongs to (or the one
            ``RAY_ADDRESS`` names); ``"<host>:6379"`` or ``"ray://<head>:10001"`` a given one.
        num_cpus: CPUs of a local instance (ignored with an address).
        cpus_per_unit: CPUs Ray reserves per unit (one unit = one single-threaded rollout).
        ship_code: Send the ``nsr_gym``, ``agents`` and ``theory`` packages to the workers with
            ``runtime_env={"py_modules": ...}``; default: only when joining a cluster (a local
            instance imports the installed packages).
        runtime_env: Extra Ray ``runtime_env`` entries (``pip``, ``env_vars``, ...).

    Raises:
        ImportError: when Ray is not installed, saying how to install it.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int = 2, cpus_per_unit: float = 1,
                 ship_code: bool | None = None, runtime_env: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError('the ray executor needs Ray: pip install "nsr-gym[ray]" '
                              '(or pip install "ray[default]")') from err
        self._ray = ray
        self.address, self.cpus_per_unit = address, cpus_per_unit
        env = dict(runtime_env or {})
        if ship_code if ship_code is not None else address is not None:
            import nsr_gym

            # A directory, not a module object: Ray Client (ray://) pickles the runtime_env.
            # An editable install keeps nsr_gym.agents / nsr_gym.theory outside this folder,
            # so a remote cluster needs nsr-gym installed (a wheel ships all three inside it).
            env.setdefault("py_modules", [str(Path(nsr_gym.__file__).parent)])
        self._owns = not ray.is_initialized()
        if self._owns and address is not None:
            check_ray_address(address)
        if self._owns:
            kwargs: dict[str, Any] = dict(runtime_env=env or None, logging_level=logging.WARNING,
                                          log_to_driver=False)
            if address is None:
                ray.init(address="local", num_cpus=int(num_cpus), include_dashboard=False,
                         **kwargs)
            else:
                ray.init(address=address, **kwargs)
        self._remote = ray.remote(_call)

    def map(self, fn: UnitFn, units: Sequence[Unit], on_done: OnDone | None = None,
            progress: bool = True, desc: str = "units") -> list[Any]:
        ray = self._ray
        fn_ref = ray.put(fn)
        task = self._remote.options(num_cpus=self.cpus_per_unit, max_retries=0)
        refs = [task.remote(fn_ref, unit) for unit in units]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(units)
        pending = list(refs)
        with _bar(len(units), progress, f"{desc} (ray)") as bar:
            try:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    for ref in done:
                        i = index[ref]
                        results[i] = ray.get(ref)
                        if on_done is not None:
                            on_done(units[i], results[i])
                        bar.update(1)
            except BaseException:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        return results

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RayUnreachableError(ConnectionError):
    """A Ray address given to :class:`RayExecutor` does not answer as a Ray server."""


def check_ray_address(address: str, timeout_s: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Fail fast when a ``host:port`` (or ``ray://host:port``) Ray address does not answer.

    One gRPC call to a method no server has: Ray's gRPC servers (the GCS, the Ray Client server)
    answer it at once (``UNIMPLEMENTED``, or ``UNAUTHENTICATED`` with token auth); a closed port,
    or a proxy that accepts the connection with nothing behind it, fails here within
    ``timeout_s`` seconds, instead of ``ray.init`` retrying for minutes without a word.
    ``"auto"``, addresses without a port and TLS clusters (``RAY_USE_TLS=1``) are left to Ray.

    Raises:
        ValueError: for an address that is not a non-empty string.
        RayUnreachableError: naming the address and what to do.
    """
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"--ray-address must be 'auto', 'host:port' or 'ray://host:port', "
                         f"got {address!r}")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not sep or not port.isdigit() or \
            os.environ.get("RAY_USE_TLS", "0") not in ("0", ""):
        return
    if not 0 < int(port) < 65536:
        raise ValueError(f"--ray-address {address}: port {port} is not in 1..65535")
    import grpc

    hint = ("Start it (`ray start --head --port=6379` on the head), check --ray-address, or drop "
            "--ray-address to run on a local Ray instance")
    channel = grpc.insecure_channel(f"{host or '127.0.0.1'}:{port}")
    try:
        ping = channel.unary_unary("/nsr_gym.Probe/Ping", request_serializer=bytes,
                                   response_deserializer=bytes)
        ping(b"", timeout=timeout_s)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or \
                "http2 header with status" in details:  # no server, or an HTTP server, not gRPC
            raise RayUnreachableError(
                f"cannot reach a Ray cluster at {address} ({code.name.lower()}: {details[:200]}; "
                f"waited at most {timeout_s:g} s). {hint}") from None
    finally:
        channel.close()


def make_executor(name: str = "local", address: str | None = None, **kwargs: Any) -> Executor:
    """``"local"`` or ``"ray"`` (``address`` and ``kwargs`` go to :class:`RayExecutor`)."""
    if name == "local":
        if address is not None:
            raise ValueError("an address only applies to the ray executor (--executor ray)")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, **kwargs)
    raise ValueError(f"unknown executor {name!r}; choose one of {EXECUTORS}")


def run_units(executor: Executor, fn: UnitFn, units: Iterable[Unit],
              skip: Callable[[Unit], Any | None] | None = None, on_done: OnDone | None = None,
              progress: bool = True, desc: str = "units") -> list[Any]:
    """Run ``fn`` over ``units`` on ``executor``, reusing finished ones (resume).

    Args:
        executor: Where the units run.
        fn: Picklable unit function.
        units: The sweep.
        skip: Returns a stored result of a unit already done, or ``None`` to run it.
        on_done: Called with ``(unit, result)`` after each unit that ran (checkpointing).
        progress: Show a progress bar.
        desc: Label of the progress bar.

    Returns:
        One result per unit, in unit order.
    """
    units = list(units)
    results: list[Any] = [skip(u) if skip is not None else None for u in units]
    todo = [i for i, r in enumerate(results) if r is None]
    fresh = executor.map(fn, [units[i] for i in todo], on_done=on_done, progress=progress,
                         desc=desc)
    for i, r in zip(todo, fresh, strict=True):
        results[i] = r
    return results


class UnitStore(Protocol):
    """Where finished units' results are kept, so that an interrupted sweep resumes."""

    def load(self, unit: Unit) -> Any | None:
        """The kept result of ``unit``, or ``None`` to run it (again)."""
        ...

    def save(self, unit: Unit, result: Any) -> None:
        """Keep ``result`` (atomically: a crash leaves the old file or the new one)."""
        ...


class JsonStore:
    """Keeps JSON-able results as ``folder/<unit.key>.json``, each with its sha256 inside.

    A file holds ``{"nsr_gym_unit": 1, "unit": <unit.key>, "sha256": <sha256 of the result's
    canonical JSON>, "result": <result>}``; one whose checksum or unit key does not match, or
    that is unreadable, is reported on stderr and the unit runs again.

    Args:
        folder: Where the files go (created on the first save).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def load(self, unit: Unit) -> Any | None:
        path = self.folder / f"{unit.key}.json"
        if not path.exists():
            return None
        try:
            kept = read_json(path, max_bytes=MAX_UNIT_BYTES, what="unit log")
            problem = _json_unit_problem(kept, unit)
        except JsonFileError as exc:
            problem, kept = exc.problem, None
        if problem is None:
            return kept["result"]
        _recompute_note(path, problem, unit)
        return None

    def save(self, unit: Unit, result: Any) -> None:
        plain = json.loads(json.dumps(result, default=float))
        record = {"nsr_gym_unit": 1, "unit": unit.key, "sha256": sha256_json(plain),
                  "result": plain}
        atomic_write_text(self.folder / f"{unit.key}.json", json.dumps(record, default=float))


def _json_unit_problem(kept: dict[str, Any], unit: Unit) -> str | None:
    if kept.get("nsr_gym_unit") != 1 or "result" not in kept:
        return "no checksum: written by an older version"
    if kept.get("unit") != unit.key:
        return f"another unit's result ({kept.get('unit')!r})"
    if kept.get("sha256") != sha256_json(kept["result"]):
        return "its result does not match its sha256: edited or corrupted"
    return None


def _recompute_note(path: Path, problem: str, unit: Unit) -> None:
    print(f"warning: {path} is not a complete unit log ({problem}); running {unit.agent} "
          f"seed {unit.seed} again", file=sys.stderr)


class FrameStore:
    """Keeps ``pandas.DataFrame`` results as ``folder/<name(unit)>.csv``, floats exact.

    Floats are written with 17 significant digits and parsed back with round-trip precision, so
    a resumed unit gives the bits a computed one does. Each table's sha256, byte count and file
    name go to a ``<name>.csv.sha256`` sidecar, checked before the table is parsed (``check``
    then says whether a table that is intact is this unit's). A file that is
    not a complete result (no or another checksum, unreadable, or one ``check`` objects to:
    written by another version, edited or cut short by hand) is reported on stderr and the unit
    runs again; it never counts as finished.

    Args:
        folder: Where the files go (created on the first save).
        name: File stem of a unit's file (default ``unit.key``).
        check: ``check(frame, unit)`` says what is wrong with a stored frame, or ``None`` when
            it is a complete result of ``unit``.
    """

    def __init__(self, folder: str | os.PathLike, name: Callable[[Unit], str] | None = None,
                 check: Callable[[pd.DataFrame, Unit], str | None] | None = None) -> None:
        self.folder = Path(folder)
        self.name = name or (lambda unit: unit.key)
        self.check = check

    def path(self, unit: Unit) -> Path:
        """The file that keeps ``unit``'s result."""
        return self.folder / f"{self.name(unit)}.csv"

    def sidecar(self, unit: Unit) -> Path:
        """The checksum file of ``unit``'s table: ``<name>.csv.sha256`` (JSON)."""
        return self.folder / f"{self.name(unit)}.csv.sha256"

    def load(self, unit: Unit) -> pd.DataFrame | None:
        path = self.path(unit)
        if not path.is_file():
            return None
        problem = self._checksum_problem(path, unit)
        frame = None
        if problem is None:
            try:
                frame = pd.read_csv(path, float_precision="round_trip")
                problem = None if self.check is None else self.check(frame, unit)
            except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
                problem = f"unreadable ({exc})"
        if problem is None:
            return frame
        _recompute_note(path, problem, unit)
        return None

    def _checksum_problem(self, path: Path, unit: Unit) -> str | None:
        """What is wrong with ``path`` against its sidecar (checked before it is parsed)."""
        side = self.sidecar(unit)
        if not side.is_file():
            return f"no checksum file {side.name}: written by an older version or cut short"
        try:
            meta = read_json(side, max_bytes=4096, what="unit checksum file")
        except JsonFileError as exc:
            return f"{side.name}: {exc.problem}"
        size = path.stat().st_size
        if meta.get("file") != path.name:
            return f"its checksum file is another unit's ({str(meta.get('file'))[:80]!r})"
        if meta.get("bytes") != size or size > MAX_UNIT_BYTES:
            return (f"{size} bytes, its checksum file says {meta.get('bytes')!r}: cut short or "
                    "edited")
        if meta.get("sha256") != sha256_file(path):
            return "its sha256 differs from its checksum file's: edited or corrupted"
        return None

    def save(self, unit: Unit, result: pd.DataFrame) -> None:
        text = result.to_csv(index=False, float_format="%.17g")
        data = text.encode("utf-8")
        # The checksum first: a table on disk always has one (a crash between the two writes
        # leaves a stale or missing table, which the checksum then refuses).
        atomic_write_text(self.sidecar(unit), json.dumps(
            {"file": self.path(unit).name, "bytes": len(data), "sha256": sha256_bytes(data)}))
        atomic_write_bytes(self.path(unit), data)


def run_units_kept(executor: Executor, fn: UnitFn, units: Iterable[Unit],
                   store: str | os.PathLike | UnitStore, resume: bool = True,
                   progress: bool = True, desc: str = "units") -> tuple[list[Any], int]:
    """:func:`run_units` with each finished unit kept in ``store``: the one resume path.

    A unit ``store`` holds is read back instead of run (unless ``resume`` is off), so an
    interrupted sweep resumes; every unit that runs is saved as soon as it finishes.

    Args:
        executor: Where the units run.
        fn: Picklable unit function.
        units: The sweep.
        store: A :class:`UnitStore`, or a folder for a :class:`JsonStore` (JSON-able results).
        resume: Read kept units back; off, every unit runs (and is saved again).
        progress: Show a progress bar.
        desc: Label of the progress bar.

    Returns:
        ``(results in unit order, number of units read back)``.
    """
    if isinstance(store, (str, os.PathLike)):
        store = JsonStore(store)
    resumed = 0

    def skip(unit: Unit) -> Any | None:
        nonlocal resumed
        result = store.load(unit) if resume else None
        resumed += result is not None
        return result

    results = run_units(executor, fn, units, skip=skip, on_done=store.save, progress=progress,
                        desc=desc)
    return results, resumed


@dataclass(frozen=True)
class Sweep:
    """How a sweep's units run: on which executor, resuming kept units or not, with a bar."""

    executor: str = "local"
    """``local`` or ``ray`` (:data:`EXECUTORS`)."""
    ray_address: str | None = None
    """The Ray cluster to join (``None``: a local Ray instance; see :class:`RayExecutor`)."""
    resume: bool = True
    """Read kept units back instead of running them again."""
    progress: bool = True
    """Show a progress bar."""

    def run(self, fn: UnitFn, units: Iterable[Unit], store: str | os.PathLike | UnitStore,
            desc: str = "units") -> tuple[list[Any], int]:
        """:func:`run_units_kept` on a fresh executor of this kind (closed afterwards).

        Returns:
            ``(results in unit order, number of units read back)``.
        """
        with make_executor(self.executor, self.ray_address) as executor:
            return run_units_kept(executor, fn, units, store, resume=self.resume,
                                  progress=self.progress, desc=desc)


def config_hash(obj: object) -> str:
    """A short stable hash of a JSON-able configuration (names resume directories)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())[:12]
