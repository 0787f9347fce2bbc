"""No code path may unpickle (or otherwise execute) data a user could hand us.

The package is scanned as syntax trees: pickle-family imports, ``torch.load`` without
``weights_only=True``, ``numpy.load(allow_pickle=True)``, ``yaml.load``, ``eval``/``exec``
and ``trust_remote_code=True`` are refused wherever they appear. The scanner is itself checked
on snippets that must be flagged, so the test can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "langchain_deltamem"
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_uses(source: str) -> list[str]:
    """Human-readable findings for one module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "") in UNSAFE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in ("eval", "exec"):
                found.append(f"{name}() at line {node.lineno}")
            elif name.endswith("torch.load"):
                if not _is_true(_keyword(node, "weights_only")):
                    found.append(f"torch.load without weights_only=True at line {node.lineno}")
            elif name in ("np.load", "numpy.load") and _is_true(_keyword(node, "allow_pickle")):
                found.append(f"numpy.load(allow_pickle=True) at line {node.lineno}")
            elif name == "yaml.load":
                found.append(f"yaml.load at line {node.lineno}")
            if _is_true(_keyword(node, "trust_remote_code")):
                found.append(f"trust_remote_code=True at line {node.lineno}")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\n",
        "from dill import loads\n",
        "import torch\ntorch.load('x')\n",
        "import torch\ntorch.load('x', weights_only=False)\n",
        "import numpy as np\nnp.load('x', allow_pickle=True)\n",
        "import yaml\nyaml.load(s)\n",
        "eval('1')\n",
        "m.from_pretrained('x', trust_remote_code=True)\n",
    ],
)
def test_the_scanner_flags_unsafe_code(snippet: str) -> None:
    assert unsafe_uses(snippet)


def test_the_scanner_accepts_safe_loading() -> None:
    assert not unsafe_uses("import torch\ntorch.load('x', map_location='cpu', weights_only=True)\n")


def test_the_package_never_unpickles() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    findings = {
        str(path.relative_to(PACKAGE)): uses
        for path in files
        if (uses := unsafe_uses(path.read_text(encoding="utf-8")))
    }
    assert findings == {}
