"""Speed measurements of the hot paths, as tables: what ``nsr-gym perf`` writes to results/perf/.

Every figure is a median over repeats, taken both in wall-clock time and in this process's CPU
time (``time.process_time``): on a shared machine other jobs stretch the wall clock, while the
CPU time is what the work itself costs. ``nsr-gym perf`` runs torch and numpy's BLAS on one
thread (as the tests do), so the two agree on an idle machine; :mod:`nsr_gym.studies.perf_report`
runs them at the command's sizes and writes the report. Sections:

* :func:`env_throughput`: env steps per second through ``gymnasium.make`` (wrappers included),
  fast torch path against the ``peft`` reference path, and the analytic backend;
* :func:`compression`: :func:`~nsr_gym.bank.compress_lora` (QR + small SVD) against a dense SVD
  of ``B @ A`` at ``d x d``, for a range of LoRA ranks, with the reconstruction difference;
* :func:`recall_latency`: exact top-1 recall over ``n`` stored keys (one query at a time);
* :func:`batched_throughput`: the numpy-vectorised analytic sweep
  (:func:`~nsr_gym.studies.analytic_sweep.simulate_analytic`), steps per second against the
  batch size;
* :func:`vector_env_throughput`: the batched vector env against ``N`` single envs in a loop;
  :func:`vector_env_step_kinds`: where its time goes (phase starts, inside, phase ends);
  :func:`sharded_env_throughput`: the batched env divided over several processes;
  :func:`batched_learner_cost`: one batched update and evaluation alone, against ``N``;
* :func:`reference_speed`: a fixed workload timed before and after, the machine's own speed;
* :func:`bytes_per_task` and :func:`rank_scaling`: what a bank entry weighs and how step cost
  and entry size grow with the LoRA rank; :func:`task_scaling`: how step cost grows with the
  number of tasks the bank holds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


@dataclass
class Timing:
    """Medians over repeats of one measurement: seconds per call, wall clock and CPU."""

    wall_s: float
    cpu_s: float
    repeats: int


def _timed(fn: Callable[[], object], number: int = 1) -> tuple[float, float]:
    """``(wall, cpu)`` seconds per call of ``fn`` over ``number`` calls."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(number):
        fn()
    return (time.perf_counter() - w0) / number, (time.process_time() - c0) / number


def _medians(samples: list[tuple[float, float]]) -> Timing:
    """The :class:`Timing` of ``(wall, cpu)`` samples."""
    return Timing(float(np.median([w for w, _ in samples])),
                  float(np.median([c for _, c in samples])), len(samples))


def measure(fn: Callable[[], object], repeats: int = 5, number: int = 1, warmup: int = 1) -> Timing:
    """Median seconds per call of ``fn`` over ``repeats`` runs of ``number`` calls each."""
    for _ in range(warmup):
        fn()
    return _medians([_timed(fn, number) for _ in range(repeats)])


def measure_pair(first: Callable[[], object], second: Callable[[], object], repeats: int = 5,
                 warmup: int = 1) -> tuple[Timing, Timing]:
    """:func:`measure` of two functions whose ratio is the figure, their runs interleaved
    (first, second, first, ...): on a shared machine whose speed drifts over minutes, both then
    see the same machine, which back-to-back blocks of repeats do not."""
    for _ in range(warmup):
        first()
        second()
    samples: tuple[list, list] = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), samples, strict=True):
            out.append(_timed(fn))
    return _medians(samples[0]), _medians(samples[1])


