"""The JSON files the studies and the shipped-weights record read go through the bounded reader
(:func:`nsr_gym.jsonio.read_json`, issue 15): a malformed, over-deep, over-long or mistyped file
is one clear error naming the file, never a raw ``JSONDecodeError``, ``RecursionError`` or
``KeyError``; a well-formed one reads as before."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from nsr_gym import weights
from nsr_gym.agents.train import TrainConfig
from nsr_gym.jsonio import JsonFileError
from nsr_gym.studies import controllers, controllers_report, fit, fit_transfer, scaling_study

#: Malformed JSON files, each of a kind the bounded reader refuses by name.
MALFORMED: dict[str, bytes] = {
    "truncated": b'{"env_kwargs": {"n_tasks": 5',
    "5,000-deep": b"[" * 5000 + b"]" * 5000,
    "5,000-digit int": b'{"wall_time_s": ' + b"9" * 5000 + b"}",
    "top-level list": b"[1, 2]",
    "duplicate key": b'{"settings": 1, "settings": 2}',
    "not UTF-8": b'{"a": "\xff"}',
    "empty": b"",
}
CASES = pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))


def _clear(excinfo: pytest.ExceptionInfo, path: Path) -> None:
    assert str(path) in str(excinfo.value), str(excinfo.value)


# ----------------------------------------------------------------------------- weights


@CASES
def test_weights_record(tmp_path, data):
    path = weights.record_path("net", tmp_path)
    path.write_bytes(data)
    with pytest.raises(weights.WeightsError, match="nsr-gym pretrain") as err:
        weights.read_record("net", tmp_path)
    _clear(err, path)


def test_weights_record_without_a_sha256_is_refused_by_name(tmp_path):
    path = weights.record_path("net", tmp_path)
    path.write_text(json.dumps({"format_version": weights.FORMAT_VERSION}))
    with pytest.raises(weights.WeightsError, match="no sha256 string") as err:
        weights.load_verified("net", tmp_path)  # was a raw KeyError
    _clear(err, path)


def test_shipped_weights_record_still_reads():
    record = weights.read_record("mnist1d_cnn")
    assert record["format_version"] == weights.FORMAT_VERSION and len(record["sha256"]) == 64


# ----------------------------------------------------------------------------- fit


def _wide() -> pd.DataFrame:
    return pd.DataFrame({"agent": ["bank"] * 4, "seed": [0] * 4, "task_id": [0, 1, 0, 1],
                         "length": [6] * 4})


@CASES
def test_fit_setting_manifest(tmp_path, data):
    (tmp_path / "manifest.json").write_bytes(data)
    with pytest.raises(JsonFileError) as err:
        fit.setting_of(tmp_path, _wide(), None)
    _clear(err, tmp_path / "manifest.json")


def test_fit_setting_reads_a_good_manifest_as_before(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"env_kwargs": {"n_tasks": 2, "phase_length": 6, "n_cycles": 2, "lambda_switch": 0.1}}))
    got = fit.setting_of(tmp_path, _wide(), None)
    assert (got["M"], got["L"], got["C"], got["lam"]) == (2, 6, 2, 0.1)


@CASES
@pytest.mark.parametrize("name", ["manifest.json", "verdicts.json"])
def test_fit_transfer_capacity_folder(tmp_path, data, name):
    for other in ("manifest.json", "verdicts.json"):
        (tmp_path / other).write_text("{}")
    (tmp_path / name).write_bytes(data)
    with pytest.raises(JsonFileError) as err:
        fit_transfer._capacity(None, tmp_path)  # the reader runs before the model is used
    _clear(err, tmp_path / name)


# ----------------------------------------------------------------------------- scaling


@CASES
def test_scaling_redraw_manifest(tmp_path, data):
    (tmp_path / "manifest.json").write_bytes(data)
    with pytest.raises(JsonFileError) as err:
        scaling_study.redraw(tmp_path)
    _clear(err, tmp_path / "manifest.json")


def test_scaling_run_refuses_a_malformed_previous_manifest(tmp_path):
    (tmp_path / "manifest.json").write_bytes(MALFORMED["truncated"])
    with pytest.raises(JsonFileError) as err:  # no sections: only the manifest is written
        scaling_study.run_study([], scaling_study.make_plan(quick=True), [0], tmp_path,
                                progress=False)
    _clear(err, tmp_path / "manifest.json")


# ----------------------------------------------------------------------------- controllers


def _trained(tmp_path: Path, config: bytes) -> TrainConfig:
    """A finished-looking training run whose ``config.json`` holds ``config``."""
    tc = TrainConfig(out=str(tmp_path / "run"))
    Path(tc.out).mkdir()
    (Path(tc.out) / "model.zip").write_bytes(b"")
    (Path(tc.out) / "config.json").write_bytes(config)
    return tc


@CASES
def test_controllers_training_config(tmp_path, data):
    tc = _trained(tmp_path, data)
    path = Path(tc.out) / "config.json"
    with pytest.raises(JsonFileError) as err:
        controllers._done(tc)
    _clear(err, path)
    with pytest.raises(JsonFileError) as err:
        controllers.training_wall_times([tc])
    _clear(err, path)


def test_controllers_training_config_reads_as_before(tmp_path):
    from dataclasses import asdict

    tc = TrainConfig(out=str(tmp_path / "run"))
    tc = _trained(tmp_path, json.dumps({"settings": asdict(tc), "wall_time_s": 12.5}).encode())
    assert controllers._done(tc)
    assert controllers.training_wall_times([tc]) == {tc.out: 12.5}


@pytest.mark.parametrize("wall", [None, "12", True, [1]])
def test_controllers_wall_time_that_is_not_a_number_is_named(tmp_path, wall):
    tc = _trained(tmp_path, json.dumps({"wall_time_s": wall}).encode())
    with pytest.raises(JsonFileError, match="wall_time_s") as err:  # was a raw KeyError
        controllers.training_wall_times([tc])
    _clear(err, Path(tc.out) / "config.json")


@CASES
def test_controllers_report_benchmark(tmp_path, data):
    (tmp_path / "benchmark.json").write_bytes(data)
    with pytest.raises(JsonFileError) as err:  # read before anything is trained
        controllers_report.run_study(controllers.StudyConfig(out=str(tmp_path)))
    _clear(err, tmp_path / "benchmark.json")
