"""What ``nsr-gym peers`` computes: Avalanche's strategies beside NSR on one MNIST-1D task stream.

The stream: a benchmark's tasks in order, one pass (``CyclicSplitMNIST1D``'s five binary tasks
``{0,1} .. {8,9}`` with ``n_cycles=1``), each trained for the same number of Adam updates (the
benchmark's ``phase_length * updates_per_step``, 30) of ``batch_size`` (32) examples drawn
uniformly with replacement from the task's training set, as the env's learner draws them, at the
learner's learning rate. Everyone sees the same tasks, the same test sets and the same frozen
backbone: the benchmark's own (the seeded random MLP, or the pretrained CNN of the
``...Pretrained`` variant), with the same rank-``r`` LoRA on the same layers (``peft``) and a
linear head trained on top. Accuracy is the argmax over the task's classes, as
``learner.evaluate``.

Protocol: task-incremental. The task identity is known at training time by everyone (the env
trains under it, Avalanche's experiences carry it) and at test time: the multi-head peers pick
task ``i``'s head by its task label, and NSR's ``R`` serves task ``i`` with task ``i``'s own bank
entry (:mod:`nsr_gym.cl_metrics`, ``serve="entry"``). NSR's keep-current (``serve="active"``)
and the ``naive-shared-head`` peer share one head over all tasks (labels 0/1 in every task: the
same two output units), which is the env's own sequential fine-tuning: they pair up.

Peers (:data:`STRATEGIES`, Avalanche 0.6 ``avalanche.training.supervised``), Avalanche's defaults
otherwise (Adam state kept across experiences, as keep-current keeps it):

* ``naive``: fine-tuning, one head per task (``MultiHeadClassifier``); ``naive-shared-head``:
  one head;
* ``lwf:alpha=A,temperature=T``: Learning without Forgetting (Li and Hoiem), multi-head;
* ``ewc:lambda=L``: EWC (Kirkpatrick et al.), separate penalties, multi-head;
* ``replay:mem=N``: experience replay with an ``N``-signal buffer balanced over experiences,
  multi-head; each update adds a batch of ``batch_size`` buffer signals to the current batch.

Reported (per method, mean and 95% bootstrap CI over seeds): ACC (final average accuracy) and
BWT in the standard definitions, forgetting and average incremental accuracy
(:mod:`nsr_gym.cl_metrics`). :func:`run_peers` writes ``peers.md``, ``peers.csv`` (per method),
``peers_runs.csv`` (per seed), ``peers_matrices.csv`` (every ``R``) and ``manifest.json``.
Avalanche (``pip install "nsr-gym[peers]"``) is imported only inside :func:`peer_unit`, through
:mod:`nsr_gym.studies.peers_avalanche`; nothing else in nsr-gym needs it.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.executors import Sweep, Unit, config_hash

#: Peer strategies and their parameters' defaults.
STRATEGIES: dict[str, dict[str, float]] = {
    "naive": {}, "naive-shared-head": {}, "lwf": {"alpha": 1.0, "temperature": 2.0},
    "ewc": {"lambda": 100.0}, "replay": {"mem": 200}}
#: What ``nsr-gym peers`` runs by default: EWC at three penalty scales (its lambda has no
#: natural unit), all reported, none picked on the test sets.
DEFAULT_STRATEGIES = ("naive", "naive-shared-head", "lwf:alpha=1,temperature=2", "ewc:lambda=1",
                      "ewc:lambda=100", "ewc:lambda=10000", "replay:mem=200")
DEFAULT_BENCHMARKS = ("CyclicSplitMNIST1D", "CyclicSplitMNIST1DPretrained")
NSR_AGENTS = ("similarity", "keep-current")
#: What each method keeps beside the model, for the table.
KEEPS = {"nsr": "one compressed LoRA + head per task (the bank)",
         "nsr-active": "nothing it reads (the env still fills its bank)", "naive": "nothing",
         "naive-shared-head": "nothing", "lwf": "the previous model (teacher)",
         "ewc": "Fisher diagonal + parameters per task", "replay": "training signals"}
#: The protocol paragraph of ``peers.md`` (the module docstring says the same at length).
PROTOCOL = (
    "Each benchmark's tasks in order, one pass, task-incremental (the task identity is known at "
    "training and at test time). Every method trains each task for the same number of Adam "
    "updates (updates_per_task) of the env learner's batch size and learning rate, on examples "
    "drawn uniformly with replacement from the task's training set, on the benchmark's own "
    "frozen backbone with the same LoRA (rank, layers, peft initialisation) and a linear head; "
    "all are evaluated on the same test sets. heads: the multi-head peers pick task i's head by "
    "its task label, as NSR's accuracy matrix serves task i with its own bank entry (adapter + "
    "head); keep-current and naive-shared-head share one head over all tasks. Avalanche "
    "defaults otherwise (Adam state kept across experiences; EWC separate penalties; replay "
    "adds a batch of buffer signals to each update).\n")
INSTALL = 'nsr-gym peers needs Avalanche: pip install "nsr-gym[peers]" (avalanche-lib>=0.6)'


@dataclass(frozen=True)
class PeersConfig:
    """Settings of one ``nsr-gym peers``."""

    benchmarks: tuple[str, ...] = DEFAULT_BENCHMARKS
    """MNIST-1D (or any offline torch) benchmarks whose tasks make the stream, one pass each."""
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    """Avalanche strategies ``NAME[:key=value,...]`` (:data:`STRATEGIES`)."""
    nsr_agents: tuple[str, ...] = NSR_AGENTS
    """NSR agents run on the same stream (``make_agent`` names)."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    updates: int | None = None
    """Updates per task (default: the benchmark's ``phase_length * updates_per_step``)."""
    out: str = "results/peers"
    sweep: Sweep = field(default_factory=Sweep)


