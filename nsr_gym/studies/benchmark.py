"""What ``nsr-gym run`` computes: allocation policies compared on one benchmark.

Every ``(agent, seed)`` pair is one :class:`~nsr_gym.executors.Unit` whose result is the episode's
per-step log (:func:`rollout_unit`); the units run on an executor (here, or as Ray tasks: the
same logs either way) and each finished log is kept as
``<out>/.units/<config hash>/<agent>[@<weights sha256[:12]>]__seed<seed>.csv``
(:func:`units_dir`, :func:`unit_store`), so an interrupted run resumes where it stopped and
``nsr-gym leaderboard`` can draw its curves from the logs. The tables are
:mod:`nsr_gym.metrics`'s: ``runs.csv`` (per seed), ``leaderboard.csv`` / ``.md`` (per agent,
bootstrap CIs), ``phases.csv`` (per phase) and ``manifest.json``; where the units record the
standard accuracy matrix (``BenchmarkConfig.accuracy_matrix``, on by default offline), also
:mod:`nsr_gym.cl_metrics`'s ``accuracy_matrix.csv`` (per seed, kept beside each unit's log under
``matrices/``) and ``cl_metrics.csv``, with their section in ``leaderboard.md``.

Use :func:`plan_benchmark` to check a :class:`BenchmarkConfig` (a ``ValueError`` says what is
wrong before any work starts), then :func:`run_benchmark` to run it and write the files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nsr_gym.executors import FrameStore, Sweep, Unit, config_hash, registered_kwargs

#: Tasks up to which ``nsr-gym run`` records the accuracy matrix by default (it evaluates every
#: task at every phase end, on a copy of the learner).
MATRIX_MAX_TASKS = 20
#: The agents ``nsr-gym run`` compares by default.
DEFAULT_AGENTS = ("similarity", "oracle", "round-robin", "random-slot", "keep-current",
                  "always-fresh", "fixed-slot")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Settings of one ``nsr-gym run``."""

    benchmark: str = "CyclicSplitDigits"
    """Benchmark name (``nsr_gym.BENCHMARKS`` or ``nsr_gym.PAPER_BENCHMARKS``)."""
    agents: tuple[str, ...] = DEFAULT_AGENTS
    """Rule agent names or trained controllers ``[NAME=]ALGO:PATH`` (``agents.specs``)."""
    seeds: tuple[int, ...] | None = None
    """Seeds; default ``0..4`` (``0, 1`` with ``quick``)."""
    backend: str = "torch"
    """Learner backend: ``torch`` or ``analytic``."""
    cycles: int | None = None
    """Override of the benchmark's number of cycles ``C``."""
    reserve: str | None = None
    """Bank entries per task (``owner``) or shared and updated in place (``active``)."""
    distill_weight: float | None = None
    """The torch learner's distillation weight (default: the learner's, 0)."""
    capacity: int | None = None
    """Bank slots ``K`` (default: the benchmark's, one per task)."""
    retention: str | None = None
    """Who decides what the bank keeps: ``env`` (its ``eviction``, the default) or ``agent``
    (the action's second part; agents that do not decide it run with the env's eviction)."""
    eviction: str | None = None
    """The env's eviction policy when the bank is full (default ``lru``)."""
    env_kwargs: dict[str, Any] | None = None
    """Further ``gym.make`` keywords, merged in; a key no flag also sets."""
    data_root: str | None = None
    """Paper-scale benchmarks: the folder with the datasets' files."""
    weights: str | None = None
    """Paper-scale benchmarks: a torchvision state dict of ``arch``."""
    arch: str = "vit_b_16"
    """Paper-scale benchmarks: the backbone (``vit_b_16`` or ``resnet18``)."""
    verify: bool = True
    """Paper-scale benchmarks: torchvision's md5 checks of the data files."""
    max_train: int | None = None
    """Paper-scale benchmarks: training examples kept per task (a seeded subset)."""
    random_init: bool = False
    """Paper-scale benchmarks: a random backbone instead of ``weights``."""
    out: str | None = None
    """Output folder; default ``results/[quick/]<benchmark>[/<backend>]``."""
    quick: bool = False
    """Two seeds and two cycles, under ``results/quick/`` (a smoke test)."""
    accuracy_matrix: bool | None = None
    """Record the standard accuracy matrix ``R[j, i]`` at every phase end (on a copy of the
    learner, :mod:`nsr_gym.cl_metrics`) into ``accuracy_matrix.csv`` and ``cl_metrics.csv``;
    default: on for the offline benchmarks of at most :data:`MATRIX_MAX_TASKS` tasks."""
    sweep: Sweep = field(default_factory=Sweep)
    """Where the units run, and whether kept ones are reused."""


