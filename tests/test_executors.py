"""Executors: local and Ray give the same results for the same units and seeds."""

from __future__ import annotations

import functools

import gymnasium as gym
import pandas as pd
import pytest

from nsr_gym.cli import main as nsr_gym_main
from nsr_gym.executors import (
    FrameStore,
    JsonStore,
    LocalExecutor,
    Unit,
    make_executor,
    run_units,
    run_units_kept,
)
from nsr_gym.studies.benchmark import rollout_unit

#: A small sweep whose logs depend on the seed: a seeded recurring stream, a noisy evaluation,
#: a policy with its own random draws, and a torch unit (threads differ between processes).
ANALYTIC = {"env_id": "nsr_gym/RecurringSplitDigits-v0",
            "env_kwargs": {"backend": "analytic", "phase_length": 3, "n_cycles": 2,
                           "learner": {"eval_samples": 50}}}
TORCH = {"env_id": "nsr_gym/CyclicSplitDigits-v0",
         "env_kwargs": {"backend": "torch", "phase_length": 3, "n_cycles": 1}}
UNITS = [Unit(a, s, ANALYTIC) for a in ("similarity", "random-slot") for s in (0, 1)]
UNITS += [Unit("random-slot", s, TORCH) for s in (0, 1)]


def _square(unit):
    return unit.seed ** 2


def test_local_executor_keeps_order_and_reports_each_unit():
    done = []
    units = [Unit("a", s) for s in (3, 1, 2)]
    assert LocalExecutor().map(_square, units, on_done=lambda u, r: done.append((u.seed, r)),
                               progress=False) == [9, 1, 4]
    assert done == [(3, 9), (1, 1), (2, 4)]


def test_run_units_reuses_finished_units():
    ran = []
    units = [Unit("a", s) for s in range(4)]
    out = run_units(LocalExecutor(), _square, units, skip=lambda u: -1 if u.seed % 2 else None,
                    on_done=lambda u, r: ran.append(u.seed), progress=False)
    assert out == [0, -1, 4, -1] and ran == [0, 2]


def test_unit_keys_are_stable_and_distinct():
    assert Unit("a", 0, {"x": 1, "y": 2}).key == Unit("a", 0, {"y": 2, "x": 1}).key
    assert len({u.key for u in UNITS}) == len(UNITS)


def test_run_units_kept_resumes_from_its_store(tmp_path):
    units = [Unit("a", s) for s in range(3)]
    first, resumed = run_units_kept(LocalExecutor(), _square, units, tmp_path, progress=False)
    assert first == [0, 1, 4] and resumed == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{u.key}.json" for u in units)
    again, resumed = run_units_kept(LocalExecutor(), lambda u: -1, units, JsonStore(tmp_path),
                                    progress=False)
    assert again == [0, 1, 4] and resumed == 3
    fresh, resumed = run_units_kept(LocalExecutor(), lambda u: -1, units, tmp_path, resume=False,
                                    progress=False)
    assert fresh == [-1, -1, -1] and resumed == 0


def test_frame_store_keeps_floats_exactly_and_recomputes_bad_files(tmp_path, capsys):
    def check(frame, unit):
        return None if len(frame) == 3 else f"{len(frame)} of 3 rows"

    store = FrameStore(tmp_path, name=lambda u: f"{u.agent}__seed{u.seed}", check=check)
    unit = Unit("a", 0)
    frame = pd.DataFrame({"x": [0.1 + 0.2, 1 / 3, 2.0 ** -40], "n": [1, 2, 3]})
    store.save(unit, frame)
    assert store.path(unit) == tmp_path / "a__seed0.csv"
    pd.testing.assert_frame_equal(store.load(unit), frame, check_exact=True)
    assert store.load(Unit("a", 1)) is None  # never written
    store.save(unit, frame.iloc[:2])
    assert store.load(unit) is None and "2 of 3 rows" in capsys.readouterr().err
    store.path(unit).write_bytes(b"\x00\xff garbage")
    assert store.load(unit) is None and "is not a complete unit log" in capsys.readouterr().err