def parse_strategy(spec: str) -> tuple[str, dict[str, float]]:
    """``"ewc:lambda=100"`` -> ``("ewc", {"lambda": 100.0})`` (defaults filled in).

    Raises:
        ValueError: naming the unknown strategy or parameter.
    """
    kind, _, rest = spec.partition(":")
    if kind not in STRATEGIES:
        raise ValueError(f"unknown peer strategy {kind!r}; known: {', '.join(STRATEGIES)}")
    params = dict(STRATEGIES[kind])
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in params:
            raise ValueError(f"{kind} takes {sorted(params) or 'no parameters'}, got {key!r}")
        try:
            params[key] = float(value)
        except ValueError:
            raise ValueError(f"{spec}: {key} must be a number, got {value!r}") from None
    return kind, params


def stream_kwargs(benchmark: str, updates: int | None) -> dict[str, Any]:
    """``gym.make`` keywords of the one-pass stream (torch backend)."""
    kwargs: dict[str, Any] = {"backend": "torch", "n_cycles": 1}
    if updates is not None:
        kwargs.update(phase_length=int(updates), updates_per_step=1)
    return kwargs


# ----------------------------------------------------------------------------- units


def nsr_unit(unit: Unit) -> dict[str, Any]:
    """One NSR agent on the stream, with the accuracy matrix recorded."""
    from nsr_gym.agents import make_agent, rollout
    from nsr_gym.cl_metrics import MatrixRecorder, matrix_arrays
    from nsr_gym.studies.benchmark import cached_env

    env = cached_env(unit.setting["env_id"], unit.setting["env_kwargs"])
    recorder = MatrixRecorder(make_agent(unit.setting["agent"]))
    log = rollout(env, recorder, unit.seed, agent_name=unit.agent)
    R, trained, _ = matrix_arrays(recorder.frame(unit.agent, unit.seed))
    u = env.unwrapped
    entry = recorder.serve == "entry"
    return {"R": R.tolist(), "trained": trained.tolist(),
            "serve": "per task (own entry)" if entry else "shared (active)",
            "updates": u.phase_length * u.updates_per_step,
            "stored_mb": float(log["bank_bytes"].iloc[-1]) / 1e6 if entry else float("nan")}