@dataclass(frozen=True)
class BenchmarkPlan:
    """A checked :class:`BenchmarkConfig`, resolved into what the run needs."""

    config: BenchmarkConfig
    env_id: str
    env_kwargs: dict[str, Any]
    agents: list[str]
    """Display names of the agents, in table order."""
    specs: dict[str, str]
    """Agent name -> the spec that builds it."""
    classes: dict[str, str]
    """Agent name -> memory class (``M0``, ``M1``, ``history``, ``oracle``, ``learned``)."""
    tags: dict[str, str] = field(default_factory=dict)
    """Agent name -> ``@<weights sha256[:12]>`` of a trained controller (retrained, it reruns)."""
    seeds: list[int] = field(default_factory=list)
    out: Path = Path("results")
    n_steps: int = 0
    """Steps of one episode: a kept log with another length is recomputed."""
    agent_env_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Agent name -> its own ``gym.make`` keywords where they differ from ``env_kwargs`` (under
    ``retention="agent"``, an agent that does not decide retention runs with ``"env"``)."""
    record_matrix: bool = False
    """Whether the units record the accuracy matrix (``BenchmarkConfig.accuracy_matrix``)."""


def env_ids() -> list[str]:
    """The registered nsr-gym env ids, sorted."""
    import gymnasium as gym

    import nsr_gym  # noqa: F401 - registers the envs

    return sorted(k for k in gym.registry if k.startswith("nsr_gym/"))


def _list_problems(flag: str, items: list, example: str) -> list[str]:
    if not items:
        return [f"{flag} names nothing; pass e.g. {flag} {example}"]
    twice = sorted({str(i) for i in items if items.count(i) > 1})
    return [f"{flag} lists {', '.join(twice)} more than once"] if twice else []


def env_kwargs_of(cfg: BenchmarkConfig, paper: bool) -> dict[str, Any]:
    """The ``gym.make`` keywords of ``cfg`` (before ``quick`` and ``cycles``).

    Raises:
        ValueError: naming the option that does not apply to this benchmark or backend.
    """
    kwargs: dict[str, Any] = {"backend": cfg.backend}
    learner: dict[str, Any] = {}
    for key in ("reserve", "capacity", "retention", "eviction"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    if cfg.distill_weight is not None:
        learner["distill_weight"] = cfg.distill_weight
    if paper:
        kwargs.update(_paper_kwargs(cfg))
        if cfg.random_init:
            learner["random_init"] = True
    else:
        given = [flag for flag, v in (("--data-root", cfg.data_root), ("--weights", cfg.weights),
                                      ("--max-train", cfg.max_train)) if v is not None]
        if cfg.random_init:
            given.append("--random-init")
        if given:
            raise ValueError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only for "
                             "the paper-scale benchmarks (SplitCIFAR100, FiveDatasets)")
    if learner:
        kwargs["learner"] = learner
    return _merge_env_kwargs(kwargs, dict(cfg.env_kwargs or {}), paper)


#: The flag that sets each ``gym.make`` keyword (an ``--env-kwargs`` key may not repeat one).
_FLAG_OF = {"backend": "--backend", "reserve": "--reserve", "capacity": "--capacity",
            "retention": "--retention", "eviction": "--eviction", "n_cycles": "--cycles",
            "data_root": "--data-root", "weights": "--weights", "arch": "--arch",
            "verify": "--no-verify", "max_train": "--max-train"}


def env_keywords(paper: bool) -> list[str]:
    """The keywords ``gym.make`` takes for a benchmark (``AllocationEnv``'s arguments, and for
    the paper-scale benchmarks ``make_paper_env``'s), sorted."""
    import inspect

    from nsr_gym.envs import AllocationEnv, make_paper_env

    names = set(inspect.signature(AllocationEnv.__init__).parameters) - {"self"}
    if paper:
        names |= set(inspect.signature(make_paper_env).parameters) - {"benchmark", "env_kwargs"}
    return sorted(names)


def _merge_env_kwargs(kwargs: dict[str, Any], extra: dict[str, Any], paper: bool
                      ) -> dict[str, Any]:
    """``kwargs`` with ``--env-kwargs``'s ``extra`` merged in (``learner`` dicts key by key).

    Raises:
        ValueError: for an unknown keyword, or one that a flag also sets.
    """
    known = env_keywords(paper)
    unknown = sorted(set(extra) - set(known))
    if unknown:
        raise ValueError(f"--env-kwargs: unknown keyword(s) {', '.join(map(repr, unknown))}; "
                         f"the env takes {', '.join(known)}")
    learner = extra.pop("learner", None)
    twice = sorted(k for k in extra if k in kwargs)
    if learner is not None:
        if not isinstance(learner, dict):
            raise ValueError(f"--env-kwargs: learner must be an object of learner options, got "
                             f"{learner!r}")
        twice += [f"learner.{k}" for k in sorted(set(learner) & set(kwargs.get("learner", {})))]
    if twice:
        flags = sorted({_FLAG_OF.get(k, "--distill-weight") for k in twice})
        raise ValueError(f"--env-kwargs sets {', '.join(twice)}, and so does "
                         f"{' / '.join(flags)}: pass each setting once")
    merged = {**kwargs, **extra}
    if learner is not None:
        merged["learner"] = {**kwargs.get("learner", {}), **learner}
    return merged


def _paper_kwargs(cfg: BenchmarkConfig) -> dict[str, Any]:
    """The paper-scale benchmarks' data and backbone keywords."""
    if cfg.backend != "torch":
        raise ValueError("the paper-scale benchmarks run on the torch backend only")
    if cfg.data_root is None:
        raise ValueError(f"{cfg.benchmark} reads local files: pass --data-root DIR (and "
                         "--weights FILE); the README's 'Paper scale' lists the files")
    kwargs: dict[str, Any] = dict(data_root=str(cfg.data_root), arch=cfg.arch, verify=cfg.verify,
                                  weights=None if cfg.weights is None else str(cfg.weights))
    if cfg.max_train is not None:
        kwargs["max_train"] = cfg.max_train
    return kwargs


def plan_benchmark(cfg: BenchmarkConfig) -> BenchmarkPlan:
    """Check ``cfg`` and resolve it: agents built, env made once, output folder created.

    Raises:
        ValueError: with a message saying what is wrong (unknown benchmark or agent, repeated
            or negative seeds, options that do not apply, missing paper-scale files, an output
            folder that cannot be written).
    """
    import gymnasium as gym

    import nsr_gym
    from nsr_gym.agents import make_agent

    known = [*nsr_gym.BENCHMARKS, *nsr_gym.PAPER_BENCHMARKS]
    if cfg.benchmark not in known:
        raise ValueError(f"unknown benchmark {cfg.benchmark!r}; known: {', '.join(known)}")
    specs = list(cfg.agents)
    built = [make_agent(spec) for spec in specs]  # ValueError names the unknown agent
    agents = [p.name for p in built]
    seeds = list(cfg.seeds) if cfg.seeds is not None else ([0, 1] if cfg.quick else list(range(5)))
    problems = _list_problems("--agents", agents, "similarity,oracle") + \
        _list_problems("--seeds", seeds, "0,1,2 or a count such as 3")
    if any(s < 0 for s in seeds):
        problems.append(f"--seeds must be >= 0 (got {seeds})")
    if problems:
        raise ValueError("; ".join(problems))
    env_kwargs = env_kwargs_of(cfg, cfg.benchmark in nsr_gym.PAPER_BENCHMARKS)
    if cfg.cycles is not None and "n_cycles" in env_kwargs:
        raise ValueError("--env-kwargs sets n_cycles, and so does --cycles: pass it once")
    if cfg.quick and "n_cycles" not in env_kwargs:
        env_kwargs.update(n_cycles=2)
    if cfg.cycles is not None:
        env_kwargs["n_cycles"] = cfg.cycles
    out = Path(cfg.out or (Path("results") / ("quick" if cfg.quick else "") / cfg.benchmark
                           / ("" if cfg.backend == "torch" else cfg.backend) / _variant(cfg)))
    env_id = nsr_gym.env_id(cfg.benchmark)
    try:  # configuration errors surface before any work starts
        probe = gym.make(env_id, **env_kwargs)
        n_steps, n_tasks = probe.unwrapped.n_steps, probe.unwrapped.n_tasks
        if getattr(probe.unwrapped, "task_free", False):
            # The logs' task ids and boundaries (the metrics need them) are privileged on a
            # task-free env; no agent reads the info but the privileged oracle.
            env_kwargs["privileged_info"] = True
        per_agent = agent_env_kwargs(built, env_kwargs, probe.unwrapped)
        probe.close()
    except (ValueError, TypeError, FileNotFoundError) as err:  # FileNotFoundError: paper files
        raise ValueError(str(err)) from err
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot write results to {out} ({err}); pass --out DIR, a directory "
                         "you can write") from err
    return BenchmarkPlan(
        config=cfg, env_id=env_id, env_kwargs=env_kwargs, agents=agents,
        specs=dict(zip(agents, specs, strict=True)),
        classes={p.name: p.memory_class for p in built},
        tags={p.name: "@" + p.weights_sha256[:12] for p in built
              if getattr(p, "weights_sha256", "")},
        seeds=seeds, out=out, n_steps=n_steps,
        agent_env_kwargs={p.name: kw for p, kw in zip(built, per_agent, strict=True)
                          if kw != env_kwargs},
        record_matrix=cfg.accuracy_matrix if cfg.accuracy_matrix is not None else
        cfg.benchmark not in nsr_gym.PAPER_BENCHMARKS and n_tasks <= MATRIX_MAX_TASKS)