def reference_speed(repeats: int = 5) -> float:
    """The machine's speed, as one fixed workload measures it: CPU microseconds for 50 small
    matrix products and 50 elementwise operations issued from Python (the shape of the env's own
    work), median over repeats. The workload never changes, so where it takes longer in one run
    than in another, the machine was slower, not nsr-gym."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(32, 64, generator=gen), torch.randn(64, 64, generator=gen) / 8

    def work() -> torch.Tensor:
        h = x
        for _ in range(50):
            h = torch.tanh(h @ w)  # bounded: the same values, and the same cost, every call
        return h

    return 1e6 * measure(work, repeats=repeats, number=20).cpu_s


def machine_load() -> float:
    """The 1-minute load average (``nan`` where the OS does not report one)."""
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return float("nan")


# ----------------------------------------------------------------------------- env throughput


def _rollout(env, n_steps: int, actions: Sequence[int], seed: int) -> None:
    """``n_steps`` env steps from a precomputed action stream (an invalid load becomes keep), so
    the policy costs nothing and what is timed is the env."""
    _, info = env.reset(seed=seed)
    for i in range(n_steps):
        a = actions[i % len(actions)]
        if not info["action_mask"][a]:
            a = 0
        _, _, terminated, truncated, info = env.step(a)
        if terminated or truncated:
            _, info = env.reset(seed=seed + i + 1)


def env_steps_per_second(benchmark: str, backend: str, learner: dict | None = None,
                         n_steps: int = 600, repeats: int = 5, switch_p: float = 0.1,
                         seed: int = 0, **env_kwargs) -> Timing:
    """Seconds per env step of ``gymnasium.make(benchmark id, backend=..., learner=...)``.

    The action stream keeps the active subspace with probability ``1 - switch_p`` and otherwise
    picks fresh or a load uniformly (invalid loads keep), so loads, zero-shot evaluations and
    phase-end compressions are all in the mix, as under a learning policy.
    """
    import gymnasium as gym

    import nsr_gym

    kwargs = dict(env_kwargs, backend=backend)
    if learner is not None:
        kwargs["learner"] = learner
    env = gym.make(nsr_gym.env_id(benchmark), **kwargs)
    actions = _action_stream(int(env.action_space.n), switch_p, seed).tolist()
    timing = measure(lambda: _rollout(env, n_steps, actions, seed), repeats=repeats, warmup=1)
    env.close()
    return Timing(timing.wall_s / n_steps, timing.cpu_s / n_steps, repeats)


def env_throughput(cases: Sequence[tuple[str, str, str, dict | None]], n_steps: dict[str, int],
                   repeats: int = 5, device: str = "cpu") -> pd.DataFrame:
    """One row per ``(label, benchmark, backend, learner options)`` case: steps per second.

    ``n_steps[benchmark]`` sets the steps per repeat. Torch cases get ``device``.
    """
    rows = []
    for label, benchmark, backend, learner in cases:
        if backend == "torch":
            learner = {**(learner or {}), "device": device}
        t = env_steps_per_second(benchmark, backend, learner, n_steps=n_steps[benchmark],
                                 repeats=repeats)
        rows.append({"benchmark": benchmark, "path": label, "backend": backend,
                     "device": device if backend == "torch" else "cpu",
                     "steps_per_s_wall": 1.0 / t.wall_s, "steps_per_s_cpu": 1.0 / t.cpu_s,
                     "us_per_step_cpu": 1e6 * t.cpu_s, "steps_per_repeat": n_steps[benchmark],
                     "repeats": repeats, "load_avg": machine_load()})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- compression


def compression(d: int = 768, ranks: Sequence[int] = (4, 8, 16, 32, 64), repeats: int = 5,
                dense_repeats: int = 3, seed: int = 0) -> pd.DataFrame:
    """``compress_lora`` against a dense SVD of ``dW = B @ A`` (``d x d``), truncating a rank-``r``
    LoRA to its top ``r / 2`` directions; one row per rank.

    The dense route forms ``dW`` in float32 and runs ``torch.linalg.svd`` (the cheaper of the
    dense baselines); ``max_rel_diff`` is ``max |B_k A_k - dense_k| / max |dense_k|``.
    """
    from nsr_gym.bank import compress_lora, dense_truncated_svd

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for r in ranks:
        B = torch.randn(d, r, generator=gen) / r**0.5
        A = torch.randn(r, d, generator=gen) / d**0.5
        k = max(1, r // 2)
        fast = measure(lambda B=B, A=A, k=k: compress_lora(B, A, rank=k), repeats=repeats)
        dense = measure(lambda B=B, A=A, k=k: dense_truncated_svd(B @ A, k), repeats=dense_repeats)
        b_k, a_k = compress_lora(B, A, rank=k)
        ref = dense_truncated_svd(B @ A, k)
        diff = float((b_k @ a_k - ref).abs().max() / ref.abs().max())
        rows.append({"d": d, "lora_rank": r, "kept_rank": k,
                     "qr_svd_ms": 1e3 * fast.cpu_s, "dense_svd_ms": 1e3 * dense.cpu_s,
                     "speedup_cpu": dense.cpu_s / fast.cpu_s,
                     "qr_svd_ms_wall": 1e3 * fast.wall_s, "dense_svd_ms_wall": 1e3 * dense.wall_s,
                     "speedup_wall": dense.wall_s / fast.wall_s, "max_rel_diff": diff})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- recall


def build_bank(n: int, d: int, seed: int = 0):
    """A bank of ``n`` entries with Gaussian keys of length ``d`` and empty payloads."""
    from nsr_gym.bank import BankEntry, TaskKnowledgeBank

    keys = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    bank = TaskKnowledgeBank(n, d)
    bank.insert_many([BankEntry(keys[i], {}, owner=i, tasks_served=[i]) for i in range(n)], 0)
    return bank


def _cycling(recall: Callable, queries: np.ndarray) -> Callable[[], object]:
    """A call of ``recall(query, top_k=1)`` on the next of ``queries`` each time."""
    state = {"i": 0}

    def call() -> object:
        state["i"] += 1
        return recall(queries[state["i"] % len(queries)], top_k=1)

    return call


def recall_latency(sizes: Sequence[int] = (10**3, 10**4, 10**5, 10**6), d: int = 32,
                   queries: int = 20, seed: int = 1) -> pd.DataFrame:
    """Exact top-1 :meth:`~nsr_gym.bank.TaskKnowledgeBank.recall` latency (one query per call,
    no batching, no index) over banks of ``sizes`` entries; median over ``queries`` queries."""
    rows = []
    qs = np.random.default_rng(seed).standard_normal((queries, d), dtype=np.float32)
    for n in sizes:
        t0 = time.perf_counter()
        bank = build_bank(n, d)
        build_s = time.perf_counter() - t0
        t = measure(_cycling(bank.recall, qs), repeats=queries)
        # the answer is the exact argmax of the cosines
        q = qs[0]
        ref = int(np.argmax(bank._keys @ (q / np.linalg.norm(q))))
        assert bank.recall(q, top_k=1)[0][0] == ref
        rows.append({"keys": n, "key_dim": d, "mode": "exact, single query",
                     "recall_ms": 1e3 * t.cpu_s, "recall_ms_wall": 1e3 * t.wall_s,
                     "key_matrix_mb": bank._keys.nbytes / 1e6, "build_s": build_s})
        bank = None  # free the keys before building the next size
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- sizes and scaling


def _trained_payload(benchmark_learner: dict, n_updates: int = 30, seed: int = 0):
    from nsr_gym.data import split_digits
    from nsr_gym.learners.torch_learner import TorchLearner, TorchLearnerConfig

    learner = TorchLearner(split_digits(5), TorchLearnerConfig(**benchmark_learner))
    learner.reset(np.random.default_rng(seed))
    learner.train(0, n_updates)
    return learner, learner.snapshot(0)[0]


def bytes_per_task(ranks: Sequence[int] = (2, 4, 8, 16),
                   backbones: Sequence[str] = ("mlp", "vit")) -> pd.DataFrame:
    """Bytes of one bank entry (compressed factors + head + key) after 30 updates on a task, for
    each backbone and LoRA rank, at the default 99% energy and with no truncation."""
    rows = []
    for backbone in backbones:
        for r in ranks:
            for energy in (0.99, None):
                cfg = {"backbone": backbone, "lora_rank": r, "lora_alpha": float(r),
                       "compression_energy": energy, "measure_truncation": False}
                learner, payload = _trained_payload(cfg)
                tensor_bytes = sum(t.numel() * t.element_size() for t in payload.values())
                dense = sum(b.shape[0] * a.shape[1] * 4 for a, b, _ in learner._lora)
                kept = [int(payload[f"layer{i}.A"].shape[0]) for i in range(len(learner._lora))]
                rows.append({"backbone": backbone, "lora_rank": r,
                             "energy": "none" if energy is None else energy,
                             "adapted_layers": len(learner._lora),
                             "kept_ranks": "/".join(map(str, kept)),
                             "entry_bytes": tensor_bytes + 4 * learner.key_dim,
                             "dense_delta_bytes": dense})
    return pd.DataFrame(rows)


def rank_scaling(ranks: Sequence[int] = (2, 4, 8, 16, 32), n_updates: int = 300,
                 repeats: int = 5) -> pd.DataFrame:
    """Fast-path cost of one train update + one evaluation on the MLP, and of a phase-end
    snapshot (compression), against the LoRA rank."""
    rows = []
    for r in ranks:
        learner, _ = _trained_payload({"lora_rank": r, "lora_alpha": float(r)}, n_updates=1)
        step = measure(lambda lr=learner: (lr.train(0, 1), lr.evaluate(0)), repeats=repeats,
                       number=n_updates)
        snap = measure(lambda lr=learner: lr.snapshot(0), repeats=repeats, number=10)
        rows.append({"lora_rank": r, "train_eval_us": 1e6 * step.cpu_s,
                     "snapshot_us": 1e6 * snap.cpu_s})
    return pd.DataFrame(rows)


def task_scaling(n_tasks: Sequence[int] = (5, 20, 80), repeats: int = 3,
                 n_steps: int = 2000) -> pd.DataFrame:
    """Analytic-backend env step cost as the bank grows: ``M`` permuted-digit tasks, ``K = M``
    slots, phases of 10 steps, two cycles (so the bank fills and then serves every task)."""
    rows = []
    for m in n_tasks:
        t = env_steps_per_second("CyclicSplitDigits", "analytic", None, n_steps=n_steps,
                                 repeats=repeats, tasks="permuted_digits", n_tasks=m,
                                 phase_length=10, n_cycles=2)
        rows.append({"tasks_and_slots": m, "us_per_step_cpu": 1e6 * t.cpu_s,
                     "steps_per_s_cpu": 1.0 / t.cpu_s, "steps_per_s_wall": 1.0 / t.wall_s})
    return pd.DataFrame(rows)


def batched_throughput(batch_sizes: Sequence[int] = (1, 100, 1000, 10000),
                       policies: Sequence[str] = ("oracle", "similarity"),
                       repeats: int = 3) -> pd.DataFrame:
    """Env steps per second of :func:`~nsr_gym.studies.analytic_sweep.simulate_analytic` on the
    default Split-Digits stream (600 steps per run), ``B`` seeds at once."""
    from nsr_gym.studies.analytic_sweep import simulate_analytic

    rows = []
    for policy in policies:
        for b in batch_sizes:
            seeds = list(range(b))
            t = measure(lambda p=policy, s=seeds: simulate_analytic(p, s), repeats=repeats,
                        warmup=0)
            steps = 600 * b
            rows.append({"policy": policy, "runs_at_once": b, "steps_per_s_cpu": steps / t.cpu_s,
                         "steps_per_s_wall": steps / t.wall_s})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- batched vector env


def _action_stream(n_actions: int, switch_p: float, seed: int, size: int = 4096) -> np.ndarray:
    """Keep with probability ``1 - switch_p``, else fresh or a load uniformly (the stream of
    :func:`env_steps_per_second` and of every batched env)."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(size) < switch_p, rng.integers(1, n_actions, size), 0)


