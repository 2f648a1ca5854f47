"""The leaderboard's figures, written into ``results/leaderboard_plots/``.

Per benchmark result (:func:`plot_result`): heat maps of the two accuracy matrices, the
revisit family's ``A[visit, task]`` (from ``phases.csv``) and the standard ``R[phase, task]``
(from ``accuracy_matrix.csv``, :mod:`nsr_gym.cl_metrics`, where the run recorded it), accuracy
around task switches and bank memory against tasks seen (from the step logs; the
curves are also written as CSV next to the figures). Over all benchmarks
(:func:`plot_performance_profiles`): rliable's performance profiles of the normalized scores,
with 95% stratified-bootstrap bands, per track (standard, hard) and backend. rliable is a test
extra: without it that figure is skipped with a note.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nsr_gym.stats import N_BOOT

#: Agents shown in the per-agent figures (when present), in this order.
PLOT_AGENTS = ("similarity", "oracle", "keep-current", "always-fresh", "random-slot")


def switch_curves(steps: pd.DataFrame, before: int = 5) -> pd.DataFrame:
    """Mean accuracy on the *returning* task by step offset around each revisit's first step.

    Offsets ``-before .. -1`` are the last steps of that task's previous visit; ``0 .. L - 1`` the
    revisit (offset 0 is the zero-shot accuracy, after the allocation and before any update).
    """
    rows = []
    for (agent, _seed), g in steps.groupby(["agent", "seed"], sort=False):
        g = g.sort_values("t")
        for (task, visit), v in g[g["visit"] > 1].groupby(["task_id", "visit"]):
            prev = g[(g["task_id"] == task) & (g["visit"] == visit - 1)]["accuracy"].to_numpy()
            cur = v.sort_values("step_in_phase")
            curve = np.concatenate(
                [prev[-before:], [cur["zero_shot_accuracy"].iloc[0]], cur["accuracy"].to_numpy()])
            offsets = np.arange(-min(before, len(prev)), len(cur) + 1)
            rows += [{"agent": agent, "offset": int(o), "accuracy": float(a)}
                     for o, a in zip(offsets, curve, strict=True)]
    out = pd.DataFrame(rows)
    return out.groupby(["agent", "offset"], as_index=False)["accuracy"].mean() if len(out) else out


def memory_curves(steps: pd.DataFrame) -> pd.DataFrame:
    """Mean bank MB at each phase end against the number of distinct tasks seen so far."""
    rows = []
    for (agent, _seed), g in steps.groupby(["agent", "seed"], sort=False):
        g = g.sort_values("t")
        seen = (~g["task_id"].duplicated()).cumsum()
        ends = g.groupby("phase").tail(1).index
        rows += [{"agent": agent, "tasks_seen": int(seen[i]), "phase": int(g.at[i, "phase"]),
                  "bank_mb": float(g.at[i, "bank_bytes"]) / 1e6} for i in ends]
    out = pd.DataFrame(rows)
    return out.groupby(["agent", "phase"], as_index=False).mean() if len(out) else out


def _agents_to_plot(agents: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(agents))
    return [a for a in PLOT_AGENTS if a in present] or present[:5]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_accuracy_matrix(phases: pd.DataFrame, path: Path, title: str) -> None:
    """Heat maps of ``A[visit, task]`` at the end of each visit and on arrival, per agent."""
    from nsr_gym.metrics import accuracy_matrix

    plt = _pyplot()
    agents = _agents_to_plot(phases["agent"])
    fig, axes = plt.subplots(2, len(agents), figsize=(2.8 * len(agents) + 1, 6), squeeze=False,
                             constrained_layout=True)
    for j, agent in enumerate(agents):
        p = phases[phases["agent"] == agent]
        for i, (value, label) in enumerate((("acc_end", "end of visit"),
                                            ("zero_shot", "arrival, no update"))):
            mats = [accuracy_matrix(g, value) for _, g in p.groupby("seed")]
            # Recurring schedules give each seed its own number of visits: pad with NaN.
            shape = tuple(max(m.shape[k] for m in mats) for k in (0, 1))
            padded = np.full((len(mats), *shape), np.nan)
            for k, m in enumerate(mats):
                padded[k, : m.shape[0], : m.shape[1]] = m
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mat = np.nanmean(padded, axis=0)
            ax = axes[i, j]
            im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_title(f"{agent}: {label}", fontsize=9)
            ax.set_xlabel("task")
            ax.set_ylabel("visit")
            ax.set_yticks(range(mat.shape[0]), [str(v + 1) for v in range(mat.shape[0])])
    fig.colorbar(im, ax=axes, shrink=0.7, label="accuracy (mean over seeds)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_standard_matrix(matrix: pd.DataFrame, path: Path, title: str) -> None:
    """Heat maps of the standard ``R[phase, task]`` per agent (mean over seeds)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    agents = _agents_to_plot(matrix["agent"])
    fig, axes = plt.subplots(1, len(agents), figsize=(2.8 * len(agents) + 1, 3.6),
                             squeeze=False, constrained_layout=True)
    body = matrix[matrix["phase"] >= 0]
    for j, agent in enumerate(agents):
        m = body[body["agent"] == agent]
        mat = m.pivot_table(index="phase", columns="task", values="accuracy", aggfunc="mean")
        ax = axes[0, j]
        im = ax.imshow(mat.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(f"{agent} (serve: {m['serve'].iloc[0]})", fontsize=9)
        ax.set(xlabel="task i", ylabel="after phase j")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=axes, shrink=0.7, label="accuracy (mean over seeds)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_switches_memory(curves: pd.DataFrame, mem: pd.DataFrame, path: Path,
                          title: str) -> None:
    """Accuracy around task switches (left) and bank MB against phases seen (right)."""
    import matplotlib

    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for agent in _agents_to_plot(curves["agent"]):
        c = curves[curves["agent"] == agent]
        a1.plot(c["offset"], c["accuracy"], marker=".", label=agent)
        m = mem[mem["agent"] == agent]
        a2.plot(m["phase"] + 1, m["bank_mb"], marker=".", label=agent)
    a1.axvline(-0.5, color="grey", lw=0.8, ls="--")
    a1.set(xlabel="steps from the task's return (negative: end of its previous visit)",
           ylabel="accuracy on the returning task", title="accuracy around task switches")
    a2.set(xlabel="phases seen", ylabel="bank MB (10^6 bytes)", title="bank memory")
    a2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    mean_seen = mem.groupby("phase")["tasks_seen"].mean()
    top = a2.secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
    top.set_xticks(mean_seen.index + 1, [f"{s:.0f}" for s in mean_seen])
    top.set_xlabel("distinct tasks seen", fontsize=8)
    a1.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_result(res: dict[str, Any], out: Path, caption: str) -> list[Path]:
    """The figures of one benchmark result (``studies.leaderboard.load_result``); returns the
    paths written (and writes the switch and memory curves as CSV beside them)."""
    from nsr_gym.results import write_csv

    name = f"{res['benchmark']}" + ("" if res["backend"] == "torch" else f"-{res['backend']}")
    if res.get("setting"):  # a non-default setting of the benchmark: its own file names
        name += "-" + re.sub(r"[^A-Za-z0-9_.=-]+", "-", res["setting"]).strip("-")
    written = []
    if res["phases"] is not None:
        written.append(out / f"{name}_accuracy_matrix.png")
        _plot_accuracy_matrix(res["phases"], written[-1],
                              f"{name}: revisit accuracy matrix A[visit, task]\n{caption}")
    if res.get("matrix") is not None:
        written.append(out / f"{name}_standard_matrix.png")
        _plot_standard_matrix(res["matrix"], written[-1],
                              f"{name}: standard accuracy matrix R[phase j, task i]\n{caption}")
    steps = res["steps"]
    if steps is not None:
        curves, mem = switch_curves(steps), memory_curves(steps)
        write_csv(out / f"{name}_switch_curves.csv", curves)
        write_csv(out / f"{name}_memory_curves.csv", mem)
        written.append(out / f"{name}_switches_memory.png")
        _plot_switches_memory(curves, mem, written[-1], f"{name}\n{caption}")
    return written