def _variant(cfg: BenchmarkConfig) -> str:
    """The default output's subfolder for bank settings (``""`` without them), so that a capped
    bank never overwrites a benchmark's default tables: e.g. ``K3-retention-agent``."""
    parts = [f"{name}{value}" for name, value in (
        ("K", cfg.capacity), ("retention-", cfg.retention), ("eviction-", cfg.eviction))
        if value is not None]
    if cfg.env_kwargs:
        parts.append(f"env-{config_hash(cfg.env_kwargs)[:8]}")
    return "-".join(parts)


def retention_need(policy: Any) -> str:
    """What an agent needs of the env's ``retention`` mode: ``"agent"`` (it decides retention:
    the retention rules, controllers trained on ``retention="agent"``), ``"env"`` (its action
    is an allocation only) or ``"either"`` (the clairvoyant plans for both)."""
    from nsr_gym.agents import Clairvoyant, SB3Policy
    from nsr_gym.agents.retention import RetentionRule

    if isinstance(policy, Clairvoyant):
        return "either"
    if isinstance(policy, RetentionRule):
        return "agent"
    if isinstance(policy, SB3Policy) and "action_nvec" in policy.config:
        return "agent"
    return "env"


def agent_env_kwargs(policies: list[Any], env_kwargs: dict[str, Any], env: Any
                     ) -> list[dict[str, Any]]:
    """Each agent's ``gym.make`` keywords: ``env_kwargs``, except that under
    ``retention="agent"`` an agent whose action is an allocation only runs with
    ``retention="env"`` (the env's ``eviction`` decides for it, as on any env).

    Args:
        policies: The built agents.
        env_kwargs: The run's keywords.
        env: The run's env (unwrapped), for its retention mode (when ``env_kwargs`` does not
            set it), capacity and number of tasks.

    Raises:
        ValueError: naming the flag to pass, for an agent that decides retention on an env that
            does (``retention="env"``), and for the clairvoyant on one whose bank is smaller
            than the stream.
    """
    # The env's own mode: a registration (the hard track's LRUTrapSplitDigits) may set it.
    mode, out, problems = getattr(env, "retention", env_kwargs.get("retention", "env")), [], []
    task_free = bool(getattr(env, "task_free", False))
    for policy in policies:
        need = retention_need(policy)
        if task_free and need == "env" and policy.memory_class != "M0":
            problems.append(f"{policy.name} decides allocation only, and on a task-free env "
                            "(task_free=True) nothing reserves for it: run lru-retain (the "
                            "similarity rule that writes at the shifts it detects, evicting "
                            "LRU), pin or lfu-retain instead")
            continue
        if task_free:  # the memoryless rules run as they are: they write nothing (rollout)
            out.append(env_kwargs)
            continue
        if mode == "env" and need == "agent":
            problems.append(f"{policy.name} decides what the bank keeps: pass --retention agent "
                            "(with --capacity K below the number of tasks for it to matter)")
        elif mode == "env" and need == "either" and env.capacity < env.n_tasks:
            problems.append(f"{policy.name} plans retention itself when the bank holds fewer "
                            f"slots ({env.capacity}) than tasks ({env.n_tasks}): pass "
                            "--retention agent")
        out.append({**env_kwargs, "retention": "env"} if mode == "agent" and need == "env"
                   else env_kwargs)
    if problems:
        raise ValueError("; ".join(problems))
    return out


