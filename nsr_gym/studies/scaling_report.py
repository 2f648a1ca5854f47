"""The report of ``nsr-gym study scaling``: ``scaling.md`` and its figures, drawn from the CSVs.

:func:`write_report` reads what :mod:`nsr_gym.studies.scaling_study` wrote under
``results/scaling`` (one CSV per section, the manifest) and renders the tables, the findings
computed from them, the explanation of where recall degrades (the rival-cosine law) and the
figures. It runs no
experiment, so ``nsr-gym study scaling --report-only`` redraws everything in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from nsr_gym.results import markdown_table
from nsr_gym.studies.scaling import LONG


def _mean(frame: pd.DataFrame, by: list[str], cols: list[str]) -> pd.DataFrame:
    """Mean over seeds of ``cols`` for each ``by`` group, in the groups' order of appearance."""
    cols = [c for c in cols if c in frame]
    return frame.groupby(by, sort=False, dropna=False)[cols].mean().reset_index()


def _first_below(xs: pd.Series, ys: pd.Series, level: float) -> float | None:
    """The smallest ``x`` whose ``y`` is below ``level`` (None when none is)."""
    below = xs[ys < level]
    return float(below.min()) if len(below) else None


def _footer(fig, meta: dict, section: str) -> None:
    run = meta["sections_by_run"].get(section, meta)
    fig.text(0.01, 0.005, f"{run['command']} | seeds {run['seeds']} | git "
                          f"{run['git_revision'][:12]}",
             fontsize=6, color="0.4")


def _fig(name: str, out: Path, meta: dict, section: str, ncols: int = 2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.9))
    def save() -> None:
        _footer(fig, meta, section)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    return fig, np.atleast_1d(axes), save


def _recall_md(out: Path, meta: dict, large: pd.DataFrame | None) -> tuple[str, list[str]]:
    raw = pd.read_csv(out / "recall.csv")
    cache = raw[raw["probe_size"] < 0]
    df = _mean(raw[raw["probe_size"] > 0], ["probe_size", "n_stored"],
               ["precision_at_1", "self_cos", "rival_cos", "error_margin", "novel_max_cos",
                "false_recall", "pairwise_cos"])
    table = df.pivot(index="n_stored", columns="probe_size", values="precision_at_1")
    table.columns = [f"probe {c}" for c in table.columns]
    findings = []
    for probe, g in df.groupby("probe_size"):
        n = _first_below(g["n_stored"], g["precision_at_1"], 0.99)
        top = g.loc[g["n_stored"].idxmax()]
        findings.append(f"probe {probe}: " + (f"precision@1 first falls below 0.99 at {n:.0f} "
                                              "stored "
                        f"tasks, {top['precision_at_1']:.3f} at {top['n_stored']:.0f}" if n else
                        f"precision@1 stays >= 0.99 up to {top['n_stored']:.0f} tasks "
                        f"({top['precision_at_1']:.3f})"))
    p64 = df[df["probe_size"] == df["probe_size"].max()]
    lo, hi = p64.iloc[0], p64.iloc[-1]
    fig, ax, save = _fig("recall_vs_tasks.png", out, meta, "recall")
    for probe, g in df.groupby("probe_size"):
        ax[0].plot(g["n_stored"], g["precision_at_1"], "o-", label=f"probe {probe}")
    if large is not None and len(large):
        ax[0].plot(large["n_entries"], large["precision_at_1"], "ks--", label="probe 64, "
                                                                              "vectorised keys")
    ax[0].set(xscale="log", xlabel="stored tasks", ylabel="recall precision@1",
              title="Recall vs stored tasks (torch embeddings)")
    ax[0].legend(fontsize=7)
    for col, label in (("self_cos", "query . own key"), ("rival_cos", "query . best other key"),
                       ("novel_max_cos", "new task . best key")):
        ax[1].plot(p64["n_stored"], p64[col], "o-", label=label)
    ax[1].axhline(0.5, color="0.5", ls=":", label="similarity rule's fresh threshold")
    ax[1].set(xscale="log", xlabel="stored tasks", ylabel="cosine",
              title=f"Why: margins at probe {int(lo['probe_size'])}")
    ax[1].legend(fontsize=7)
    save()
    md = ["## 1. Recall against the number of stored tasks (torch embeddings)\n",
          "Keys and queries are `TorchLearner.embed` (the mean centred frozen feature of a random "
          "probe batch) of permuted-digit tasks; the query is a second, independent probe batch of "
          "the same task; recall is `TaskKnowledgeBank.recall`. Mean over seeds (the probe "
          "draws).\n",
          markdown_table(table.reset_index()), "",
          f"At probe {int(lo['probe_size'])} (the default): the cosine of a query with its own key "
          f"stays at {lo['self_cos']:.3f} to {hi['self_cos']:.3f} while its best rival rises from "
          f"{lo['rival_cos']:.3f} ({int(lo['n_stored'])} tasks) to {hi['rival_cos']:.3f} "
          f"({int(hi['n_stored'])}); a new task's best match rises from {lo['novel_max_cos']:.3f} "
          f"to {hi['novel_max_cos']:.3f}, so the similarity rule (fresh below 0.5) takes "
          f"{lo['false_recall']:.0%} to {hi['false_recall']:.0%} of new tasks for stored ones.\n",
          "![recall vs tasks](recall_vs_tasks.png)\n"]
    if len(cache):
        per = float(cache["learner_cache_bytes"].iloc[0]) / float(cache["n_stored"].iloc[0])
        md.append(f"The torch learner caches {per / 1e6:.2f} MB of data and frozen features per "
                  "task "
                  f"({per * 1000 / 1e9:.2f} GB at 1000 tasks).\n")
    return "\n".join(md), findings