# ----------------------------------------------------------------------------- rliable


@contextmanager
def rliable_bootstrap(seed: int = 0) -> Iterator[Any]:
    """rliable's ``library``, usable and seeded for the duration of the block.

    rliable 1.2's ``StratifiedBootstrap`` hands ``random_state`` to arch's ``IIDBootstrap``,
    which arch >= 8 no longer takes; inside the block the class is a subclass that leaves it
    out. Its resampling draws from NumPy's global RNG (``np.random.choice``), so the block
    seeds it with ``seed`` and restores the previous state afterwards.
    """
    from arch.bootstrap import IIDBootstrap
    from rliable import library

    original = library.StratifiedBootstrap

    class _Compatible(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: np.ndarray, random_state: Any = None,
                     task_bootstrap: bool = False, **kwargs: np.ndarray) -> None:
            IIDBootstrap.__init__(self, *args, **kwargs)
            self._args_shape = args[0].shape
            self._num_tasks = self._args_shape[1]
            self._parameters = [self._num_tasks, task_bootstrap]
            self._task_bootstrap = task_bootstrap
            self._strata_indices = self._get_strata_indices()

    state = np.random.get_state()
    library.StratifiedBootstrap = _Compatible
    np.random.seed(seed)
    try:
        yield library
    finally:
        library.StratifiedBootstrap = original
        np.random.set_state(state)