def peer_unit(unit: Unit) -> dict[str, Any]:
    """One Avalanche strategy on the stream: train each task in order, evaluate after each."""
    import torch

    from nsr_gym.studies.benchmark import cached_env

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # qpsolvers' note that GEM's solver is missing
            from nsr_gym.studies import peers_avalanche as ava
    except ImportError as err:
        raise ImportError(INSTALL) from err
    kind, params = parse_strategy(unit.setting["strategy"])
    u = cached_env(unit.setting["env_id"], unit.setting["env_kwargs"]).unwrapped
    tasks, cfg = u.learner.tasks, u.learner.config
    updates = u.phase_length * u.updates_per_step
    with torch.random.fork_rng(devices=[]):  # Avalanche draws from torch's global generator
        torch.manual_seed(unit.seed)
        R, counts, stored = ava.run_strategy(kind, params, tasks, cfg, updates, unit.seed)
    return {"R": [[None if math.isnan(v) else v for v in row] for row in R.tolist()],
            "trained": list(range(len(tasks))), "updates": counts,
            "serve": "shared" if kind == "naive-shared-head" else "per task",
            "stored_mb": stored}


# ----------------------------------------------------------------------------- tables


def _units(cfg: PeersConfig) -> list[Unit]:
    import nsr_gym

    units = []
    for bench in cfg.benchmarks:
        base = {"benchmark": bench, "env_id": nsr_gym.env_id(bench),
                "env_kwargs": stream_kwargs(bench, cfg.updates)}
        units += [Unit(f"nsr:{a}", s, {**base, "agent": a}) for a in cfg.nsr_agents
                  for s in cfg.seeds]
        units += [Unit(spec, s, {**base, "strategy": spec}) for spec in cfg.strategies
                  for s in cfg.seeds]
    return units


def run_rows(units: list[Unit], results: list[dict[str, Any]]
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per-seed metrics, long matrices)`` of the finished units."""
    from nsr_gym.cl_metrics import average_incremental_accuracy, backward_transfer, forgetting

    runs, cells = [], []
    for unit, res in zip(units, results, strict=True):
        R = np.array([[np.nan if v is None else v for v in row] for row in res["R"]])
        trained = np.asarray(res["trained"])
        updates = res["updates"]
        runs.append({
            "benchmark": unit.setting["benchmark"], "method": unit.agent,
            "library": "nsr-gym" if unit.agent.startswith("nsr:") else "avalanche",
            "heads": res["serve"], "seed": unit.seed, "acc": float(np.mean(R[-1])),
            "bwt": backward_transfer(R, trained), "forgetting": forgetting(R, trained),
            "aia": average_incremental_accuracy(R, trained),
            "updates_per_task": float(np.mean(updates)) if isinstance(updates, list)
            else float(updates), "stored_mb": res["stored_mb"]})
        cells += [{"benchmark": unit.setting["benchmark"], "method": unit.agent,
                   "seed": unit.seed, "phase": j, "task": i, "accuracy": R[j, i]}
                  for j in range(R.shape[0]) for i in range(R.shape[1])]
    return pd.DataFrame(runs), pd.DataFrame(cells)


def peers_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark and method: ACC and BWT with 95% bootstrap CIs over seeds, the rest means."""
    from nsr_gym.stats import mean_ci

    rows = []
    for (bench, method), g in runs.groupby(["benchmark", "method"], sort=False):
        acc, bwt = mean_ci(g["acc"].to_numpy()), mean_ci(g["bwt"].to_numpy())
        kind = method.partition(":")[0]
        if kind == "nsr":
            kind = "nsr" if g["heads"].iloc[0].startswith("per task") else "nsr-active"
        rows.append({"benchmark": bench, "method": method, "library": g["library"].iloc[0],
                     "heads": g["heads"].iloc[0], "seeds": len(g), "acc": acc[0],
                     "acc_ci_low": acc[1], "acc_ci_high": acc[2], "bwt": bwt[0],
                     "bwt_ci_low": bwt[1], "bwt_ci_high": bwt[2],
                     "forgetting": g["forgetting"].mean(), "aia": g["aia"].mean(),
                     "updates_per_task": g["updates_per_task"].mean(),
                     "stored_mb": g["stored_mb"].mean(), "keeps": KEEPS[kind]})
    return pd.DataFrame(rows)


