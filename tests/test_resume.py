"""``nsr-gym run`` resumes after an interruption and writes byte-identical result tables.

Two runs in subprocesses are interrupted (SIGINT, SIGKILL) as soon as their first (agent, seed)
unit is on disk, then rerun to completion; their tables must equal an uninterrupted run's, byte
for byte. Unit files that are not complete logs never count as finished.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from nsr_gym.cli import main as cli_main

#: Torch runs in three processes, two of them interrupted: ~20 s on 2 cores.
pytestmark = pytest.mark.slow

# Units long enough (600 steps each) that the watcher's signal lands while later units still run,
# however fast the torch path gets.
ARGS = ["run", "--backend", "torch", "--cycles", "4", "--agents", "oracle,keep-current",
        "--seeds", "3", "--no-progress"]
N_UNITS = 6
TABLES = ("leaderboard.csv", "runs.csv", "phases.csv")


def _units(out: Path) -> list[Path]:
    return sorted(out.glob(".units/*/*.csv"))


def _interrupt_after_first_unit(proc: subprocess.Popen, out: Path, sig: int, sent: list) -> None:
    deadline = time.monotonic() + 280
    while proc.poll() is None and time.monotonic() < deadline:
        if _units(out):
            proc.send_signal(sig)
            sent.append(sig)
            return
        time.sleep(0.01)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> dict:
    """Two runs in subprocesses, each interrupted by a watcher thread after its first unit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = tmp_path_factory.mktemp("interrupted")
    runs = {}
    for sig in (signal.SIGINT, signal.SIGKILL):
        out = root / sig.name
        # A job started in the background (nohup, CI runners) inherits SIGINT as ignored, and
        # Python then installs no KeyboardInterrupt handler: restore the default in the child.
        proc = subprocess.Popen([sys.executable, "-m", "nsr_gym.cli", *ARGS, "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        sent: list = []
        watcher = threading.Thread(target=_interrupt_after_first_unit, args=(proc, out, sig, sent))
        watcher.start()
        runs[sig] = (proc, out, watcher, sent)
    return runs


@pytest.fixture(scope="module")
def reference(interrupted, tmp_path_factory) -> Path:
    """The uninterrupted run, in this process while the subprocesses start up."""
    out = tmp_path_factory.mktemp("resume") / "reference"
    assert cli_main([*ARGS, "--out", str(out)]) == 0
    return out


def test_interrupted_runs_resume_to_byte_identical_tables(interrupted, reference, capsys):
    for sig, (proc, out, watcher, sent) in interrupted.items():
        watcher.join()
        _, err = proc.communicate(timeout=300)
        assert sent == [sig], f"{sig.name}: the run ended before it could be interrupted"
        assert proc.returncode != 0, err.decode()
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
        else:
            assert proc.returncode == 130 and b"run the same command again to resume" in err
        done = _units(out)
        assert 1 <= len(done) < N_UNITS and not (out / "leaderboard.csv").exists()
        assert cli_main([*ARGS, "--out", str(out)]) == 0  # the same command resumes
        assert len(_units(out)) == N_UNITS
        for name in TABLES:
            assert (out / name).read_bytes() == (reference / name).read_bytes(), (sig.name, name)
    capsys.readouterr()


def test_partial_unit_files_never_count_as_complete(reference, tmp_path, capsys):
    out = tmp_path / "partial"
    shutil.copytree(reference, out)
    for name in TABLES:
        (out / name).unlink()
    units = _units(out)
    complete = {p: p.read_bytes() for p in units}
    lines = units[0].read_text().splitlines(keepends=True)
    units[0].write_text("".join(lines[: len(lines) // 2]))  # cut short, as by a crash
    units[1].write_bytes(complete[units[3]])  # another unit's rows under this unit's name
    units[2].write_bytes(b"\x00\xff garbage")
    (units[3].parent / f".{units[3].name}.123.tmp").write_text("agent,seed\n")  # a stray temp
    assert cli_main([*ARGS, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("is not a complete unit log") == 3
    for p, data in complete.items():
        assert p.read_bytes() == data  # recomputed, identical to the complete file
    for name in TABLES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert pd.read_csv(out / "leaderboard.csv")["seeds"].tolist() == [3, 3]
