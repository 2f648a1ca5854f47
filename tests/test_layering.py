"""The import floors (DESIGN.md, Layout) and the install names of agents/ and theory/.

Floors, bottom to top: the library core (``nsr_gym`` outside ``agents``, ``theory``, ``studies``
and ``cli``); then ``nsr_gym.agents`` and ``nsr_gym.theory``, which use the core but not each
other; then ``nsr_gym.studies``; then ``nsr_gym.cli``, which nothing imports. Every import
statement counts, including those inside functions.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Folder on disk -> the package it installs as.
PACKAGE_DIRS = {"nsr_gym": ROOT / "nsr_gym", "nsr_gym.agents": ROOT / "agents",
                "nsr_gym.theory": ROOT / "theory"}
UPPER = ("nsr_gym.agents", "nsr_gym.theory", "nsr_gym.studies", "nsr_gym.cli")


def _module_name(path: Path) -> str:
    for package, folder in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[0])):
        if folder in path.parents:
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            return ".".join([package, *parts])
    raise ValueError(path)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodule imports
    return found


def _sources() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p)
            for folder in PACKAGE_DIRS.values() for p in sorted(folder.rglob("*.py"))}


def _floor(module: str) -> str:
    for upper in UPPER:
        if module == upper or module.startswith(upper + "."):
            return upper
    return "core"


def _reaches(imported: str, target: str) -> bool:
    return imported == target or imported.startswith(target + ".")


#: floor -> floors it must not import.
FORBIDDEN = {
    "core": UPPER,
    "nsr_gym.agents": ("nsr_gym.theory", "nsr_gym.studies", "nsr_gym.cli"),
    "nsr_gym.theory": ("nsr_gym.agents", "nsr_gym.studies", "nsr_gym.cli"),
    "nsr_gym.studies": ("nsr_gym.cli",),
    "nsr_gym.cli": (),
}


def test_every_module_is_seen() -> None:
    modules = _sources()
    assert {"nsr_gym", "nsr_gym.agents", "nsr_gym.theory", "nsr_gym.bank", "nsr_gym.cli",
            "nsr_gym.studies"} <= set(modules)
    assert {_floor(m) for m in modules} == set(FORBIDDEN)


def test_imports_point_down() -> None:
    problems = []
    for module, imported in _sources().items():
        floor = _floor(module)
        for name in sorted(imported):
            for banned in FORBIDDEN[floor]:
                if _reaches(name, banned):
                    problems.append(f"{module} ({floor}) imports {name}")
            if name.split(".")[0] in ("agents", "theory"):
                problems.append(f"{module} imports the top-level {name}: use nsr_gym.{name}")
    assert not problems, "\n".join(problems)


def test_nothing_imports_the_cli() -> None:
    users = sorted(m for m, imported in _sources().items() if _floor(m) != "nsr_gym.cli"
                   and any(_reaches(n, "nsr_gym.cli") for n in imported))
    assert users == []


def test_tests_use_the_installed_names() -> None:
    bad = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("agents", "theory")]
    assert bad == []


def test_a_foreign_top_level_agents_package_does_not_collide(tmp_path: Path) -> None:
    """openai-agents installs an importable ``agents``; ours lives at ``nsr_gym.agents``."""
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "__init__.py").write_text("FOREIGN = True\n")
    (tmp_path / "theory").mkdir()
    (tmp_path / "theory" / "__init__.py").write_text("FOREIGN = True\n")
    code = ("import agents, theory, nsr_gym.agents as ours, nsr_gym.theory as th; "
            "assert agents.FOREIGN and theory.FOREIGN; "
            "assert hasattr(ours, 'SimilarityRule') and hasattr(th, 'CyclicSetting'); "
            "print(ours.__name__, th.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(tmp_path),
                                                      "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["nsr_gym.agents", "nsr_gym.theory"]


@pytest.mark.slow
def test_the_wheel_installs_agents_and_theory_under_nsr_gym(tmp_path: Path) -> None:
    # Build from a copy of the sources: setuptools leaves a build/ folder beside what it builds.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "results", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("nsr_gym-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"nsr_gym"}
    for must in ("nsr_gym/agents/__init__.py", "nsr_gym/theory/__init__.py",
                 "nsr_gym/agents/hyperparams/ppo.yml", "nsr_gym/theory/THEORY.md",
                 "nsr_gym/bank/__init__.py", "nsr_gym/studies/__init__.py"):
        assert must in names