def _vector_streams(vec, switch_p: float, seed: int) -> np.ndarray:
    """``(4096, N)``: env ``i``'s :func:`_action_stream` (seed ``seed + i``) in column ``i``."""
    n_actions = int(vec.single_action_space.n)
    return np.stack([_action_stream(n_actions, switch_p, seed + i)
                     for i in range(vec.num_envs)], 1)


def _vector_actions(streams: np.ndarray, t: int, mask: np.ndarray) -> np.ndarray:
    """Step ``t``'s actions of ``streams``, an invalid load (``mask``: the info's
    ``action_mask``) replaced by keep."""
    a = streams[t % len(streams)]
    return np.where(mask[np.arange(len(a)), a], a, 0)


def vector_env_throughput(benchmark: str = "CyclicSplitDigits",
                          num_envs: Sequence[int] = (1, 4, 16, 64, 256), n_steps: int = 600,
                          repeats: int = 3, switch_p: float = 0.1, seed: int = 0,
                          device: str = "cpu", loop_max: int = 64) -> pd.DataFrame:
    """Env steps per second of the batched vector env against ``N`` single envs in a loop.

    For each ``N``: ``gym.make_vec(id, N, vectorization_mode="vector_entry_point")`` stepped
    ``n_steps`` times (``N * n_steps`` env steps), and, in the same run, ``N`` envs of
    ``gym.make(id)`` each stepped ``n_steps`` times in a Python loop with the same action
    streams (invalid loads keep, in both), their repeats interleaved (:func:`measure_pair`).
    The loop is measured up to ``N = loop_max``; above it its per-env rate is the one at
    ``loop_max`` (the loop's cost is linear in ``N``).

    Returns:
        One row per ``N``: ``steps_per_s_{cpu,wall}`` of the batch and of the loop, their ratio
        ``speedup_{cpu,wall}``, and ``reference_us_cpu``, :func:`reference_speed` just before
        the row (the machine's speed while it was measured).
    """
    import gymnasium as gym

    import nsr_gym

    env_name = nsr_gym.env_id(benchmark)
    learner = {"device": device}
    rows, loop_rate = [], None
    for n in num_envs:
        reference = reference_speed()
        vec = gym.make_vec(env_name, num_envs=n, vectorization_mode="vector_entry_point",
                           learner=learner)
        streams = _vector_streams(vec, switch_p, seed)

        def run_batch(vec=vec, streams=streams) -> None:
            _, info = vec.reset(seed=seed)
            for t in range(n_steps):
                info = vec.step(_vector_actions(streams, t, info["action_mask"]))[4]

        measured = n <= loop_max or loop_rate is None
        if measured:  # a loop of single envs has one env's throughput, whatever N
            envs = [gym.make(env_name, learner=learner) for _ in range(n)]

            def run_loop(envs=envs, streams=streams) -> None:
                for i, env in enumerate(envs):
                    _rollout(env, n_steps, streams[:, i].tolist(), seed + i)

            batch, loop = measure_pair(run_batch, run_loop, repeats=repeats)
            for env in envs:
                env.close()
            loop_rate = (n * n_steps / loop.cpu_s, n * n_steps / loop.wall_s)
        else:
            batch = measure(run_batch, repeats=repeats, warmup=1)
        vec.close()
        total = n * n_steps
        row = {"benchmark": benchmark, "num_envs": n, "device": device,
               "steps_per_s_cpu": total / batch.cpu_s, "steps_per_s_wall": total / batch.wall_s,
               "loop_steps_per_s_cpu": loop_rate[0], "loop_steps_per_s_wall": loop_rate[1],
               "loop_measured": measured}
        row["speedup_cpu"] = row["steps_per_s_cpu"] / row["loop_steps_per_s_cpu"]
        row["speedup_wall"] = row["steps_per_s_wall"] / row["loop_steps_per_s_wall"]
        row["reference_us_cpu"] = reference
        rows.append(row)
    return pd.DataFrame(rows)


