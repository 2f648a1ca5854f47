"""CI runs exactly the README's test command (the before-stop hook and DEVELOPERS.md ask for it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Install and run\n\n```bash\n(.*?)```", readme, re.S).group(1)
    (line,) = [ln for ln in block.splitlines() if "pytest" in ln]
    return line.split("#")[0].strip()


def test_ci_runs_the_readme_test_command() -> None:
    command = _readme_test_command()
    assert "pytest" in command and "ruff check" in command
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.startswith("#") and not ln.startswith(("set ", "cd "))]
    assert " && ".join(ci) == command
