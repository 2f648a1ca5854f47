"""The provenance revision names the code: rewriting results/ does not mark it dirty."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from nsr_gym.results import git_revision


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_revision_ignores_results_but_not_code(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table.csv").write_text("a\n1\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    rev = git_revision(tmp_path)
    assert len(rev) == 40
    (tmp_path / "results" / "table.csv").write_text("a\n2\n")  # a regenerated result
    assert git_revision(tmp_path) == rev
    (tmp_path / "code.py").write_text("x = 2\n")  # changed code
    assert git_revision(tmp_path) == rev + "-dirty"
