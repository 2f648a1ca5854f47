"""No file the project writes is unpickled: the project's code never calls a pickle-based loader.

An AST scan (comments and docstrings do not count; import aliases are resolved) of ``nsr_gym/``,
``agents/`` and ``theory/`` for: ``pickle``/``dill``/``cloudpickle``/``joblib``/``marshal`` loads,
subclasses of their ``Unpickler``, ``shelve.open``, ``pandas.read_pickle``, ``torch.load``
without ``weights_only=True``, ``numpy.load`` with ``allow_pickle`` not ``False``, ``yaml.load``
without a safe loader, and ``load`` on SB3 / sb3-contrib algorithm classes (their zip format
unpickles with cloudpickle).

The one exception is :data:`ALLOWED_UNPICKLERS`: CIFAR's official batches are pickles, read
through ``nsr_gym/paper_data.py``'s ``_ArrayUnpickler``, whose ``find_class`` resolves numpy's
array rebuilders and nothing else. Trained SB3 policies load from safetensors only: ``agents/``
has no ``torch.load`` at all, not even with ``weights_only=True``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("nsr_gym", "agents", "theory")

#: Loaders that unpickle whatever they are given.
ALWAYS = {f"{m}.{f}" for m in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle")
          for f in ("load", "loads", "Unpickler")} | {
    "joblib.load", "marshal.load", "marshal.loads", "shelve.open", "pandas.read_pickle",
    "yaml.unsafe_load", "yaml.full_load", "torch.hub.load_state_dict_from_url",
    "stable_baselines3.common.save_util.load_from_zip_file"}
#: Packages whose algorithm classes have a pickle-based ``.load``.
SB3_PACKAGES = ("stable_baselines3", "sb3_contrib")
#: ``Unpickler`` classes a subclass may not extend (unless allowed below).
UNPICKLERS = {f"{m}.Unpickler" for m in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle")}
#: (file, class) of the one restricted unpickler allowed: it must override ``find_class``.
ALLOWED_UNPICKLERS = {("nsr_gym/paper_data.py", "_ArrayUnpickler")}


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name it stands for, from every import in the module."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    out[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    name = ".".join(reversed(parts))
    return {"np": "numpy", "pd": "pandas", "th": "torch"}.get(name, name) if "." not in name \
        else name


def _unpickler_subclass(node: ast.ClassDef, aliases: dict[str, str], filename: str) -> list[str]:
    """A hit for a class extending an ``Unpickler``, unless it is the allowed restricted one
    (which must define ``find_class``)."""
    bases = [_dotted(b, aliases) for b in node.bases]
    if not any(b in UNPICKLERS for b in bases):
        return []
    restricted = any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body)
    if (filename, node.name) in ALLOWED_UNPICKLERS and restricted:
        return []
    return [f"{filename}:{node.lineno}: class {node.name}({', '.join(map(str, bases))})"]


def _import_of_load(node: ast.ImportFrom, filename: str) -> list[str]:
    """A hit for ``from pickle import load`` (or loads, Unpickler) and its kin."""
    if node.module and node.module.split(".")[0] in ("pickle", "_pickle", "dill", "cloudpickle") \
            and any(a.name in ("load", "loads", "Unpickler") for a in node.names):
        return [f"{filename}:{node.lineno}: from {node.module} import load"]
    return []


def pickle_loads(source: str, filename: str = "<source>") -> list[str]:
    """``file:line: call`` for every pickle-based load in ``source``."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.ImportFrom)):
            found += _unpickler_subclass(node, aliases, filename) \
                if isinstance(node, ast.ClassDef) else _import_of_load(node, filename)
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        head, _, last = name.rpartition(".")
        head = {"np": "numpy", "pd": "pandas"}.get(head, head)
        full = f"{head}.{last}" if head else last
        bad = full in ALWAYS
        if full in ("torch.load", "torch.serialization.load"):
            bad = not _is_true(_kw(node, "weights_only"))
        elif full == "numpy.load":
            allow = _kw(node, "allow_pickle")
            is_false = isinstance(allow, ast.Constant) and allow.value is False
            bad = allow is not None and not is_false
        elif full == "yaml.load":
            loader = _dotted(_kw(node, "Loader"), aliases) if _kw(node, "Loader") else None
            bad = loader is None or "Safe" not in loader
        elif last == "load" and head.split(".")[0] in SB3_PACKAGES:
            bad = True
        if bad:
            found.append(f"{filename}:{node.lineno}: {full}")
    return found


