"""The public names: declared once, importable, and every documented one there."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import loopwatch

ROOT = Path(__file__).resolve().parent.parent
INIT = ROOT / "loopwatch" / "__init__.py"


def type_checking_names() -> set[str]:
    """The names ``loopwatch/__init__.py`` imports for type checkers."""
    tree = ast.parse(INIT.read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )  # fmt: skip
    return {
        alias.asname or alias.name
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_every_name_in_all_is_importable_and_the_type_checkers_see_the_same() -> None:
    public = set(loopwatch.__all__) - {"__version__"}
    assert type_checking_names() == public
    for name in public:
        assert getattr(loopwatch, name) is not None, name
    assert isinstance(loopwatch.__version__, str)


def test_a_typo_in_the_table_is_caught(tmp_path: Path) -> None:
    """A misspelt name fails at first use, naming it; the check above catches it first."""
    broken = tmp_path / "loopwatch"
    broken.mkdir()
    text = INIT.read_text().replace('"Offload", "run_sync"', '"Offlaod", "run_sync"')
    assert text != INIT.read_text()
    (broken / "__init__.py").write_text(text)
    probe = (
        "import sys, loopwatch; "
        f"loopwatch.__path__.append({str(INIT.parent)!r}); "
        "print(sorted(set(loopwatch.__all__) - {'__version__'})); loopwatch.Offlaod"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "Offlaod" in done.stderr  # AttributeError: module 'loopwatch.offload' has no ...
    assert "'Offlaod'" in done.stdout  # and __all__ carries it: the test above would fail


def test_every_name_the_docs_use_is_there() -> None:
    documented = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        # Classes, and functions as they are called: not file names or span attributes.
        text = doc.read_text()
        documented |= set(re.findall(r"\bloopwatch\.([A-Z]\w*|[a-z_]\w*(?=\())", text))
    submodules = {p.stem for p in (ROOT / "loopwatch").iterdir() if p.suffix == ".py" or p.is_dir()}
    missing = sorted(
        name for name in documented - submodules
        if not name.startswith("_") and not hasattr(loopwatch, name)
    )  # fmt: skip
    assert not missing, f"documented as loopwatch.<name> but not public: {missing}"


def test_the_plumbing_is_not_public() -> None:
    for name in ("STRATEGIES", "build_strategy", "WatchMetrics", "Occupant", "StrategySettings"):
        assert name not in loopwatch.__all__
