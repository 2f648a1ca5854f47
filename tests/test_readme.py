"""The README's claims stay true: its example runs and its tables come from results/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ten_line_example_runs(capsys):
    block = re.search(r"## Ten lines of Python\n\n```python\n(.*?)```", README, re.S).group(1)
    assert len(block.strip().splitlines()) <= 12
    exec(compile(block, "README-example", "exec"), {})
    assert "return" in capsys.readouterr().out


def _tables(text: str) -> list[list[str]]:
    """Markdown tables of ``text``: runs of consecutive lines starting with ``|`` (the header,
    the ``|---|`` rule and the rows)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_readme_tables_are_copied_from_results():
    """A results table quoted in the README is quoted whole and matches its file exactly."""
    quoted_any = False
    for path in sorted((ROOT / "results").rglob("*.md")):
        for table in _tables(path.read_text()):
            rows = [row for row in table[1:] if not set(row) <= set("|-: ")]  # no |---| rule
            if not any(row in README for row in rows):
                continue
            quoted_any = True
            for row in table:
                assert row in README, f"README is out of date with {path}: missing {row!r}"
    assert quoted_any, "the README quotes no results table"


def test_readme_numbers_have_a_source():
    """Every table row in the README appears in some results file (no typed-in numbers)."""
    sources = "\n".join(p.read_text() for p in (ROOT / "results").rglob("*.md"))
    for line in README.splitlines():
        if line.startswith("| ") and re.search(r"\d\.\d{3}", line):
            assert line in sources, f"README row without a results/ source: {line!r}"


def test_readme_findings_are_quoted_from_results():
    """A README bullet with a three-decimal figure is a sentence copied from a results file."""
    sources = "\n".join(p.read_text() for p in (ROOT / "results").rglob("*.md"))
    bullets = [line for line in README.splitlines()
               if line.startswith("- ") and re.search(r"\d\.\d{3}", line)]
    assert bullets, "the README quotes no findings"
    for line in bullets:
        assert line in sources, f"README finding without a results/ source: {line!r}"