# ----------------------------------------------------------------------------- units

#: Envs built in this process, by configuration: ``reset(seed)`` restarts everything, so the
#: units of one sweep share one env (a Ray worker keeps its own).
_ENVS: dict[str, Any] = {}


def cached_env(env_id: str, env_kwargs: dict[str, Any]) -> Any:
    """The env ``gym.make(env_id, **env_kwargs)``, built once per process and configuration."""
    import gymnasium as gym

    import nsr_gym  # noqa: F401 - registers the envs in a fresh worker

    key = config_hash({"env": env_id, **env_kwargs})
    if key not in _ENVS:
        close_cached_envs()  # one sweep at a time: drop another configuration's env
        _ENVS[key] = gym.make(env_id, **env_kwargs)
    return _ENVS[key]


def close_cached_envs() -> None:
    """Close and forget the envs :func:`cached_env` built."""
    for env in _ENVS.values():
        env.close()
    _ENVS.clear()


def rollout_unit(unit: Unit) -> pd.DataFrame:
    """One ``(agent, seed)`` episode: the picklable unit function of ``nsr-gym run``.

    Args:
        unit: ``unit.setting`` holds ``env_id``, ``env_kwargs`` and the agent's ``spec``
            (default ``unit.agent``).

    Returns:
        The episode's per-step log (``agents.STEP_COLUMNS``), ``agent`` named ``unit.agent``.
    """
    from nsr_gym.agents import make_agent, rollout

    env = cached_env(unit.setting["env_id"], unit.setting["env_kwargs"])
    policy = make_agent(unit.setting.get("spec", unit.agent))
    return rollout(env, policy, unit.seed, agent_name=unit.agent)


