"""``nsr-gym peers`` (nsr_gym.studies.peers): strategy specs, the table, and a tiny real run
through Avalanche (skipped without it: Avalanche is the optional ``peers`` extra)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from nsr_gym.executors import Unit
from nsr_gym.studies import peers


def test_strategy_specs():
    assert peers.parse_strategy("naive") == ("naive", {})
    assert peers.parse_strategy("ewc:lambda=10") == ("ewc", {"lambda": 10.0})
    assert peers.parse_strategy("lwf:alpha=0.5") == ("lwf", {"alpha": 0.5, "temperature": 2.0})
    for bad, match in (("gem", "unknown peer"), ("ewc:alpha=1", "takes"),
                       ("replay:mem=x", "number")):
        with pytest.raises(ValueError, match=match):
            peers.parse_strategy(bad)
    for spec in peers.DEFAULT_STRATEGIES:
        peers.parse_strategy(spec)


def test_cli_defaults_match_the_study():
    from nsr_gym.cli.peers import DEFAULT_STRATEGIES, _names

    assert DEFAULT_STRATEGIES == peers.DEFAULT_STRATEGIES
    assert _names(",".join(DEFAULT_STRATEGIES)) == DEFAULT_STRATEGIES
    assert _names("lwf:alpha=1,temperature=2,naive") == ("lwf:alpha=1,temperature=2", "naive")


def test_rows_and_table_from_unit_results():
    R = [[0.9, None], [0.7, 0.8]]  # a multi-head peer has no head for task 1 before phase 1
    units = [Unit("naive", s, {"benchmark": "B"}) for s in (0, 1)]
    results = [{"R": R, "trained": [0, 1], "serve": "per task", "updates": [30, 30],
                "stored_mb": float("nan")}] * 2
    runs, cells = peers.run_rows(units, results)
    assert runs["acc"].tolist() == pytest.approx([0.75, 0.75])
    assert runs["bwt"].tolist() == pytest.approx([-0.2, -0.2])
    assert runs["aia"].tolist() == pytest.approx([(0.9 + 0.75) / 2] * 2)
    assert len(cells) == 8 and cells["accuracy"].isna().sum() == 2
    table = peers.peers_table(runs)
    assert table.loc[0, "seeds"] == 2 and table.loc[0, "keeps"] == "nothing"


def test_unknown_names_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown peer"):
        peers.run_peers(peers.PeersConfig(strategies=("gem",), out=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown benchmark"):
        peers.run_peers(peers.PeersConfig(benchmarks=("Nope",), out=str(tmp_path)))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_peers_command_on_a_tiny_budget(tmp_path, capsys):
    pytest.importorskip("avalanche")
    from nsr_gym.cli import main

    out = tmp_path / "peers"
    assert main(["peers", "--benchmarks", "CyclicSplitMNIST1D", "--seeds", "2",
                 "--updates", "3", "--strategies", "naive,naive-shared-head,ewc:lambda=10,"
                 "lwf,replay:mem=16", "--nsr-agents", "similarity,keep-current",
                 "--out", str(out), "--no-progress"]) == 0
    assert "## Findings" in capsys.readouterr().out
    table = pd.read_csv(out / "peers.csv")
    assert len(table) == 7 and (table["seeds"] == 2).all()
    assert (table["updates_per_task"] == 3).all()  # every method: the same updates per task
    runs = pd.read_csv(out / "peers_runs.csv")
    assert np.isfinite(runs["acc"]).all() and np.isfinite(runs["bwt"]).all()
    sim = runs[runs["method"] == "nsr:similarity"]
    assert (sim["bwt"] == 0).all()  # one pass, an entry per task: never overwritten
    replay = table[table["method"] == "replay:mem=16"]
    assert replay["stored_mb"].iloc[0] == pytest.approx(16 * 40 * 4 / 1e6)
    assert (out / "manifest.json").is_file() and (out / "peers_matrices.csv").is_file()


def test_avalanche_is_imported_only_by_the_peers_unit():
    if importlib.util.find_spec("avalanche") is None:
        pytest.skip("avalanche not installed: nothing to check")
    import subprocess
    import sys

    code = ("import sys, nsr_gym, nsr_gym.cli, nsr_gym.studies.peers, nsr_gym.studies.benchmark;"
            "nsr_gym.cli.build_parser(); print('avalanche' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
