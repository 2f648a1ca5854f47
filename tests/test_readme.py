"""The README's claims stay true: its example runs and its tables come from results/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ten_line_example_runs(capsys):
    block = re.search(r"## Ten lines of Python\n\n```python\n(.*?)```", README, re.S).group(1)
    assert len(block.strip().splitlines()) <= 12
    exec(compile(block, "README-example", "exec"), {})
    assert "return" in capsys.readouterr().out


@pytest.mark.parametrize("source", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "results").rglob("*.md")))
def test_readme_tables_are_copied_from_results(source):
    """Every table row of a results file quoted in the README matches that file exactly."""
    text = (ROOT / source).read_text()
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    quoted = [row for row in table_rows[1:] if row.split("|")[1].strip() and row in README]
    if not quoted:
        pytest.skip(f"{source} is not quoted in the README")
    for row in table_rows:
        assert row in README, f"README is out of date with {source}: missing {row!r}"


def test_readme_numbers_have_a_source():
    """Every table row in the README appears in some results file (no typed-in numbers)."""
    sources = "\n".join(p.read_text() for p in (ROOT / "results").rglob("*.md"))
    for line in README.splitlines():
        if line.startswith("| ") and re.search(r"\d\.\d{3}", line):
            assert line in sources, f"README row without a results/ source: {line!r}"