def test_make_executor_errors():
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("dask")
    with pytest.raises(ValueError, match="address"):
        make_executor("local", address="auto")


# ----------------------------------------------------------------------------- Ray (slow: a Ray
# instance takes seconds to start; skipped without Ray, the tests above run either way)


@pytest.fixture(scope="module")
def ray_executor():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'nsr-gym[ray]'); the "
                                      "Ray executor tests need it")
    with make_executor("ray", num_cpus=2) as executor:
        yield executor


@pytest.mark.slow
def test_ray_matches_local_and_evaluate(ray_executor):
    from nsr_gym.agents import RULE_AGENTS, evaluate

    remote = ray_executor.map(rollout_unit, UNITS, progress=False)
    local = LocalExecutor().map(rollout_unit, UNITS, progress=False)
    for r, loc in zip(remote, local, strict=True):
        pd.testing.assert_frame_equal(r, loc, check_exact=True)
    # ...and the one-env-reused loop that `nsr-gym run --executor local` runs.
    agents = {a: RULE_AGENTS[a] for a in ("similarity", "random-slot")}
    ref = evaluate(lambda: gym.make(ANALYTIC["env_id"], **ANALYTIC["env_kwargs"]), agents, [0, 1],
                   progress=False)
    pd.testing.assert_frame_equal(pd.concat(remote[:4], ignore_index=True), ref, check_exact=True)


@pytest.mark.slow
def test_ray_runs_partials_and_reports_in_unit_order(ray_executor):
    from nsr_gym.agents import RULE_AGENTS
    from nsr_gym.studies import scaling

    fn = functools.partial(scaling.env_unit, policies=RULE_AGENTS)
    units = [Unit("oracle", s, {**ANALYTIC, "tags": {"seed_tag": s}}) for s in (2, 0, 1)]
    seen = []
    rows = ray_executor.map(fn, units, on_done=lambda u, r: seen.append(u.seed), progress=False)
    assert [r[0]["seed_tag"] for r in rows] == [2, 0, 1] and sorted(seen) == [0, 1, 2]
    local = LocalExecutor().map(fn, units, progress=False)
    strip = lambda rows: [{k: v for k, v in r[0].items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(rows) == strip(local)


@pytest.mark.slow
def test_run_cli_ray_gives_the_same_tables(tmp_path, ray_executor, capsys):
    # In process, so `nsr-gym run --executor ray` joins the fixture's Ray instance instead of
    # starting another (tests/test_cli.py runs the command itself in a subprocess).
    def run(executor: str) -> dict[str, str]:
        out = tmp_path / executor
        assert nsr_gym_main(["run", "--benchmark", "RecurringSplitDigits", "--backend", "analytic",
                             "--cycles", "2", "--seeds", "2", "--agents",
                             "similarity,random-slot,oracle", "--no-progress", "--executor",
                             executor, "--out", str(out)]) == 0
        return {f: (out / f).read_text() for f in ("leaderboard.csv", "runs.csv", "phases.csv")}

    import ray

    assert run("ray") == run("local")
    assert ray.is_initialized()  # the command left the instance it did not start running


@pytest.mark.slow
def test_regret_cli_ray_gives_the_same_tables(tmp_path, ray_executor):
    def run(executor: str) -> dict[str, str]:
        out = tmp_path / f"regret-{executor}"
        nsr_gym_main(["regret", "--quick", "--seeds", "3", "--no-progress", "--executor",
                      executor, "--out", str(out), "--resamples", "200"])
        return {f.name: f.read_text() for f in sorted(out.glob("*.csv"))}

    local, remote = run("local"), run("ray")
    assert local and remote == local


def test_a_units_key_follows_its_registration(monkeypatch):
    import gymnasium as gym

    import nsr_gym  # noqa: F401 - registers the ids

    eid = "nsr_gym/CyclicSplitDigits-v0"
    before = Unit("similarity", 0, {"env_id": eid}).key
    monkeypatch.setitem(gym.registry[eid].kwargs, "phase_length", 7)
    assert Unit("similarity", 0, {"env_id": eid}).key != before
    assert Unit("a", 0, {"env_id": "not/registered"}).key  # a plain setting still hashes