def rollout_matrix_unit(unit: Unit) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`rollout_unit` with the accuracy matrix recorded (the same step log, bit for bit).

    Returns:
        ``(step log, matrix)``; the matrix in :data:`nsr_gym.cl_metrics.MATRIX_COLUMNS`.
    """
    from nsr_gym.agents import make_agent, rollout
    from nsr_gym.cl_metrics import MatrixRecorder

    env = cached_env(unit.setting["env_id"], unit.setting["env_kwargs"])
    recorder = MatrixRecorder(make_agent(unit.setting.get("spec", unit.agent)))
    log = rollout(env, recorder, unit.seed, agent_name=unit.agent)
    return log, recorder.frame(unit.agent, unit.seed)


class MatrixUnitStore:
    """Keeps ``(step log, matrix)`` units: the log where :func:`unit_store` keeps it, the matrix
    under ``matrices/`` beside it; a unit counts as kept only with both."""

    def __init__(self, logs: FrameStore, matrices: FrameStore) -> None:
        self.logs, self.matrices = logs, matrices

    def load(self, unit: Unit) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        log = self.logs.load(unit)
        matrix = None if log is None else self.matrices.load(unit)
        return None if matrix is None else (log, matrix)

    def save(self, unit: Unit, result: tuple[pd.DataFrame, pd.DataFrame]) -> None:
        self.matrices.save(unit, result[1])
        self.logs.save(unit, result[0])


def matrix_store(plan: BenchmarkPlan) -> MatrixUnitStore:
    """:func:`unit_store` plus each unit's accuracy matrix (checked for its columns and rows)."""
    from nsr_gym.cl_metrics import MATRIX_COLUMNS

    logs = unit_store(plan)

    def check(matrix: pd.DataFrame, unit: Unit) -> str | None:
        if list(matrix.columns) != MATRIX_COLUMNS:
            return "other columns"
        if not ((matrix["agent"] == unit.agent).all() and (matrix["seed"] == unit.seed).all()):
            return "another unit's rows"
        return None

    return MatrixUnitStore(logs, FrameStore(logs.folder / "matrices", name=logs.name,
                                            check=check))


