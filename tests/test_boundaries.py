"""The process boundary, checked on every module rather than on a hand-kept list.

Main process (the CLI, the loop, the store, the architects, the reports): never imports
torch, so ``lemo-nade show``/``report``/``doctor`` start in a fraction of a second and a
broken torch install cannot stop them. Child side (``engine/``): imports torch, and
nothing of the main process, so a sandboxed candidate does not carry the store, the fork
server or the architects (and their secrets) into its address space.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import lemo_nade

PACKAGE = Path(lemo_nade.__file__).parent
MODULES = sorted(
    ["lemo_nade", *(m.name for m in pkgutil.walk_packages(lemo_nade.__path__, "lemo_nade."))]
)

# Torch-side by design: the child that builds, trains and measures candidates...
TORCH_SIDE = ("lemo_nade.engine",)
# ...except the engine modules the run process imports too (the request format, the
# confinement constants and probe, and the energy sensors `doctor` reads), which must
# stay as light as the rest of the main process.
SHARED_ENGINE = tuple(
    f"lemo_nade.engine.{m}"
    for m in ("protocol", "confine", "access", "proctree", "linux", "energy", "sensors")
)
# Heavy imports a module may make by design, and why:
ALLOWED = {
    "lemo_nade.reporting.plots": {"matplotlib"},  # draws the report's figures; torch-free
}
HEAVY = ("torch", "matplotlib")  # what a pure module must not pull in

# The main-process side, which the child must not import.
MAIN_SIDE = (
    "sandbox",
    "store",
    "search",
    "runs",
    "cli",
    "reporting",
    "sweeps",
    "results",
    "architects",
)


def _pure(name: str) -> bool:
    if name in SHARED_ENGINE:
        return True
    return not any(name == side or name.startswith(side + ".") for side in TORCH_SIDE)


_BLOCKER = """
import importlib, json, sys
blocked = set()
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError("heavy import of " + name)
sys.meta_path.insert(0, Block())
found = {}
for module, allowed in json.loads(sys.argv[1]):
    blocked.clear()
    blocked.update(set(%r) - set(allowed))
    try:
        importlib.import_module(module)
        found[module] = None
    except ImportError as exc:
        found[module] = str(exc)
print(json.dumps(found))
"""


def _heavy_imports(modules: list[str]) -> dict[str, str | None]:
    """For each module, imported in order in ONE fresh interpreter where importing torch
    or matplotlib raises: None, or the error naming the heavy import it attempted.

    One interpreter for all (a fresh one per module took a minute on 2 cores): a module
    that was imported as another's dependency was already checked then, since the block
    is in place from the start. Modules allowed a heavy import go last, so what they
    load cannot hide another module's import of it."""
    order = sorted(modules, key=lambda m: (m in ALLOWED, m))
    plan = [(m, sorted(ALLOWED.get(m, ()))) for m in order]
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKER % (HEAVY,), json.dumps(plan)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, str | None] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_enumeration_sees_both_sides() -> None:
    assert {"lemo_nade.config", "lemo_nade.cli.doctor", "lemo_nade.engine.worker"} <= set(MODULES)
    assert not _pure("lemo_nade.engine.train") and _pure("lemo_nade.search")
    assert set(SHARED_ENGINE) <= set(MODULES), "a shared engine module is gone"
    assert _pure("lemo_nade.engine.protocol")
    assert set(ALLOWED) <= set(MODULES), "an exemption names a module that is gone"


def test_pure_modules_import_no_torch() -> None:
    pure = [m for m in MODULES if _pure(m)]
    assert len(pure) > 40
    found = _heavy_imports(pure)
    assert set(found) == set(pure)
    assert {m: e for m, e in found.items() if e} == {}


def test_the_torch_check_can_fail() -> None:
    found = _heavy_imports(["lemo_nade.engine.train", "lemo_nade.config"])
    assert "torch" in (found["lemo_nade.engine.train"] or "")
    assert found["lemo_nade.config"] is None


def test_doctor_runs_its_checks_without_torch() -> None:
    """The doctor's own process: architect, sensors, the dataset (read in a child) and the
    torch check (a child) all run, and torch never enters this process."""
    code = (
        "from typer.testing import CliRunner; from lemo_nade.cli import app; "
        "r = CliRunner().invoke(app, ['doctor', '--json']); "
        "assert r.exit_code in (0, 1), r.output; "
        "print(json.dumps([c['check'] for c in json.loads(r.stdout)['checks']]))"
    )
    script = f"import json, sys; {code}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows, torch_loaded = done.stdout.strip().splitlines()[-2:]
    assert {"architect", "torch", "cpu energy", "dataset"} <= set(json.loads(rows))
    assert torch_loaded == "False"


def _lemo_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every lemo_nade module ``path`` imports, at any depth, with
    relative imports resolved against the engine package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = "lemo_nade.engine".rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("lemo_nade.")]


def _main_side(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 1 and parts[1] in MAIN_SIDE


def test_the_engine_imports_nothing_from_the_main_process() -> None:
    engine = sorted((PACKAGE / "engine").rglob("*.py"))
    assert len(engine) > 5
    crossing = [
        f"{path.relative_to(PACKAGE)}:{line} imports {name}"
        for path in engine
        for line, name in _lemo_imports(path)
        if _main_side(name)
    ]
    assert not crossing, "\n".join(crossing)


def test_the_import_scan_sees_every_form(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import lemo_nade.store\nfrom lemo_nade import sandbox\n"
        "def f():\n    from ..search import Search\n"
        "from lemo_nade.engine import train\n"
    )
    names = [name for _, name in _lemo_imports(probe)]
    assert [n for n in names if _main_side(n)] == [
        "lemo_nade.store",
        "lemo_nade.sandbox",
        "lemo_nade.search",
        "lemo_nade.search.Search",
    ]