# ----------------------------------------------------------------------------- the scanner works

BAD = [
    "import pickle\npickle.load(open('f', 'rb'))",
    "import pickle as pk\nx = pk.loads(b'')",
    "from pickle import loads\nloads(b'')",
    "import torch\ntorch.load('f')",
    "import torch\ntorch.load('f', weights_only=False)",
    "import torch as th\nth.load('f', map_location='cpu')",
    "from torch import load\nload('f')",
    "import numpy as np\nnp.load('f', allow_pickle=True)",
    "import numpy\nnumpy.load('f', allow_pickle=flag)",
    "import joblib\njoblib.load('f')",
    "import pandas as pd\npd.read_pickle('f')",
    "import yaml\nyaml.load(open('f'))",
    "import yaml\nyaml.unsafe_load(open('f'))",
    "from stable_baselines3 import PPO\nPPO.load('model.zip')",
    "from sb3_contrib import MaskablePPO as M\nM.load('model.zip', env=None)",
    "import cloudpickle\ncloudpickle.loads(b'')",
    "import shelve\nshelve.open('db')",
    "import pickle\nclass U(pickle.Unpickler):\n    pass",
    "from pickle import Unpickler as Base\nclass U(Base):\n    def find_class(self, m, n):\n"
    "        return None",
    "import _pickle\nclass U(_pickle.Unpickler):\n    pass",
]
GOOD = [
    "import torch\ntorch.load('f', weights_only=True, map_location='cpu')",
    "import numpy as np\nnp.load('f')\nnp.load('g', allow_pickle=False)",
    "import json\njson.loads('{}')",
    "import yaml\nyaml.safe_load('a: 1')\nyaml.load('a', Loader=yaml.SafeLoader)",
    "from safetensors.torch import load_file\nload_file('f')",
    "'''pickle.load(f) in a docstring'''\n# torch.load(f) in a comment",
    "import pickle\npickle.dumps(1)",
]


@pytest.mark.parametrize("source", BAD)
def test_scanner_finds_pickle_loads(source):
    assert pickle_loads(source), source


@pytest.mark.parametrize("source", GOOD)
def test_scanner_passes_safe_loads(source):
    assert pickle_loads(source) == [], source


# ----------------------------------------------------------------------------- the project


def test_only_the_allowed_restricted_unpickler_passes():
    source = "import pickle\nclass _ArrayUnpickler(pickle.Unpickler):\n" \
             "    def find_class(self, module, name):\n        raise ValueError(name)\n"
    assert pickle_loads(source, "nsr_gym/paper_data.py") == []
    assert pickle_loads(source, "nsr_gym/other.py")  # the same class anywhere else is a hit
    unrestricted = "import pickle\nclass _ArrayUnpickler(pickle.Unpickler):\n    pass\n"
    assert pickle_loads(unrestricted, "nsr_gym/paper_data.py")


def test_agents_never_torch_load():
    """SB3 policies load from safetensors only: no torch.load in agents/, weights_only or not."""
    files = sorted((ROOT / "agents").rglob("*.py"))
    hits = []
    for p in files:
        tree = ast.parse(p.read_text(encoding="utf-8"))
        aliases = _aliases(tree)
        hits += [f"{p.name}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and _dotted(n.func, aliases) in ("torch.load", "torch.serialization.load")]
    assert files and hits == [], hits


def test_project_code_has_no_pickle_loads():
    files = sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 20  # the scan really looked at the project
    found = [hit for p in files
             for hit in pickle_loads(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert found == [], "pickle-based loads of user files:\n" + "\n".join(found)