def _similarity_md(out: Path, meta: dict) -> tuple[str, list[str]]:
    raw = pd.read_csv(out / "similarity.csv")
    tor = _mean(raw[raw["backend"] == "torch"], ["fraction", "n_stored"],
                ["raw_task_cos", "precision_at_1", "rival_cos", "self_cos", "false_recall"])
    ana = _mean(raw[raw["backend"] == "analytic"], ["key_dim", "task_similarity", "n_stored"],
                ["pairwise_cos", "precision_at_1", "rival_cos", "false_recall"])
    fig, ax, save = _fig("recall_vs_similarity.png", out, meta, "similarity")
    for n, g in tor.groupby("n_stored"):
        ax[0].plot(1 - g["raw_task_cos"], g["precision_at_1"], "o-", label=f"{n} stored")
    ax[0].set(xscale="log", xlabel="1 - cosine between two tasks' mean raw features",
              ylabel="precision@1", title="Torch: tasks permuting fewer pixels (left: alike)")
    ax[0].legend(fontsize=7)
    for (d, n), g in ana.groupby(["key_dim", "n_stored"]):
        if n in (ana["n_stored"].min(), 100, ana["n_stored"].max()):
            ax[1].plot(g["task_similarity"], g["precision_at_1"], "o-",
                       label=f"d={int(d)}, {n} stored")
    ax[1].set(xlabel="task_similarity (analytic)", ylabel="precision@1", title="Analytic "
                                                                               "embeddings")
    ax[1].legend(fontsize=7)
    save()
    ttab = tor.pivot(index="fraction", columns="n_stored", values="precision_at_1")
    ttab.columns = [f"{c} stored" for c in ttab.columns]
    cos = tor.groupby("fraction", sort=False)["raw_task_cos"].mean()
    selfc = tor.groupby("fraction", sort=False)["self_cos"].mean()
    ttab.insert(0, "pixels permuted", [f"{f * 64:.0f}/64" for f in ttab.index])
    ttab.insert(1, "task cosine (raw)", cos.reindex(ttab.index).to_numpy())
    ttab.insert(2, "self cosine", selfc.reindex(ttab.index).to_numpy())
    atab = ana.pivot_table(index=["key_dim", "task_similarity"], columns="n_stored",
                           values="precision_at_1").reset_index()
    atab["key_dim"] = atab["key_dim"].astype(int)
    atab.columns = [c if isinstance(c, str) else f"{c} stored" for c in atab.columns]
    findings = []
    big = tor[tor["n_stored"] == tor["n_stored"].max()].sort_values("fraction", ascending=False)
    bad = big[big["precision_at_1"] < 0.99]
    if len(bad):
        r = bad.iloc[0]
        findings.append(f"similar tasks (torch): with {int(r['n_stored'])} stored, precision@1 is "
                        f"{r['precision_at_1']:.3f} once tasks permute only "
                        f"{r['fraction'] * 64:.0f} "
                        f"of 64 pixels (raw task cosine {r['raw_task_cos']:.4f}; the query's "
                        "cosine "
                        f"with its own key falls to {r['self_cos']:.2f})")
    for d, g in ana[ana["n_stored"] == ana["n_stored"].max()].groupby("key_dim"):
        n = _first_below(g["task_similarity"], g["precision_at_1"], 0.99)
        if n is not None:
            findings.append(f"similar tasks (analytic, d = {int(d)}): with "
                            f"{int(g['n_stored'].iloc[0])} "
                            f"stored, precision@1 falls below 0.99 from task_similarity {n:g}")
    md = ["## 2. Recall against the similarity between tasks\n",
          "Torch: each task permutes only a fraction of the pixels (`nsr_gym.studies.scaling."
          "partial_permutation_tasks`), probe 64. Task cosine (raw): mean cosine between two "
          "tasks' "
          "mean frozen features before centring (keys are centred by the pool mean, so the keys' "
          "own "
          "mean cosine is ~0 whatever the tasks); self cosine: a query with its own key. Cells: "
          "precision@1, mean over seeds.\n",
          markdown_table(ttab.reset_index(drop=True)), "",
          "Analytic backend (`task_similarity` is the shared component of the embeddings, probe "
          "noise 0.05):\n", markdown_table(atab), "",
          "![recall vs similarity](recall_vs_similarity.png)\n"]
    return "\n".join(md), findings