def sharded_env_throughput(benchmark: str = "CyclicSplitDigits",
                           num_envs: Sequence[int] = (16, 64, 256), shards: int = 2,
                           n_steps: int = 600, repeats: int = 3, switch_p: float = 0.1,
                           seed: int = 0, device: str = "cpu") -> pd.DataFrame:
    """The batched env divided over ``shards`` processes against the same ``N`` envs in one.

    For each ``N``: ``gym.make_vec(id, N, shards=shards)`` (:class:`~nsr_gym.envs.sharded.
    ShardedBatchedEnv`) and ``gym.make_vec(id, N)`` stepped ``n_steps`` times with the
    streams of :func:`vector_env_throughput`, their repeats interleaved. The figure is the wall
    clock (the shards run at once); ``cpu_s_per_step_total`` adds the workers' CPU time to this
    process's, what the steps cost the machine.

    Returns:
        One row per ``N``: ``steps_per_s_wall`` sharded and in one process
        (``one_process_steps_per_s_wall``), their ratio ``speedup_wall``, the CPU time of both
        per batched step, and ``reference_us_cpu`` (:func:`reference_speed` before the row).
    """
    import gymnasium as gym

    import nsr_gym

    env_name = nsr_gym.env_id(benchmark)
    rows = []
    for n in num_envs:
        reference = reference_speed()
        one = gym.make_vec(env_name, num_envs=n, learner={"device": device})
        split = gym.make_vec(env_name, num_envs=n, shards=shards, learner={"device": device})
        streams = _vector_streams(one, switch_p, seed)

        def run(vec, streams=streams) -> None:
            _, info = vec.reset(seed=seed)
            for t in range(n_steps):
                info = vec.step(_vector_actions(streams, t, info["action_mask"]))[4]

        run(one), run(split)  # warm-up
        timings: dict[str, list[tuple[float, float]]] = {"one": [], "split": []}
        for _ in range(repeats):
            timings["one"].append(_timed(lambda vec=one: run(vec)))
            workers = sum(split.worker_cpu_seconds())
            wall, cpu = _timed(lambda vec=split: run(vec))
            timings["split"].append((wall, cpu + sum(split.worker_cpu_seconds()) - workers))
        one.close()
        split.close()
        a, b = _medians(timings["one"]), _medians(timings["split"])
        total = n * n_steps
        rows.append({"benchmark": benchmark, "num_envs": n, "shards": shards, "device": device,
                     "steps_per_s_wall": total / b.wall_s,
                     "one_process_steps_per_s_wall": total / a.wall_s,
                     "speedup_wall": a.wall_s / b.wall_s,
                     "cpu_ms_per_step_total": b.cpu_s / n_steps * 1e3,
                     "one_process_cpu_ms_per_step": a.cpu_s / n_steps * 1e3,
                     "reference_us_cpu": reference})
    return pd.DataFrame(rows)