def profile_scores(scores: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """Per backend, agent -> ``(seeds, benchmarks)`` normalized scores, as rliable takes them.

    Only finite scores count; an agent's matrix keeps the benchmarks (with their ``setting``,
    where the scores have one) it has scores on and the seeds every one of those benchmarks has.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    columns = ["benchmark", "setting"] if "setting" in scores else "benchmark"
    for backend, b in scores[np.isfinite(scores["normalized"])].groupby("backend", sort=False):
        per_agent = {}
        for agent, g in b.groupby("agent", sort=False):
            mat = g.pivot_table(index="seed", columns=columns, values="normalized").dropna()
            if mat.size:
                per_agent[agent] = mat.to_numpy(dtype=np.float64)
        if per_agent:
            out[backend] = per_agent
    return out


#: Per track: the normalized score's 1 (the x label) and the figure's file-name part.
TRACK_PROFILES = {"standard": ("the oracle; the clairvoyant where capacity binds", ""),
                  "hard": ("the clairvoyant", "-hard")}


def plot_performance_profiles(scores: pd.DataFrame, out: Path, caption: str,
                              n_boot: int = N_BOOT) -> list[Path]:
    """rliable's performance profiles of the normalized scores, one figure per track and
    backend (``performance_profile[-hard][-<backend>].png``; scores without a ``track``
    column are the standard track's).

    ``library.create_performance_profile`` (the fraction of runs whose normalized score exceeds
    each ``tau``, with 95% stratified-bootstrap bands over ``n_boot`` resamples) drawn by
    ``plot_utils.plot_performance_profiles``. Without rliable the figure is skipped with a note.

    Args:
        scores: ``studies.leaderboard.score_matrix``'s long table.
        out: The plots folder.
        caption: Provenance line for the title.
        n_boot: Bootstrap resamples.

    Returns:
        The paths written.
    """
    try:
        import rliable  # noqa: F401 - a test extra: checked before any figure is started
    except ImportError:
        print("note: rliable is not installed (pip install 'nsr-gym[test]'); skipping the "
              "performance-profile plot")
        return []
    written = []
    tracks = scores["track"] if "track" in scores else pd.Series("standard", index=scores.index)
    for track, (one, suffix) in TRACK_PROFILES.items():
        written += _track_profiles(scores[tracks == track], out, caption, n_boot,
                                   f"{track} track", one, suffix)
    return written


def _track_profiles(scores: pd.DataFrame, out: Path, caption: str, n_boot: int, label: str,
                    one: str, suffix: str) -> list[Path]:
    """The performance-profile figures of one track's scores (one per backend)."""
    from rliable import plot_utils

    plt = _pyplot()
    written = []
    for backend, score_dict in profile_scores(scores).items():
        values = np.concatenate([m.ravel() for m in score_dict.values()])
        lo, hi = min(0.0, float(values.min())), max(1.0, float(values.max()))
        tau = np.linspace(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo), 101)  # every run counted
        with rliable_bootstrap() as library:
            profiles, cis = library.create_performance_profile(score_dict, tau, reps=n_boot)
        fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
        plot_utils.plot_performance_profiles(
            profiles, tau, performance_profile_cis=cis, ax=ax,
            xlabel=rf"normalized score $\tau$ (0 = best memoryless, 1 = {one})",
            ylabel=r"fraction of runs with score $> \tau$", labelsize="medium",
            ticklabelsize="small")
        ax.legend(fontsize=8, loc="lower left")
        name = "performance_profile" + suffix + ("" if backend == "torch" else f"-{backend}")
        fig.suptitle(f"performance profiles over every (benchmark, seed) run, {label}, "
                     f"{backend} backend\n{caption}", fontsize=8)
        written.append(out / f"{name}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