def _env_table(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    cols = ["episode_return", "recovery", "recovery_censored", "precision_at_1", "hit_rate",
            "false_recall", "acc_first_visits", "acc_revisits", "return_zero_shot",
            "truncation_gap", "bytes_per_entry", "bank_bytes", "lru_hit_bound", "wall_s"]
    return _mean(frame, by, cols)


def _compression_md(out: Path, meta: dict) -> tuple[str, list[str]]:
    raw = pd.read_csv(out / "compression.csv")
    raw["budget_label"] = [f"{b} {v:g}" if b != "none" else "no budget"
                           for b, v in zip(raw["budget"], raw["value"].fillna(0), strict=True)]
    df = _env_table(raw, ["budget_label", "agent"])
    fig, ax, save = _fig("compression.png", out, meta, "compression")
    for agent, g in df.groupby("agent", sort=False):
        ax[0].plot(g["budget_label"], g["recovery"], "o-", label=agent)
        ax[1].plot(g["budget_label"], g["return_zero_shot"], "o-", label=f"{agent}: accuracy at "
                                                                         "return")
    ax[0].set(ylabel="recovery time R_eps (steps)", title="Recovery vs SVD budget (torch)")
    ax[1].set(ylabel="accuracy", title="Accuracy when a task returns")
    for a in ax:
        a.tick_params(axis="x", rotation=45, labelsize=7)
        a.legend(fontsize=7)
    save()
    shown = df[["budget_label", "agent", "bytes_per_entry", "truncation_gap", "return_zero_shot",
                "recovery", "precision_at_1", "episode_return"]]
    ora = df[df["agent"] == "oracle"].set_index("budget_label")
    findings = []
    if "no budget" in ora.index and "rank 1" in ora.index:
        cost = ora.loc["no budget", "return_zero_shot"] - ora.loc["rank 1", "return_zero_shot"]
        findings.append(f"compression: rank 1 costs {cost:.3f} "
                        "accuracy at return vs no budget "
                        f"({ora.loc['rank 1', 'bytes_per_entry']:.0f} vs "
                        f"{ora.loc['no budget', 'bytes_per_entry']:.0f} bytes per entry); recall "
                        "itself "
                        "does not depend on the budget (keys are not compressed)")
    md = ["## 3. Recovery against the SVD rank budget and energy threshold\n",
          f"Torch backend, `{LONG}` with {json.dumps(meta['plan']['comp_env'])}; `learner="
          "{compression_rank, compression_energy}`. Keys are never compressed, so precision@1 does "
          "not move with the budget; what moves is what a correct recall brings back.\n",
          markdown_table(shown), "", "![compression](compression.png)\n"]
    return "\n".join(md), findings


def _horizon_md(out: Path, meta: dict) -> tuple[str, list[str]]:
    raw = pd.read_csv(out / "horizon.csv")
    df = _env_table(raw, ["backend", "n_tasks", "agent"])
    fig, ax, save = _fig("long_horizon.png", out, meta, "horizon")
    for (backend, agent), g in df.groupby(["backend", "agent"], sort=False):
        ax[0].plot(g["n_tasks"], g["recovery"], "o-" if backend == "analytic" else "s--",
                   label=f"{backend} {agent}")
        if agent == "similarity":
            ax[1].plot(g["n_tasks"], g["precision_at_1"], "o-", label=f"{backend}: precision@1")
            ax[1].plot(g["n_tasks"], g["false_recall"], "s--", label=f"{backend}: new task taken "
                                                                     "for stored")
    ax[0].set(xscale="log", xlabel="tasks in the stream", ylabel="recovery time (steps)",
              title="Recovery vs number of tasks")
    ax[1].set(xscale="log", xlabel="tasks in the stream", ylabel="rate", title="Recall in the "
                                                                               "episode")
    for a in ax:
        a.legend(fontsize=7)
    save()
    shown = df[["backend", "n_tasks", "agent", "episode_return", "recovery", "precision_at_1",
                "false_recall", "acc_first_visits", "acc_revisits", "bank_bytes", "wall_s"]]
    sim = df[(df["agent"] == "similarity")]
    findings = []
    for backend, g in sim.groupby("backend", sort=False):
        top = g.loc[g["n_tasks"].idxmax()]
        findings.append(f"{backend} long horizon: at {int(top['n_tasks'])} tasks the similarity "
                        "rule recalls returning tasks with precision@1 "
                        f"{top['precision_at_1']:.3f}, "
                        f"recovery {top['recovery']:.2f} steps, and takes "
                        f"{top['false_recall']:.0%} of new tasks for stored ones")
    env = meta["plan"]["horizon_env"]
    md = ["## 4. Recovery time against the number of tasks (long horizon)\n",
          f"`{LONG}` (Zipf recurrence over stack distance), L = {env['phase_length']}, "
          f"C = {env['n_cycles']} (torch: C = 2, seed {meta['seeds'][0]}), full capacity. "
          "precision@1: at revisits, the bank's top-1 key is the task's own entry; false recall: "
          "first visits whose best match reaches 0.5.\n",
          markdown_table(shown), "", "![long horizon](long_horizon.png)\n"]
    return "\n".join(md), findings


def _memory_md(out: Path, meta: dict, disk: pd.DataFrame | None) -> str:
    rows = []
    if (out / "horizon.csv").exists():
        h = pd.read_csv(out / "horizon.csv")
        h = h[(h["agent"] == "similarity") & h["backend"].isin(["analytic", "torch"])]
        h = h.groupby(["backend", "n_tasks"])[["bank_bytes", "bank_entries"]].mean()
        for (backend, n), r in h.iterrows():
            rows.append({"what": f"bank, {backend} entries (measured)", "tasks": n,
                         "bytes": r["bank_bytes"]})
    if (out / "recall.csv").exists():
        c = pd.read_csv(out / "recall.csv")
        c = c[c["probe_size"] < 0]
        if len(c):
            per = float(c["learner_cache_bytes"].iloc[0]) / float(c["n_stored"].iloc[0])
            rows += [{"what": "torch learner data + feature cache", "tasks": n, "bytes": per * n}
                     for n in (10, 100, 300, 1000)]
    if disk is not None and len(disk[disk["kind"] == "real"]):
        d = disk[disk["kind"] == "real"].iloc[0]
        for n in (1000, 100_000):
            rows.append({"what": "DiskBank index in memory", "tasks": n,
                         "bytes": d["index_bytes_in_memory"] / d["n_entries"] * n})
            rows.append({"what": "DiskBank shards on disk", "tasks": n,
                         "bytes": d["disk_bytes"] / d["n_entries"] * n})
    if not rows:
        return ""
    df = pd.DataFrame(rows)
    from nsr_gym.results import write_csv

    write_csv(out / "memory.csv", df)
    fig, ax, save = _fig("memory.png", out, meta, "horizon", ncols=1)
    for what, g in df.groupby("what", sort=False):
        ax[0].plot(g["tasks"], g["bytes"] / 1e6, "o-", label=what)
    ax[0].set(xscale="log", yscale="log", xlabel="tasks", ylabel="MB", title="Memory against tasks")
    ax[0].legend(fontsize=7)
    save()
    df["MB"] = df.pop("bytes") / 1e6
    return "\n".join(["## 5. Memory against the number of tasks\n",
                      "Bank bytes are exact (tensors plus keys, at the end of the episode). An "
                      "analytic "
                      "entry stores the experience vector over all M tasks (8 M bytes), so its "
                      "bank grows "
                      "as M^2; a torch entry is the compressed LoRA factors and the head, a "
                      "constant "
                      "~5 KB. The torch learner's cache of every task's data and frozen features "
                      "is "
                      "what limits the torch backend at 1000 tasks.\n",
                      markdown_table(df), "", "![memory](memory.png)\n"])


def _eviction_md(out: Path, meta: dict) -> tuple[str, list[str]]:
    raw = pd.read_csv(out / "eviction.csv")
    df = _env_table(raw, ["capacity", "eviction"])
    fig, ax, save = _fig("eviction.png", out, meta, "eviction")
    capped = df[df["eviction"] != "uncapped"]
    for rule, g in capped.groupby("eviction", sort=False):
        ax[0].plot(g["capacity"], g["episode_return"], "o-", label=rule)
        ax[1].plot(g["capacity"], g["hit_rate"], "o-", label=rule)
    lru = capped[capped["eviction"] == "lru"]
    ax[1].plot(lru["capacity"], lru["lru_hit_bound"], "k:", label="P(stack distance < K)")
    unc = df[df["eviction"] == "uncapped"]
    if len(unc):
        ax[0].axhline(float(unc["episode_return"].iloc[0]), color="0.5", ls=":", label="uncapped")
    ax[0].set(xscale="log", xlabel="capacity K", ylabel="return", title="Return under a cap")
    ax[1].set(xscale="log", xlabel="capacity K", ylabel="revisits whose entry is stored",
              title="Hit rate under a cap")
    for a in ax:
        a.legend(fontsize=7)
    save()
    shown = df[["capacity", "eviction", "episode_return", "hit_rate", "lru_hit_bound", "recovery",
                "precision_at_1", "acc_revisits"]]
    findings = []
    for k, g in capped.groupby("capacity"):
        best = g.loc[g["episode_return"].idxmax()]
        worst = g.loc[g["episode_return"].idxmin()]
        findings.append(f"K = {k}: best eviction {best['eviction']} (return "
                        f"{best['episode_return']:.1f}, "
                        f"hit rate {best['hit_rate']:.2f}), worst {worst['eviction']} "
                        f"({worst['episode_return']:.1f}, {worst['hit_rate']:.2f})")
    env = meta["plan"]["evict_env"]
    md = ["## 6. Eviction rules under a cap\n",
          f"Analytic backend, `{LONG}` with {json.dumps(env)}, the similarity rule. Hit rate: "
          "revisits "
          "whose entry is still stored; P(stack distance < K) is what an exact LRU cache would hit "
          "on the same stream.\n", markdown_table(shown), "", "![eviction](eviction.png)\n"]
    return "\n".join(md), findings


def _diskbank_md(disk: pd.DataFrame) -> tuple[str, list[str]]:
    large = disk[disk["kind"] == "recall"]
    banks = disk[disk["kind"] != "recall"]
    md = ["## 7. A bank larger than memory (`nsr_gym.bank.disk.DiskBank`)\n",
          "Entries in safetensors shards (1024 entries each, tensors stacked by shape), "
          "memory-mapped with `safe_open`; only the keys (contiguous, normalised float32) and a "
          "few integers per entry are in memory. Keys: real permuted-digit embeddings "
          "(TorchLearner.embed's recipe, vectorised: `scaling.permuted_digit_keys`), queried with "
          "a second probe batch; payloads: random float32 tensors shaped like the torch learner's "
          "entries (`real`, rank-4 LoRA on the 64-64-32 MLP + head, 4.9 KB) or a paper-scale "
          "entry (`paper`, rank-4 LoRA on 12 768x768 layers, 0.29 MB). Recall: one query "
          "(`DiskBank.recall`) and a batch (`recall_many`). Loads: one entry's tensors, 1000 "
          "random ids; cold = the shard pages dropped from the page cache "
          "(`posix_fadvise(DONTNEED)`, after an fsync) and the shards reopened; warm = again. "
          "Allocated on open: bytes numpy allocates to open the bank (tracemalloc). The banks are "
          "deleted after.\n"]
    findings = []
    if len(banks):
        shown = pd.DataFrame({
            "kind": banks["kind"], "entries": banks["n_entries"].astype(int),
            "KB/entry": banks["entry_bytes"] / 1e3, "disk GB": banks["disk_bytes"] / 1e9,
            "index MB in memory": banks["index_bytes_in_memory"] / 1e6,
            "allocated on open MB": banks["allocated_on_open_bytes"] / 1e6,
            "write s": banks["write_s"], "open s": banks["open_s"],
            "recall ms": banks["recall_ms"],
            "batch recall ms/query": banks["recall_batch_ms_per_query"],
            "precision@1": banks["precision_at_1"],
            "load cold p50/p90/p99 ms": [f"{a:.3f} / {b:.2f} / {c:.2f}" for a, b, c in zip(
                banks["load_cold_p50_ms"], banks["load_cold_p90_ms"], banks["load_cold_p99_ms"],
                strict=True)],
            "load warm p50/p90/p99 ms": [f"{a:.3f} / {b:.2f} / {c:.2f}" for a, b, c in zip(
                banks["load_warm_p50_ms"], banks["load_warm_p90_ms"], banks["load_warm_p99_ms"],
                strict=True)]})
        md += [markdown_table(shown, floatfmt=".4g"), ""]
        r = banks.iloc[0]
        for _, r in banks.iterrows():
            findings.append(
                f"disk bank of {int(r['n_entries']):,} {r['kind']} entries "
                f"({r['disk_bytes'] / 1e9:.2f} GB on disk, {r['index_bytes_in_memory'] / 1e6:.1f} "
                f"MB of index in memory): recall {r['recall_ms']:.2f} ms per query, load p50 "
                f"{r['load_cold_p50_ms']:.2f} ms cold / {r['load_warm_p50_ms']:.2f} ms warm "
                f"(p99 {r['load_cold_p99_ms']:.1f} / {r['load_warm_p99_ms']:.1f} ms), precision@1 "
                f"{r['precision_at_1']:.4f}")
    if len(large):
        md += ["Precision@1 of the same real keys (probe 64) as the bank grows past 1000 tasks:\n",
               markdown_table(large[["n_entries", "precision_at_1", "self_cos", "rival_cos"]]
                              .astype({"n_entries": int}), floatfmt=".4f"), ""]
        n = _first_below(large["n_entries"], large["precision_at_1"], 1.0)
        big = large.sort_values("n_entries").iloc[-1]
        findings.append(f"probe 64 beyond 1000 tasks: precision@1 {big['precision_at_1']:.4f} at "
                        f"{int(big['n_entries']):,} tasks" + (f", first misrecalls at {n:,.0f}"
                                                              if n else ""))
    return "\n".join(md), findings


def write_report(out: Path, meta: dict) -> str:
    """Write ``scaling.md`` and the figures from the CSVs in ``out``; returns the markdown."""
    from nsr_gym.results import atomic_write_text

    runs = meta["sections_by_run"]
    disk = pd.read_csv(out / "diskbank.csv") if (out / "diskbank.csv").exists() else None
    large = disk[disk["kind"] == "recall"] if disk is not None else None
    parts, findings = [], []
    for section, fn in (("recall", lambda: _recall_md(out, meta, large)),
                        ("similarity", lambda: _similarity_md(out, meta)),
                        ("compression", lambda: _compression_md(out, meta)),
                        ("horizon", lambda: _horizon_md(out, meta)),
                        ("eviction", lambda: _eviction_md(out, meta))):
        if (out / f"{section}.csv").exists():
            text, found = fn()
            parts.append(text)
            findings += found
    memory = _memory_md(out, meta, disk)
    if memory:
        parts.insert(4 if len(parts) >= 4 else len(parts), memory)
    if disk is not None:
        text, found = _diskbank_md(disk)
        parts.append(text)
        findings += found
    provenance = "\n".join(f"- `{s}`: written by `{r['command']}` (seeds {r['seeds']}, git "
                           f"{r['git_revision'][:12]}, {r['created_utc']})"
                           for s, r in runs.items())
    md = "\n".join([
        "# Scaling: does recall hold up as the bank grows into the hundreds of tasks?\n",
        provenance, "",
        "## Measured findings\n", *[f"- {f}" for f in findings], "",
        _why(out, large), "", *parts])
    atomic_write_text(out / "scaling.md", md)
    return md


def _sphere_tail(t: float, d: float) -> float:
    """P(cos > t) between two independent uniform directions in ``d`` dimensions."""
    from scipy.special import betainc

    return 0.5 * float(betainc((d - 1) / 2, 0.5, 1 - t * t)) if t > 0 else 0.5


def _rival_law(n: float, d: float) -> float:
    """Expected best cosine of a query with ``n - 1`` random keys: ``(n - 1) P(cos > t) = 1``."""
    from scipy.optimize import brentq

    return float(brentq(lambda t: (n - 1) * _sphere_tail(t, d) - 1, 1e-9, 1 - 1e-12))


def _fit_dimension(ns: np.ndarray, rivals: np.ndarray) -> float:
    """Effective dimension whose random-direction law best fits the measured rival cosines."""
    from scipy.optimize import minimize_scalar

    def loss(d: float) -> float:
        return sum((_rival_law(n, d) - r) ** 2 for n, r in zip(ns, rivals, strict=True))

    return float(minimize_scalar(loss, bounds=(3, 64), method="bounded").x)


def _count(x: float) -> str:
    return f"{x:,.0f}" if x < 1e6 else f"{x:.1e}"


def _why(out: Path, large: pd.DataFrame | None) -> str:
    """The mechanism, with the numbers of this run's CSVs filled in."""
    if not (out / "recall.csv").exists():
        return ""
    raw = pd.read_csv(out / "recall.csv")
    df = _mean(raw[raw["probe_size"] > 0], ["probe_size", "n_stored"],
               ["precision_at_1", "self_cos", "rival_cos", "novel_max_cos", "false_recall"])
    selfc = df.groupby("probe_size")["self_cos"].mean()
    p = df[df["probe_size"] == df["probe_size"].max()].sort_values("n_stored")
    fit = p[p["n_stored"] >= 20]
    d_eff = _fit_dimension(fit["n_stored"].to_numpy(), fit["rival_cos"].to_numpy())
    lo, hi = p.iloc[0], p.iloc[-1]
    onset = []
    for probe, g in df.groupby("probe_size"):
        n = _first_below(g["n_stored"], g["precision_at_1"], 0.99)
        cross = 1 + 1 / _sphere_tail(float(selfc[probe]), d_eff)
        seen = (f"below 0.99 from {n:.0f} tasks" if n else
                f">= 0.99 through {g['n_stored'].max():.0f} tasks")
        onset.append(f"probe {probe}: self cosine {selfc[probe]:.2f}; precision@1 {seen} "
                     f"({g['precision_at_1'].iloc[-1]:.3f} at {g['n_stored'].iloc[-1]:.0f}); the "
                     f"law puts the mean crossing at {_count(cross)} tasks")
    text = [
        "## Why recall degrades where it does\n",
        "A key is the mean frozen feature of a random probe batch and a query is a second probe "
        "batch of the same task, so a query differs from its own key by sampling noise: its "
        "cosine with its own key is set by the probe size and does not move with the number of "
        "stored tasks. The best *other* key gets closer as the bank fills: at probe "
        f"{int(lo['probe_size'])} the rival cosine rises from {lo['rival_cos']:.2f} "
        f"({int(lo['n_stored'])} tasks) to {hi['rival_cos']:.2f} ({int(hi['n_stored'])} tasks). "
        "That is the largest of n - 1 cosines between random directions, solved from "
        "(n - 1) P(cos > t) = 1 on a sphere of d_eff dimensions; d_eff = "
        f"{d_eff:.1f} of the 32 features fits 20..1000 tasks (the law gives "
        f"{_rival_law(lo['n_stored'], d_eff):.2f} and {_rival_law(hi['n_stored'], d_eff):.2f}). A "
        "query is misrecalled when its rival overtakes its own key: errors begin when the rising "
        "rival reaches the lower tail of the self cosine, and precision collapses near the mean "
        "crossing, where the rival law reaches the mean self cosine:\n",
        *[f"- {o}" for o in onset], ""]
    if large is not None and len(large) and "self_cos" in large:
        big = large.sort_values("n_entries").iloc[-1]
        first = _first_below(large["n_entries"], large["precision_at_1"], 1.0)
        law_big = _rival_law(big["n_entries"], d_eff)
        text.append(
            f"Keys of up to {int(big['n_entries']):,} permuted-digit tasks (probe 64, the same "
            f"recipe vectorised) test this far beyond 1000: at {int(big['n_entries']):,} tasks "
            f"the rival cosine is {big['rival_cos']:.3f} (the law says {law_big:.3f}"
            + ("; it overestimates the growth, so its crossings are conservative"
               if law_big > big["rival_cos"] else "") + ") against a self cosine of "
            f"{big['self_cos']:.3f}, and precision@1 is {big['precision_at_1']:.4f}"
            + (f"; the first misrecalls (of 2000 queries) appear at {first:,.0f} tasks"
               if first else "") + " (section 7).\n")
    n_half = _first_below(p["n_stored"], 1 - p["false_recall"], 0.5)
    novelty = (
        "The novelty test fails long before precision@1 does. NSR's rule loads the best entry "
        "when its cosine reaches 0.5 and starts fresh otherwise, but a new task's best match is "
        f"{lo['novel_max_cos']:.2f} with {int(lo['n_stored'])} tasks stored and "
        f"{hi['novel_max_cos']:.2f} with {int(hi['n_stored'])}")
    if n_half:
        novelty += (f", so from {n_half:.0f} stored tasks most new tasks are warm-started from an "
                    f"unrelated entry ({hi['false_recall']:.0%} at {int(hi['n_stored'])})")
    novelty += (". A fixed threshold cannot serve every bank size; one that follows the rival law "
                "(plus a margin) would.")
    if (out / "horizon.csv").exists():
        h = pd.read_csv(out / "horizon.csv")
        t = h[h["backend"] == "torch"].groupby("agent")["acc_first_visits"].mean()
        if {"similarity", "oracle"} <= set(t.index):
            novelty += (" On these permuted-digit tasks the mistaken warm starts cost nothing "
                        f"measurable: torch first-visit accuracy {t['similarity']:.3f} after them, "
                        f"{t['oracle']:.3f} from a fresh subspace (section 4).")
    text += [novelty, "",
             "Tasks that are alike degrade recall at any bank size: on the torch backend their "
             "mean features differ by less than the probe noise, so the self cosine falls; on the "
             "analytic backend a shared component raises the rival cosine instead (section 2), and "
             "the misrecalls show up as recovery time (section 4). SVD truncation never touches "
             "the keys: it changes what a correct recall restores (accuracy at return, recovery), "
             "not whether recall is correct (section 3)."]
    return "\n".join(text)