def units_dir(out: str | Path, env_id: str, env_kwargs: dict[str, Any]) -> Path:
    """The folder of a run's kept unit logs: one per env configuration, the registration's
    kwargs included (a changed registered benchmark starts afresh)."""
    return Path(out) / ".units" / config_hash({"env": env_id, **env_kwargs,
                                               "__registered__": registered_kwargs(env_id)})


def unit_store(plan: BenchmarkPlan) -> FrameStore:
    """Where a run keeps its unit logs; a file that is not a complete log of its unit (other
    columns, another length, another unit's rows) is recomputed, never counted."""
    from nsr_gym.agents import STEP_COLUMNS

    def check(log: pd.DataFrame, unit: Unit) -> str | None:
        if list(log.columns) != STEP_COLUMNS:
            return "other columns"
        if len(log) != plan.n_steps:
            return f"{len(log)} of {plan.n_steps} steps"
        if not ((log["agent"] == unit.agent).all() and (log["seed"] == unit.seed).all()):
            return "another unit's rows"
        return None

    return FrameStore(units_dir(plan.out, plan.env_id, plan.env_kwargs),
                      name=lambda u: f"{u.agent}{plan.tags.get(u.agent, '')}__seed{u.seed}",
                      check=check)


# ----------------------------------------------------------------------------- the run