def findings(table: pd.DataFrame) -> list[str]:
    """One bullet per benchmark: NSR's similarity rule against the best peer by ACC, and the
    keep-current / shared-head Naive pair."""
    out = []
    for bench, g in table.groupby("benchmark", sort=False):
        by = g.set_index("method")
        peers = g[g["library"] == "avalanche"]
        if "nsr:similarity" not in by.index or peers.empty:
            continue
        nsr, best = by.loc["nsr:similarity"], peers.loc[peers["acc"].idxmax()]
        line = (f"- {bench}, one pass: NSR's similarity rule ACC {nsr['acc']:.3f}, BWT "
                f"{nsr['bwt']:.3f}; the best Avalanche peer by ACC, {best['method']}, ACC "
                f"{best['acc']:.3f}, BWT {best['bwt']:.3f}")
        if {"nsr:keep-current", "naive-shared-head"} <= set(by.index):
            kc, nv = by.loc["nsr:keep-current"], by.loc["naive-shared-head"]
            line += (f"; keep-current ACC {kc['acc']:.3f}, BWT {kc['bwt']:.3f} beside "
                     f"Avalanche's Naive with one head ACC {nv['acc']:.3f}, BWT {nv['bwt']:.3f}")
        out.append(line + f" ({int(nsr['seeds'])} seeds).")
    return out


# ----------------------------------------------------------------------------- the command


def run_peers(cfg: PeersConfig, command: str | None = None) -> tuple[str, float]:
    """Run every (method, seed) unit of every benchmark (resuming kept ones) and write the files.

    Returns:
        ``(the markdown of peers.md, seconds the units took)``.

    Raises:
        ValueError: for an unknown strategy, benchmark or agent, before any work starts.
        ImportError: when Avalanche is not installed, saying how to install it.
    """
    import nsr_gym
    from nsr_gym.agents import make_agent
    from nsr_gym.atomic import atomic_write_text
    from nsr_gym.results import (
        command_line,
        manifest,
        markdown_table,
        provenance_line,
        write_csv,
        write_json,
    )
    from nsr_gym.studies.benchmark import close_cached_envs

    for spec in cfg.strategies:
        parse_strategy(spec)
    for agent in cfg.nsr_agents:
        make_agent(agent)
    unknown = [b for b in cfg.benchmarks if b not in nsr_gym.BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {', '.join(nsr_gym.BENCHMARKS)}")
    units = _units(cfg)
    out = Path(cfg.out)
    store = out / ".units" / config_hash({"updates": cfg.updates})
    t0 = time.perf_counter()
    try:
        nsr = [u for u in units if u.agent.startswith("nsr:")]
        peer = [u for u in units if not u.agent.startswith("nsr:")]
        results = cfg.sweep.run(nsr_unit, nsr, store, desc="nsr")[0] + \
            cfg.sweep.run(peer_unit, peer, store, desc="peers")[0]
    finally:
        close_cached_envs()
    wall = time.perf_counter() - t0
    runs, cells = run_rows(nsr + peer, results)
    table = peers_table(runs)

    from importlib.metadata import PackageNotFoundError, version
    try:
        avalanche = version("avalanche-lib")
    except PackageNotFoundError:
        avalanche = "not installed"
    meta = manifest(command or command_line(), list(cfg.seeds), wall,
                    benchmarks=list(cfg.benchmarks), strategies=list(cfg.strategies),
                    nsr_agents=list(cfg.nsr_agents), updates=cfg.updates,
                    avalanche_lib=avalanche)
    lines = [f"# Peers on the same data: Avalanche and NSR, one pass over each stream\n\n"
             f"{provenance_line(meta)}\n", PROTOCOL]
    for bench, g in table.groupby("benchmark", sort=False):
        lines += [f"## {bench}\n", markdown_table(g.drop(columns=["benchmark"])), ""]
    lines += ["ACC: final average accuracy; BWT: Lopez-Paz and Ranzato's backward transfer "
              "(negative: forgetting); forgetting: Chaudhry et al.'s; aia: average incremental "
              "accuracy (nsr_gym.cl_metrics); mean over seeds with 95% bootstrap CIs. "
              "stored_mb: what the method keeps beside the model, where measured (NSR's bank "
              "bytes for the agents that read it; replay: the buffer's float32 signals); "
              "10^6 bytes.\n",
              "## Findings\n", *findings(table), ""]
    md = "\n".join(lines)
    write_csv(out / "peers.csv", table)
    write_csv(out / "peers_runs.csv", runs)
    write_csv(out / "peers_matrices.csv", cells)
    atomic_write_text(out / "peers.md", md)
    write_json(out / "manifest.json", meta)
    return md, wall
