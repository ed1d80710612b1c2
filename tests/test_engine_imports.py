"""The process boundary in the imports: the child side (engine/) imports nothing from the
main-process side, and the modules both sides import stay free of torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lemo_nade

PACKAGE = Path(lemo_nade.__file__).parent
ENGINE = PACKAGE / "engine"
# The main-process side: the child must not need (or load) any of it.
MAIN_SIDE = ("sandbox", "store", "search", "cli", "reporting", "sweeps", "results", "architects")
# Engine modules the run process imports, so they must not import torch (energy and
# sensors: `doctor` reads RAPL in the main process).
PURE_ENGINE = ("protocol", "confine", "access", "proctree", "linux", "energy", "sensors")


def _imported(path: Path) -> set[str]:
    """Absolute module names ``path`` imports, at any depth (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _main_side(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "lemo_nade" and len(parts) > 1 and parts[1] in MAIN_SIDE


def test_every_engine_module_is_scanned() -> None:
    modules = {p.stem for p in ENGINE.glob("*.py")}
    assert {"worker", "forkserver", "protocol", "confine", *PURE_ENGINE} <= modules


@pytest.mark.parametrize("module", sorted(p.stem for p in ENGINE.glob("*.py")))
def test_engine_imports_nothing_from_the_main_process_side(module: str) -> None:
    bad = sorted(n for n in _imported(ENGINE / f"{module}.py") if _main_side(n))
    assert bad == [], f"engine/{module}.py imports the main-process side: {bad}"


def test_the_scan_sees_a_main_side_import(tmp_path: Path) -> None:
    """The check itself: every import form it must catch."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import lemo_nade.sandbox\n"
        "from lemo_nade import store\n"
        "def f():\n    from lemo_nade.search import run_search\n"
        "from lemo_nade.engine import confine\n"
    )
    found = sorted(n for n in _imported(sample) if _main_side(n))
    assert found == [
        "lemo_nade.sandbox",
        "lemo_nade.search",
        "lemo_nade.search.run_search",
        "lemo_nade.store",
    ]


@pytest.mark.parametrize("module", PURE_ENGINE)
def test_engine_modules_of_the_boundary_do_not_import_torch(module: str) -> None:
    """Imported in a fresh interpreter: neither torch nor the main-process side loads."""
    code = (
        "import sys\n"
        f"import lemo_nade.engine.{module}\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith("
        f"tuple('lemo_nade.' + s for s in {MAIN_SIDE!r})))\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
