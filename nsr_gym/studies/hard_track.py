"""The hard-track study of ``nsr-gym study hard-track``: how much the similarity rule leaves on
each hard benchmark, and whether a learned controller takes it.

The hard track (:data:`nsr_gym.envs.HARD_TRACK`) holds benchmarks where memory binds: the LRU
trap (a strict cycle through fewer slots than tasks), skewed recurrence (Zipf by stack distance,
many tasks, few slots), ambiguous recall (alike tasks, noisy probes) and task-free learning (no
boundary signal, drawn phase lengths, a noisy probe per step, the agent reserves). Two parts,
every unit kept under ``<out>/.units`` so the study resumes:

* **Headroom.** On each id and backend, every agent of :data:`RULES` on the same seeds (paired):
  the memoryless ``keep-current`` and ``always-fresh``; ``similarity`` with the env's default
  retention (``retention="env"``: the bank evicts by its default ``eviction="lru"``); the
  retention rules ``pin``, ``lfu-retain``, ``lru-retain`` (under ``retention="agent"``) and
  the ``clairvoyant`` (on the id as registered: ``retention="agent"`` where the bank is smaller
  than the task set; with a slot per task, retention has nothing to decide). The clairvoyant
  plans on the analytic model: exactly on the analytic backend where its program finishes, by
  its Belady heuristic above ``max_states`` (a lower bound of the optimum, so scores against it
  overstate the rule), and on the torch backend on ``AnalyticConfig()``'s model (an
  approximation). The normalized score is
  :func:`nsr_gym.stats.normalized_scores` with the clairvoyant as the 1.
* **Learned controllers.** ``MaskablePPO`` and ``PPO`` (:data:`ALGOS`;
  :func:`nsr_gym.agents.train`, through the batched
  vector env, :data:`N_ENVS` envs) trained on each backend of :data:`TRAIN_BACKENDS` (the
  torch one is the real learner) of each id as registered, :data:`TRAIN_STEPS` steps per
  training seed and :data:`TRAIN_SEEDS`, with :data:`N_EVALS` ``EvalCallback`` evaluations
  for the training curves; then every controller is evaluated on the study's seeds (100
  onwards: a training run resets its envs from seeds ``seed + rank`` and ``seed + 10_000``
  only) on both backends: four rows per id (analytic->analytic, analytic->torch, the
  transfer; torch->torch, torch->analytic).

:mod:`nsr_gym.studies.hard_track_report` turns the runs into ``hard_track.md`` and the plot.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.executors import Sweep, Unit

#: Rule agents and the ``retention`` mode each runs under (see the module docstring); None:
#: the id's own (the clairvoyant plans on the benchmark as registered).
RULES: dict[str, str | None] = {
    "keep-current": "env", "always-fresh": "env", "similarity": "env",
    "pin": "agent", "lfu-retain": "agent", "lru-retain": "agent", "clairvoyant": None,
}
#: On a task-free id (``task_free=True``, where the env never reserves and every rule runs under
#: ``retention="agent"``) the agent an entry of :data:`RULES` is made from: the similarity rule
#: with the env's default retention is the rule that writes the subspace it leaves at each shift
#: it detects by the default eviction, LRU (``lru-retain``); the memoryless rules write nothing.
TASK_FREE_SPECS = {"similarity": "lru-retain"}
#: Memory class of every agent, for :func:`nsr_gym.stats.normalized_scores`.
CLASSES = {"keep-current": "M0", "always-fresh": "M0", "clairvoyant": "oracle"}
RETENTION_RULES = ("pin", "lfu-retain", "lru-retain")
#: The headline algorithm of the learned controllers (the issue's verdict is about it), and its
#: name in the tables; :data:`ALGOS` are all those trained (``--algos``): plain PPO samples
#: invalid loads and writes too (no-ops the env flags), which MaskablePPO masks.
ALGO = "maskable-ppo"
ALGOS = ("maskable-ppo", "ppo")
#: Backends every agent is evaluated on.
BACKENDS = ("analytic", "torch")
#: Backends the controllers are trained on (``--train-backends``).
TRAIN_BACKENDS = ("analytic", "torch")
SEEDS = list(range(100, 110))
QUICK_SEEDS = [100, 101]
#: Training seeds (issue 18: at least 5) and env steps per training seed (at least 100,000).
TRAIN_SEEDS = (0, 1, 2, 3, 4)
TRAIN_STEPS = 100_000
#: Training envs of one run (the batched env: ``N_ENVS`` learners in one pass), the same on
#: both backends so that a transfer gap compares controllers trained alike.
N_ENVS = 16
#: ``EvalCallback`` evaluations per run (one episode each, eval env seed ``seed + 10_000``):
#: the points of the training curves.
N_EVALS = 10
#: ``quick=True``: small episodes, short training (a smoke test).
QUICK_ENV = {"phase_length": 4, "n_cycles": 2}
#: ``quick=True``: per benchmark, on top of :data:`QUICK_ENV`.
QUICK_OVERRIDES = {"SkewedRecurrencePermutedDigits": {"n_tasks": 8}}
QUICK_TRAIN_STEPS = 240
#: ``quick=True``: training seeds, envs, evaluations and hyperparameter overrides (rollouts of
#: ``n_steps`` per env, so that a tiny budget still makes a few updates).
QUICK_TRAIN_SEEDS = (0, 1)
QUICK_N_ENVS = 2
QUICK_N_EVALS = 2
QUICK_HYPERPARAMS = {"n_steps": 24, "batch_size": 24, "n_epochs": 1}


def hard_ids() -> list[str]:
    """The registered ids of the hard track, in :data:`~nsr_gym.envs.HARD_TRACK` order."""
    from nsr_gym.envs import HARD_TRACK, env_id

    return [env_id(name) for name in HARD_TRACK]


def _quick_kwargs(eid: str, quick: bool) -> dict[str, Any]:
    name = eid.split("/")[-1].removesuffix("-v0")
    return {**QUICK_ENV, **QUICK_OVERRIDES.get(name, {})} if quick else {}


def _env_kwargs(eid: str, backend: str, retention: str | None, quick: bool
                ) -> dict[str, Any]:
    kw: dict[str, Any] = {"backend": backend, **_quick_kwargs(eid, quick)}
    if retention is not None:
        kw["retention"] = retention
    return kw


def episode_unit(unit: Unit) -> dict[str, Any]:
    """One episode of ``unit.agent`` (a rule, the clairvoyant or ``maskable-ppo:PATH``) on
    ``setting["env_id"]`` with ``setting["env_kwargs"]``; returns one row of metrics."""
    import gymnasium as gym

    import nsr_gym  # noqa: F401 - registers the envs in a fresh worker
    from nsr_gym.agents import make_agent, rollout
    from nsr_gym.threads import torch_threads

    s = unit.setting
    with torch_threads(1):
        t0 = time.perf_counter()
        env = gym.make(s["env_id"], **s["env_kwargs"])
        policy = make_agent(s.get("spec", unit.agent))
        try:
            log = rollout(env, policy, unit.seed, agent_name=unit.agent)
        finally:
            env.close()
        wall = time.perf_counter() - t0
    plan = getattr(policy, "plan", None)
    return {**dict(s.get("tags", {})), "agent": unit.agent, "seed": unit.seed,
            "episode_return": float(log["reward"].sum()), "acc_mean": float(log["accuracy"].mean()),
            "switches": int(log["switched"].sum()),
            "plan_exact": None if plan is None else bool(plan.exact),
            "plan_method": None if plan is None else plan.method, "wall_s": round(wall, 2)}


def headroom_units(ids: list[str], seeds: list[int], quick: bool) -> list[Unit]:
    """Every rule on every id, backend and seed (the rules' ``retention`` per :data:`RULES`; on
    a task-free id ``"agent"`` for all, and the agents of :data:`TASK_FREE_SPECS`)."""
    import gymnasium as gym

    own = {eid: gym.spec(eid).kwargs.get("retention", "env") for eid in ids}
    free = {eid: bool(gym.spec(eid).kwargs.get("task_free", False)) for eid in ids}
    units = []
    for eid in ids:
        for b in BACKENDS:
            for agent, ret in RULES.items():
                retention = "agent" if free[eid] else ret or own[eid]
                setting = {"env_id": eid, "env_kwargs": _env_kwargs(eid, b, retention, quick),
                           "tags": {"env_id": eid, "backend": b}}
                if free[eid] and agent in TASK_FREE_SPECS:
                    setting["spec"] = TASK_FREE_SPECS[agent]
                units += [Unit(agent, seed, setting) for seed in seeds]
    return units


def train_unit(unit: Unit) -> dict[str, Any]:
    """Train one controller (``setting``: env id, backend, steps, envs, evaluations,
    hyperparameter overrides, env kwargs, output folder); returns its run folder, wall time,
    training curve (``monitor`` episodes: ``rank``, ``end_step``, ``return``) and evaluation
    curve (``evals``: ``step``, ``return`` of each ``EvalCallback`` evaluation)."""
    import nsr_gym  # noqa: F401
    from nsr_gym.agents.train import TrainConfig, train

    s = unit.setting
    out = Path(s["out"])
    algo = s["algo"]
    cfg = TrainConfig(algo=algo, env_id=s["env_id"], backend=s["backend"], seed=unit.seed,
                      total_timesteps=int(s["steps"]), out=str(out), env_kwargs=s["env_kwargs"],
                      n_envs=int(s["n_envs"]), n_evals=int(s["n_evals"]),
                      hyperparams=dict(s.get("hyperparams", {})))
    result = train(cfg, command=s.get("command"))
    curve = []
    for path in sorted((out / "monitor").glob("rank*.monitor.csv")):
        episodes = pd.read_csv(path, skiprows=1)
        ends = np.cumsum(episodes["l"].to_numpy()) * cfg.n_envs  # the envs step in lockstep
        curve += [{"rank": int(path.name[4:].split(".")[0]), "end_step": int(e), "return": float(r)}
                  for e, r in zip(ends, episodes["r"], strict=True)]
    evals = result.config.get("evaluations") or {"timesteps": [], "mean_return": []}
    return {"env_id": s["env_id"], "algo": algo, "train_backend": s["backend"],
            "train_seed": unit.seed,
            "run": str(out), "wall_s": round(result.wall_time_s, 1), "curve": curve,
            "evals": [{"step": int(t), "return": float(r)} for t, r in
                      zip(evals["timesteps"], evals["mean_return"], strict=True)]}


def _run_folder(out: Path, eid: str, backend: str, seed: int, algo: str = ALGO) -> Path:
    """``train/<benchmark>/<backend>/seed<k>`` (:data:`ALGO`) or
    ``train/<benchmark>/<backend>/<algo>/seed<k>``."""
    folder = out / "train" / eid.split("/")[-1].removesuffix("-v0") / backend
    return (folder if algo == ALGO else folder / algo) / f"seed{seed}"


def train_units(ids: list[str], backends: tuple[str, ...], seeds: tuple[int, ...], steps: int,
                out: Path, quick: bool, algos: tuple[str, ...] = (ALGO,)) -> list[Unit]:
    """One training run per id, algorithm, training backend and training seed."""
    return [Unit(f"{algo}@{b}", ts, {
        "env_id": eid, "backend": b, "steps": steps,
        "n_envs": QUICK_N_ENVS if quick else N_ENVS,
        "n_evals": QUICK_N_EVALS if quick else N_EVALS,
        "hyperparams": QUICK_HYPERPARAMS if quick else {},
        "env_kwargs": _quick_kwargs(eid, quick), "out": str(_run_folder(out, eid, b, ts, algo)),
        "algo": algo})
        for eid in ids for algo in algos for b in backends for ts in seeds]


def algo_of(agent: str) -> str:
    """The algorithm of a learned controller's row name: ``"ppo@torch[0]"`` -> ``"ppo"``."""
    return agent.split("@", 1)[0]


