"""Memory budget analysis: real bank-entry bytes, the compression sweep, the eviction study."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

import nsr_gym
from nsr_gym.studies import budget


def test_vit_b16_entry_bytes_are_exact():
    table = budget.vit_entry_bytes(ranks=(2, 4)).set_index("rank")
    # rank r on q, v of 12 blocks: 24 layers x (768 r + r 768) float32
    assert table.at[2, "adapter_bytes"] == 24 * 2 * 768 * 2 * 4 == 294_912
    assert table.at[2, "head_bytes"] == (10 * 768 + 10) * 4
    assert table.at[2, "entry_bytes"] == 294_912 + 30_760 + 768 * 4
    assert table.at[4, "adapter_bytes"] == 2 * table.at[2, "adapter_bytes"]
    assert table.at[2, "adapter_ratio_to_paper"] == pytest.approx(0.294912 / 0.29)


def test_recompress_keeps_heads_and_cuts_rank():
    gen = torch.Generator().manual_seed(0)
    payload = {
        "layer0.B": torch.randn(8, 4, generator=gen),
        "layer0.A": torch.randn(4, 6, generator=gen),
        "layer1.B": torch.randn(5, 4, generator=gen),
        "layer1.A": torch.randn(4, 8, generator=gen),
        "head.weight": torch.ones(3, 5),
        "head.bias": torch.zeros(3),
    }
    out, ranks = budget.recompress(payload, rank=2, energy=None)
    assert (
        ranks == [2, 2]
        and out["layer1.A"].shape == (2, 8)
        and out["head.weight"] is payload["head.weight"]
    )
    exact, ranks = budget.recompress(payload, rank=None, energy=None)
    torch.testing.assert_close(
        exact["layer0.B"] @ exact["layer0.A"], payload["layer0.B"] @ payload["layer0.A"]
    )


def test_compression_sweep_is_monotone_in_bytes():
    sweep = budget.compression_sweep(
        tasks="split_digits", n_tasks=5, seeds=[0], updates=30, ranks=(1, 4), energies=(0.5, 1.0)
    )
    assert set(sweep["kind"]) == {"exact", "rank", "energy"} and len(sweep) == 5 * 5
    mean = sweep.groupby(["kind", "value"], dropna=False)[["bytes", "accuracy"]].mean()
    assert mean.loc[("rank", 1), "bytes"] < mean.loc[("rank", 4), "bytes"]
    # rank 4 = the LoRA rank: no truncation, the same accuracy as the exact entry
    exact = sweep[sweep["kind"] == "exact"]["accuracy"].to_numpy()
    np.testing.assert_allclose(
        sweep[(sweep["kind"] == "rank") & (sweep["value"] == 4)]["accuracy"], exact
    )
    assert (sweep["bytes"] > sweep["adapter_bytes"]).all()  # the head and key are counted too


def test_eviction_study_separates_retained_from_evicted():
    from nsr_gym.agents import SimilarityRule

    def make_env(capacity, eviction):
        return gym.make(
            nsr_gym.env_id("FiveDomains"),
            backend="analytic",
            capacity=capacity,
            eviction=eviction,
            phase_length=6,
            n_cycles=3,
        )

    rev = budget.eviction_study(make_env, SimilarityRule, [2, 5], ["lru", "reject"], [0, 1])
    assert set(rev["status"]) == {"retained", "evicted", "never stored"}
    assert (rev[rev["capacity"] == 5]["status"] == "retained").all()
    assert not ((rev["eviction"] == "reject") & (rev["status"] == "evicted")).any()
    summary = budget.summarize_eviction(rev)
    retained = summary[summary["status"] == "retained"]["recovery"].mean()
    lost = summary[summary["status"] != "retained"]["recovery"].mean()
    assert retained < lost
    assert isinstance(summary, pd.DataFrame) and "retained_share" in summary


@pytest.mark.slow
def test_budget_cli_smoke(tmp_path):
    out = tmp_path / "budget"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "nsr_gym.cli",
            "budget",
            "--quick",
            "--backend",
            "analytic",
            "--tasks",
            "split_digits",
            "--updates",
            "10",
            "--capacities",
            "2,5",
            "--phase-length",
            "3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    for name in (
        "budget.md",
        "compression_sweep.csv",
        "eviction_summary.csv",
        "vit_b16_entry_bytes.csv",
        "budget.png",
        "manifest.json",
    ):
        assert (out / name).is_file(), name
    assert "0.29 MB" in (out / "budget.md").read_text()
