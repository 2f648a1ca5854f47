"""The batched env over several processes: one :class:`BatchedAllocationEnv` per CPU core.

:class:`BatchedAllocationEnv` steps its ``N`` learners in one batched pass on one core (the
env's thread policy, :mod:`nsr_gym.threads`: tiny kernels do not gain from more threads).
:class:`ShardedBatchedEnv` splits the ``N`` envs into ``shards`` contiguous groups; the first
group is a :class:`BatchedAllocationEnv` in this process, each other one in its own worker
process, so a machine with ``k`` cores steps ``k`` batched passes at once (EnvPool's and
Gymnasium's ``AsyncVectorEnv``'s division of labour, with a batched env in every worker). Each
step sends the workers their envs' actions, steps the first group here meanwhile, and joins the
results.

Env ``i`` of the whole is env ``i`` of the unsharded batched env: it gets the same seed at a
reset (``seed + i``, or ``seed[i]``), so the same actions give the same observations, rewards and
infos, bit for bit (``tests/test_sharded_env.py``); the infos, autoreset modes, ``call``,
``get_attr``, ``set_attr`` and :meth:`action_masks` are those of :class:`BatchedAllocationEnv`.

Reach it with ``gym.make_vec(id, num_envs=N, shards=k)``. Workers start by the platform's
default ``multiprocessing`` method (``context`` chooses another); one started by ``"spawn"`` or
``"forkserver"`` imports the caller's main module, so a script guards its entry point with
``if __name__ == "__main__":``, as for ``AsyncVectorEnv``. A worker computes on one torch thread
whatever its start method (:mod:`nsr_gym.threads`).

Errors: actions are checked here before any shard steps, so an invalid one raises as it does in
the unsharded env and nothing moves. An exception a worker raises comes back as itself, its
traceback in a note (:class:`ShardWorkerError` where it does not pickle); after a failed step or
reset the shards may no longer agree on where the episode stands, so the env closes, as it does
when a worker dies. A failed ``call``, ``get_attr`` or ``set_attr`` leaves it usable.

Each shard pays the batched env's fixed cost per step (a few dozen kernel launches), so sharding
pays where each shard still holds many envs; ``nsr-gym perf`` measures 2 shards against one
process.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from nsr_gym.envs.batched import BatchedAllocationEnv, check_actions, reset_arguments

__all__ = ["ShardedBatchedEnv", "ShardWorkerError", "shard_sizes"]


class ShardWorkerError(RuntimeError):
    """A worker of a :class:`ShardedBatchedEnv` failed (its traceback is in the message)."""


def shard_sizes(num_envs: int, shards: int) -> list[int]:
    """How many envs each shard holds: as even as possible, the larger shards first.

    Raises:
        ValueError: unless ``1 <= shards <= num_envs``.
    """
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise ValueError(f"shards must be an int >= 1, got {shards!r}")
    if shards > num_envs:
        raise ValueError(f"shards={shards} is more than num_envs={num_envs}: each shard holds "
                         "at least one env")
    base, extra = divmod(int(num_envs), int(shards))
    return [base + (j < extra) for j in range(int(shards))]


def _failure(err: Exception) -> tuple[str, tuple[Exception | None, str]]:
    """A worker's answer for an exception: the exception itself where it pickles, and its
    traceback text."""
    text = traceback.format_exc()
    try:
        pickle.dumps(err)
    except Exception:  # noqa: BLE001 - an exception that does not travel: its text does
        return "error", (None, text)
    return "error", (err, text)


def _worker(conn: Connection, num_envs: int, autoreset_mode: str,
            env_kwargs: dict[str, Any]) -> None:
    """A worker's loop: build its shard, then answer ``(command, *args)`` messages with
    ``("ok", result)`` or ``("error", (exception, traceback text))`` until ``close``."""
    try:
        env = BatchedAllocationEnv(num_envs, autoreset_mode=autoreset_mode, **env_kwargs)
    except Exception as err:  # noqa: BLE001 - every failure goes back to the parent
        conn.send(_failure(err))
        conn.close()
        return
    conn.send(("ok", None))
    try:
        while True:
            command, *args = conn.recv()
            if command == "close":
                env.close()
                conn.send(("ok", None))
                return
            try:
                conn.send(("ok", _serve(env, command, args)))
            except Exception as err:  # noqa: BLE001
                conn.send(_failure(err))
    except (EOFError, KeyboardInterrupt):  # the parent went away, or the user interrupted it
        env.close()
    finally:
        conn.close()


def _serve(env: BatchedAllocationEnv, command: str, args: list[Any]) -> Any:
    """One command on a worker's shard (the parent's own shard takes the same calls)."""
    if command == "step":
        return env.step(args[0])
    if command == "reset":
        return env.reset(**args[0])
    if command == "method":  # a method of the shard's vector env itself
        name, a, kw = args
        return getattr(env, name)(*a, **kw)
    if command == "get_attr":
        return env.get_attr(args[0])
    if command == "set_attr":
        return env.set_attr(*args)
    if command == "cpu":
        return time.process_time()
    raise ValueError(f"unknown command {command!r}")


def _merge_info(parts: Sequence[dict[str, Any]], sizes: Sequence[int]) -> dict[str, Any]:
    """The shards' vector infos as one: every key's ``(n_j, ...)`` arrays concatenated in shard
    order, with its ``_key`` mask; a key some shard lacks (say ``final_obs`` where none of its
    envs ended) gets that shard's rows as Gymnasium's ``_add_info`` fills them (zeros, or
    ``None`` for objects) and a false mask. Nested dicts (``final_obs``) merge key by key."""
    first = parts[0]
    if all(part.keys() == first.keys() for part in parts[1:]) and \
            not any(isinstance(v, dict) for v in first.values()):
        return {k: np.concatenate([part[k] for part in parts]) for k in first}  # every step's
    keys: dict[str, None] = {}
    for part in parts:
        keys.update(dict.fromkeys(k for k in part if not (k.startswith("_") and k[1:] in part)))
    out: dict[str, Any] = {}
    for key in keys:
        values = [part.get(key) for part in parts]
        present = next(v for v in values if v is not None)
        if isinstance(present, dict):
            out[key] = _merge_info([v if v is not None else {} for v in values], sizes)
        else:
            like = np.asarray(present)
            out[key] = np.concatenate([
                np.asarray(v) if v is not None else
                np.full((n, *like.shape[1:]), None, dtype=object) if like.dtype == object else
                np.zeros((n, *like.shape[1:]), dtype=like.dtype)
                for v, n in zip(values, sizes, strict=True)])
        out[f"_{key}"] = np.concatenate([
            np.asarray(part[f"_{key}"]) if f"_{key}" in part else np.zeros(n, dtype=bool)
            for part, n in zip(parts, sizes, strict=True)])
    return out


class ShardedBatchedEnv(gym.vector.VectorEnv):
    """``num_envs`` allocation envs stepped as ``shards`` batched envs in parallel (module
    docstring).

    Args:
        num_envs: ``N``.
        shards: Batched envs, ``1 <= shards <= N`` (:func:`shard_sizes` divides the envs); the
            first runs in this process, each other in a worker process. One per core the
            machine can give the env.
        autoreset_mode: A ``gymnasium.vector.AutoresetMode`` (or its value).
        context: The ``multiprocessing`` start method of the workers (``"spawn"``,
            ``"forkserver"``, ``"fork"``); ``None``: the platform's default.
        **env_kwargs: :class:`AllocationEnv` keyword arguments, the same for every env
            (picklable: they travel to the workers).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int, shards: int = 2,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 context: str | None = None, **env_kwargs: Any) -> None:
        if not isinstance(num_envs, (int, np.integer)) or isinstance(num_envs, bool) \
                or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        self.sizes = shard_sizes(int(num_envs), shards)
        self.num_envs = int(num_envs)
        self.closed = self._broken = False
        self._conns: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        try:
            mode = AutoresetMode(autoreset_mode).value
        except ValueError:
            modes = [m.value for m in AutoresetMode]
            raise ValueError(f"autoreset_mode must be one of {modes}, got "
                             f"{autoreset_mode!r}") from None
        # The workers build their shards while this process builds its own.
        ctx = mp.get_context(context)
        for size in self.sizes[1:]:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, size, mode, env_kwargs),
                               daemon=True, name=f"nsr-gym-shard-{len(self._procs) + 1}")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        try:
            self.local = BatchedAllocationEnv(self.sizes[0], autoreset_mode=autoreset_mode,
                                              **env_kwargs)
            self._gather(diverges=True)  # every worker built its shard, or its error is raised
        except BaseException:
            self._stop()
            raise
        self.autoreset_mode = self.local.autoreset_mode
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.backend = self.local.backend
        self.single_observation_space = self.local.single_observation_space
        self.single_action_space = self.local.single_action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._bounds = np.cumsum([0, *self.sizes]).tolist()
        self._autoreset = np.zeros(self.num_envs, dtype=bool)  # NEXT_STEP: reset next step

    # ------------------------------------------------------------------ helpers
    def _split(self, values: Sequence[Any]) -> list[Sequence[Any]]:
        """``values`` (one per env) cut into the shards' parts."""
        b = self._bounds
        return [values[b[j]:b[j + 1]] for j in range(len(self.sizes))]

    def _send(self, messages: Sequence[tuple[Any, ...]]) -> None:
        """One message to each worker (``messages[j]`` goes to shard ``j + 1``)."""
        if self.closed or self._broken:
            raise gym.error.ClosedEnvironmentError(
                "the sharded env is closed" + (" (a worker failed): make a new one"
                                               if self._broken else ""))
        for j, (conn, proc, message) in enumerate(
                zip(self._conns, self._procs, messages, strict=True), start=1):
            try:
                conn.send(message)
            except OSError:  # its end of the pipe is gone: the worker died
                proc.join(1.0)
                self._broken = True
                self._stop()
                raise ShardWorkerError(f"shard {j} of the sharded env (process {proc.name}) "
                                       f"exited (code {proc.exitcode}); the env is closed"
                                       ) from None

    def _gather(self, diverges: bool = False) -> list[Any]:
        """Every worker's answer, in shard order. A worker's error is raised here (after every
        worker answered, so that none is left mid-message): as the exception it raised, its
        traceback in a note, or :class:`ShardWorkerError`. A worker that died, or an error where
        the shards may now disagree on where the episode stands (``diverges``: a step or a
        reset), closes the env."""
        answers, failed = [], []
        died = False
        for j, (conn, proc) in enumerate(zip(self._conns, self._procs, strict=True), start=1):
            try:
                status, value = conn.recv()
            except (EOFError, ConnectionError):
                proc.join(1.0)
                status, value = "error", (None, f"the worker process exited (code "
                                                f"{proc.exitcode}) without an answer")
                died = True
            if status == "error":
                failed.append((j, proc.name, *value))
            answers.append(value)
        if not failed:
            return answers
        if died or diverges:
            self._broken = True
            self._stop()
        j, name, err, text = failed[0]
        where = f"shard {j} of the sharded env (process {name})"
        if err is None:
            raise ShardWorkerError(f"{where} failed"
                                   + ("; the env is closed" if self._broken else "")
                                   + f":\n{text}")
        err.add_note(f"raised in {where}" + ("; the env is closed" if self._broken else "")
                     + f"; its traceback:\n{text}")
        raise err

    def _all(self, messages: Sequence[tuple[Any, ...]], local: Callable[[], Any],
             diverges: bool = False) -> list[Any]:
        """Every shard's result: ``messages[j]`` sent to worker ``j + 1``, and ``local()`` run on
        this process's shard while the workers run theirs (``diverges``: see :meth:`_gather`)."""
        self._send(messages)
        try:
            mine = local()
        except BaseException:
            self._gather(diverges)  # the workers' answers first: the protocol stays in step
            if diverges:
                self._broken = True
                self._stop()
            raise
        return [mine, *self._gather(diverges)]

    @staticmethod
    def _concat_obs(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    # ------------------------------------------------------------------ the vector API
    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """As :meth:`BatchedAllocationEnv.reset`: env ``i`` gets ``seed + i`` (an int seed),
        ``seed[i]`` (a list) or ``None``; ``options["reset_mask"]`` resets some envs only."""
        seeds, mask, options = reset_arguments(seed, options, self.num_envs)
        per_shard = [{"seed": list(part_seeds), "options": {**options, "reset_mask": part_mask}}
                     for part_seeds, part_mask in zip(self._split(seeds), self._split(mask),
                                                      strict=True)]
        results = self._all([("reset", kw) for kw in per_shard[1:]],
                            lambda: self.local.reset(**per_shard[0]), diverges=True)
        self._autoreset[mask] = False
        obs = self._concat_obs([r[0] for r in results])
        return obs, _merge_info([r[1] for r in results], self.sizes)

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray,
                                          np.ndarray, dict[str, Any]]:
        """Step every env with its action: the workers' shards and this process's at once."""
        # checked here, so that an invalid action raises before any shard steps
        arr = check_actions(actions, self.local.envs[0], self.num_envs, self._autoreset,
                            self.autoreset_mode)
        parts = self._split(arr)
        results = self._all([("step", part) for part in parts[1:]],
                            lambda: self.local.step(parts[0]), diverges=True)
        obs = self._concat_obs([r[0] for r in results])
        rewards, terminated, truncated = (np.concatenate([r[k] for r in results])
                                          for k in (1, 2, 3))
        if self.autoreset_mode != AutoresetMode.SAME_STEP:  # as each shard tracks its own
            self._autoreset = terminated | truncated
        return obs, rewards, terminated, truncated, _merge_info([r[4] for r in results],
                                                                self.sizes)

    def action_masks(self) -> np.ndarray:
        """``(N, mask_len)`` bool: each env's :meth:`AllocationEnv.action_masks`."""
        return np.concatenate(self._all([("method", "action_masks", (), {})] * len(self._conns),
                                        self.local.action_masks))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """``getattr(env, name)(*args, **kwargs)`` on every env (an attribute: its value),
        as :meth:`BatchedAllocationEnv.call`; results and arguments must pickle."""
        parts = self._all([("method", "call", (name, *args), kwargs)] * len(self._conns),
                          lambda: self.local.call(name, *args, **kwargs))
        return tuple(x for part in parts for x in part)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """The attribute ``name`` of every env."""
        parts = self._all([("get_attr", name)] * len(self._conns),
                          lambda: self.local.get_attr(name))
        return tuple(x for part in parts for x in part)

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        """Set ``name`` on every env: one value each (a list or tuple of ``N``), or one for all."""
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr got {len(values)} values for {self.num_envs} envs")
        parts = self._split(list(values))
        self._all([("set_attr", name, list(part)) for part in parts[1:]],
                  lambda: self.local.set_attr(name, list(parts[0])))

    def worker_cpu_seconds(self) -> list[float]:
        """Each worker process's CPU time so far, in seconds (``time.process_time`` there): with
        this process's own, what the env's steps cost the machine (``nsr-gym perf``)."""
        self._send([("cpu",)] * len(self._conns))
        return [float(t) for t in self._gather()]

    # ------------------------------------------------------------------ closing
    def _stop(self, timeout: float = 5.0) -> None:
        """Ask every live worker to close, wait for it, and end any that does not."""
        for conn in self._conns:
            try:
                conn.send(("close",))
            except (OSError, ValueError):  # already gone
                pass
        for conn, proc in zip(self._conns, self._procs, strict=True):
            try:
                if conn.poll(timeout):
                    conn.recv()
            except (EOFError, OSError):
                pass
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout)
            conn.close()
        self._conns, self._procs = [], []

    def close_extras(self, **kwargs: Any) -> None:
        if getattr(self, "local", None) is not None:
            self.local.close()
        if self._conns:
            self._stop()
