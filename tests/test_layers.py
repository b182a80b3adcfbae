"""The core knows nothing of Flower (docs/design.md): the same objective trains
centrally and federated, and ``server/`` and ``client/`` are the thin layers that
import flwr. Only ``mmvm/cli/`` (``mmvm run`` drives ``flwr run``) may."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _flwr_imports(path: Path) -> list[int]:
    """Lines of ``path`` that import flwr (anywhere: top level or in a function)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level \
            else []
        if any(n == "flwr" or n.startswith("flwr.") for n in names):
            lines.append(node.lineno)
    return lines


def test_the_library_imports_no_flwr_outside_its_cli():
    found = {str(p.relative_to(ROOT)): lines for p in sorted((ROOT / "mmvm").rglob("*.py"))
             if "cli" not in p.relative_to(ROOT / "mmvm").parts[:1]
             and (lines := _flwr_imports(p))}
    assert found == {}, f"flwr imported in the core: {found}"


def test_the_scan_finds_an_import_in_a_function(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("import os\n\ndef f():\n    from flwr.common import Message\n"
                    "    import flwr.cli as c\n    from .flwr import x\n")
    assert _flwr_imports(code) == [4, 5]  # a relative .flwr is not Flower