def vector_env_step_kinds(benchmark: str = "CyclicSplitDigits", num_envs: int = 16,
                          n_steps: int = 600, repeats: int = 3, switch_p: float = 0.1,
                          seed: int = 0, device: str = "cpu") -> pd.DataFrame:
    """Where the batched env's time goes: CPU time per batched step by the kind of step.

    The same episodes as :func:`vector_env_throughput` at one ``N``, each step timed on its own
    and counted as a ``phase start`` (every env chooses a subspace and measures it), a
    ``phase end`` (every env compresses and reserves, then probes the next task) or
    ``inside`` (quiet steps, and the envs that switch).

    Returns:
        One row per kind: ``steps`` per episode, ``ms_per_step_cpu`` (the median over repeats
        of the kind's mean), ``steps_per_s_cpu`` (env steps per second were every step of that
        kind: ``N / time``) and ``share_cpu``, the kind's part of the episode's CPU time.
    """
    import gymnasium as gym

    import nsr_gym

    vec = gym.make_vec(nsr_gym.env_id(benchmark), num_envs=num_envs,
                       vectorization_mode="vector_entry_point", learner={"device": device})
    length = vec.envs[0].phase_length
    streams = _vector_streams(vec, switch_p, seed)
    kinds = ["phase start", "inside", "phase end"]
    of_step = [kinds[0] if t % length == 0 else kinds[2] if t % length == length - 1
               else kinds[1] for t in range(n_steps)]
    per_repeat = []
    for repeat in range(repeats + 1):  # the first is a warm-up
        times = np.zeros(n_steps)
        _, info = vec.reset(seed=seed)
        for t in range(n_steps):
            a = _vector_actions(streams, t, info["action_mask"])
            start = time.process_time()
            info = vec.step(a)[4]
            times[t] = time.process_time() - start
        if repeat:
            per_repeat.append(times)
    vec.close()
    rows = []
    for kind in kinds:
        picked = [t for t in range(n_steps) if of_step[t] == kind]
        mean_s = float(np.median([times[picked].mean() for times in per_repeat]))
        share = float(np.median([times[picked].sum() / times.sum() for times in per_repeat]))
        rows.append({"benchmark": benchmark, "num_envs": num_envs, "kind": kind,
                     "steps": len(picked), "ms_per_step_cpu": 1e3 * mean_s,
                     "steps_per_s_cpu": num_envs / mean_s, "share_cpu": share})
    return pd.DataFrame(rows)