def run_benchmark(plan: BenchmarkPlan, command: str | None = None) -> tuple[str, float]:
    """Run every ``(agent, seed)`` unit of ``plan`` (resuming kept ones) and write the tables.

    Args:
        plan: From :func:`plan_benchmark`.
        command: The command line recorded in the manifest (default: this process's).

    Returns:
        ``(the markdown of leaderboard.md, seconds the units took)``.
    """
    from nsr_gym import metrics
    from nsr_gym.atomic import atomic_write_text
    from nsr_gym.results import (
        command_line,
        manifest,
        markdown_table,
        provenance_line,
        write_csv,
        write_json,
    )

    cfg = plan.config
    units = [Unit(a, s, {"env_id": plan.env_id,
                         "env_kwargs": plan.agent_env_kwargs.get(a, plan.env_kwargs),
                         "spec": plan.specs[a]}) for a in plan.agents for s in plan.seeds]
    t0 = time.perf_counter()
    try:
        if plan.record_matrix:
            kept, _ = cfg.sweep.run(rollout_matrix_unit, units, matrix_store(plan),
                                    desc="rollouts")
            logs, matrices = [k[0] for k in kept], [k[1] for k in kept]
        else:
            logs, _ = cfg.sweep.run(rollout_unit, units, unit_store(plan), desc="rollouts")
    finally:
        close_cached_envs()
    steps = pd.concat(logs, ignore_index=True)
    wall = time.perf_counter() - t0

    reference = next((a for a in ("clairvoyant", "oracle") if a in plan.agents), None)
    runs = metrics.summarize(steps, reference=reference)
    board = metrics.leaderboard(runs, plan.classes)
    phases = pd.concat([metrics.phase_table(g).assign(agent=a, seed=s)
                        for (a, s), g in steps.groupby(["agent", "seed"], sort=False)],
                       ignore_index=True)
    phases = phases[["agent", "seed"] + [c for c in phases.columns if c not in ("agent", "seed")]]

    extra = {"agent_env_kwargs": plan.agent_env_kwargs} if plan.agent_env_kwargs else {}
    meta = manifest(command or command_line(), plan.seeds, wall, benchmark=cfg.benchmark,
                    env_id=plan.env_id, env_kwargs=plan.env_kwargs, agents=plan.agents,
                    recovery_convention=metrics.recovery_convention(), **extra)
    out = plan.out
    write_csv(out / "leaderboard.csv", board)
    write_csv(out / "runs.csv", runs)
    write_csv(out / "phases.csv", phases)
    md = (f"# Leaderboard: {cfg.benchmark} ({cfg.backend} backend)\n\n{provenance_line(meta)}\n\n"
          f"{markdown_table(board)}\n\nReturn: mean over seeds with a 95% bootstrap CI. Regret: "
          f"{reference or 'oracle'} return minus the agent's, same seed. BWT / forgetting: at "
          f"each task's return (see nsr_gym.metrics). Recovery: "
          f"{metrics.recovery_convention()}. MB = 10^6 bytes of bank tensors.\n"
          f"{_retention_note(plan)}")
    if plan.record_matrix:  # the standard family, in files of its own
        from nsr_gym.cl_metrics import cl_markdown, summarize_matrices

        matrix = pd.concat(matrices, ignore_index=True)
        per_seed = summarize_matrices(matrix)
        write_csv(out / "accuracy_matrix.csv", matrix)
        write_csv(out / "cl_metrics.csv", per_seed)
        md += "\n" + cl_markdown(per_seed)
    atomic_write_text(out / "leaderboard.md", md)
    write_json(out / "manifest.json", meta)
    return md, wall


def _retention_note(plan: BenchmarkPlan) -> str:
    """A line naming the agents that ran with the env's eviction under ``retention="agent"``."""
    if not plan.agent_env_kwargs:
        return ""
    eviction = plan.env_kwargs.get("eviction", "lru")
    return (f"\nRetention: the agents' own decision (retention='agent'), except for "
            f"{', '.join(plan.agent_env_kwargs)}, whose action is an allocation only: the env's "
            f"eviction ({eviction}) decides for them (retention='env').\n")