def learned_units(runs: list[dict[str, Any]], seeds: list[int], quick: bool) -> list[Unit]:
    """Every trained controller on its id (as registered), both backends, every seed."""
    return [Unit(f"{r['algo']}@{r['train_backend']}[{r['train_seed']}]", seed, {
        "env_id": r["env_id"], "env_kwargs": _env_kwargs(r["env_id"], b, None, quick),
        "spec": f"{r['algo']}:{r['run']}",
        "tags": {"env_id": r["env_id"], "backend": b, "train_backend": r["train_backend"],
                 "train_seed": r["train_seed"]}})
        for r in runs for b in BACKENDS for seed in seeds]


def run_study(seeds: list[int], out: Path, *, quick: bool = False, train: bool = True,
              train_seeds: tuple[int, ...] | None = None, train_steps: int | None = None,
              train_backends: tuple[str, ...] = TRAIN_BACKENDS, algos: tuple[str, ...] = ALGOS,
              executor: str = "local",
              ray_address: str | None = None, resume: bool = True,
              progress: bool = True, ids: list[str] | None = None) -> str:
    """Measure the headroom, train and evaluate the controllers, and write the study's files.

    Args:
        seeds: Evaluation seeds, the same for every agent (paired comparisons); keep them
            outside ``train_seeds + rank`` and ``train_seeds + 10_000`` (held out).
        out: Output directory (created): ``runs.csv``, ``scores.csv``, ``learned.csv``,
            ``training_curves.csv``, ``training_curves.png``, ``hard_track.md``,
            ``manifest.json``, ``eval_curves.csv``, ``transfer.csv``, and
            ``train/<benchmark>/<backend>/seed<k>/`` (the controllers).
        quick: Small episodes (:data:`QUICK_ENV`), :data:`QUICK_TRAIN_STEPS`,
            :data:`QUICK_TRAIN_SEEDS`, :data:`QUICK_N_ENVS` envs and
            :data:`QUICK_HYPERPARAMS` (a smoke test).
        train: Train and evaluate the learned controllers (off: the headroom only).
        train_seeds: Training seeds (default :data:`TRAIN_SEEDS`; :data:`QUICK_TRAIN_SEEDS`
            under ``quick``).
        train_steps: Steps per training run (default :data:`TRAIN_STEPS`).
        train_backends: Backends to train on (default :data:`TRAIN_BACKENDS`); every
            controller is evaluated on all of :data:`BACKENDS`.
        algos: Algorithms to train (default :data:`ALGOS`).
        executor: ``"local"`` or ``"ray"``; ``ray_address`` the cluster to join.
        resume: Reuse the finished units kept under ``out/.units``.
        progress: Show progress bars.
        ids: The hard ids to run (default :func:`hard_ids`, all of them; fewer for a test).

    Returns:
        The markdown report (also written to ``out/hard_track.md``).
    """
    from nsr_gym.results import command_line, manifest
    from nsr_gym.studies import hard_track_report as report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ids = list(ids or hard_ids())
    sweep = Sweep(executor, ray_address, resume, progress)
    rows, resumed = sweep.run(episode_unit, headroom_units(ids, seeds, quick), out / ".units",
                              desc="hard-track rules")
    counts = {"rules": {"computed": len(rows) - resumed, "resumed": resumed}}
    trained: list[dict[str, Any]] = []
    learned: list[dict[str, Any]] = []
    if train:
        unknown = sorted(set(train_backends) - set(BACKENDS))
        if unknown or not train_backends:
            raise ValueError(f"train_backends {list(train_backends)}: choose from {BACKENDS}")
        if not algos or set(algos) - set(ALGOS):
            raise ValueError(f"algos {list(algos)}: choose from {ALGOS}")
        steps = train_steps or (QUICK_TRAIN_STEPS if quick else TRAIN_STEPS)
        tseeds = train_seeds or (QUICK_TRAIN_SEEDS if quick else TRAIN_SEEDS)
        tunits = train_units(ids, tuple(train_backends), tuple(tseeds), steps, out, quick,
                             tuple(algos))
        trained, resumed = sweep.run(train_unit, tunits, out / ".units", desc="hard-track train")
        counts["train"] = {"computed": len(trained) - resumed, "resumed": resumed,
                           "steps": steps, "seeds": list(tseeds),
                           "backends": list(train_backends), "algos": list(algos),
                           "n_envs": QUICK_N_ENVS if quick else N_ENVS,
                           "n_evals": QUICK_N_EVALS if quick else N_EVALS,
                           "wall_s": round(sum(r["wall_s"] for r in trained), 1)}
        learned, resumed = sweep.run(episode_unit, learned_units(trained, seeds, quick),
                                     out / ".units", desc="hard-track learned")
        counts["learned"] = {"computed": len(learned) - resumed, "resumed": resumed}
    meta = manifest(command_line(), seeds, time.perf_counter() - t0, env_ids=ids,
                    backends=list(BACKENDS), rules=RULES, quick=quick, executor=executor,
                    units=counts)
    return report.write_report(out, pd.DataFrame(rows), pd.DataFrame(learned), trained, meta)