def batched_learner_cost(benchmark: str = "CyclicSplitDigits",
                         num_envs: Sequence[int] = (1, 4, 16, 64), repeats: int = 5,
                         number: int = 50, device: str = "cpu") -> pd.DataFrame:
    """What one batched update and one batched evaluation of ``N`` learners cost, alone.

    :class:`~nsr_gym.learners.batched.BatchedTorchLearner` of ``N`` copies of the benchmark's
    learner, every member on task 0: :meth:`train` with one update and :meth:`evaluate`, each
    timed over ``number`` calls (median of ``repeats``). The torch work of a quiet batched step
    is one of each; their growth with ``N`` separates the fixed per-call cost from each member's.

    Returns:
        One row per ``N``: ``update_us_cpu``, ``evaluate_us_cpu``, both per member, and
        ``reference_us_cpu`` (:func:`reference_speed` just before the row).
    """
    import gymnasium as gym

    import nsr_gym
    from nsr_gym.learners.batched import BatchedTorchLearner, clone_learner

    env = gym.make(nsr_gym.env_id(benchmark), learner={"device": device}).unwrapped
    rows = []
    for n in num_envs:
        members = [env.learner] + [clone_learner(env.learner) for _ in range(n - 1)]
        for seed, m in enumerate(members):
            m.reset(np.random.default_rng(seed))
        batch = BatchedTorchLearner(members)
        tasks = [0] * n
        reference = reference_speed()
        update = measure(lambda b=batch, t=tasks: b.train(t, 1), repeats=repeats, number=number)
        evaluate = measure(lambda b=batch, t=tasks: b.evaluate(t), repeats=repeats,
                           number=number)
        rows.append({"benchmark": benchmark, "num_envs": n, "device": device,
                     "update_us_cpu": 1e6 * update.cpu_s,
                     "evaluate_us_cpu": 1e6 * evaluate.cpu_s,
                     "update_us_per_env": 1e6 * update.cpu_s / n,
                     "evaluate_us_per_env": 1e6 * evaluate.cpu_s / n,
                     "reference_us_cpu": reference})
    env.close()
    return pd.DataFrame(rows)
