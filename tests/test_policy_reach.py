"""Every public attribute path from an allowed module to a dangerous module or function is
refused: the check behind the tables in ``lemo_nade.sandbox.policy_rules``.

A fresh interpreter imports torch and the allowed modules and walks the public attributes
of modules and torch/stdlib classes three levels deep, listing each path that reaches, say,
``builtins`` (``enum.bltns``), numpy (``torch.nn.functional.np``) or ``torch.load``
(``torch.serialization.load``). A new torch that re-exports one under a new name fails
here, which says which table to extend. (Four levels, and with the ``torch._dynamo`` that
the fork server preloads, found nothing more with torch 2.13, at three times the cost.)
About five seconds, most of it ``import torch``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lemo_nade.sandbox.policy import DEFAULT_POLICY, check

WALK = r"""
import builtins, importlib, json, operator, string, sys, types, typing, warnings
from collections import deque
warnings.filterwarnings("ignore")
import numpy, torch, torch.fx, torch.utils.benchmark

roots, depth = json.loads(sys.argv[1]), int(sys.argv[2])
modules = set(json.loads(sys.argv[3]))
functions = {id(getattr(builtins, n)): "builtins." + n for n in json.loads(sys.argv[4])}
for obj, name in [
    (torch.load, "torch.load"), (torch.save, "torch.save"), (numpy.load, "numpy.load"),
    (numpy.fromfile, "numpy.fromfile"), (typing.get_type_hints, "typing.get_type_hints"),
    (typing.ForwardRef, "typing.ForwardRef"), (operator.attrgetter, "operator.attrgetter"),
    (operator.methodcaller, "operator.methodcaller"), (string.Formatter, "string.Formatter"),
    (torch.fx.GraphModule, "torch.fx.GraphModule"), (torch.from_file, "torch.from_file"),
    (torch.fx.symbolic_trace, "torch.fx.symbolic_trace"),
    (torch.utils.benchmark.Timer, "torch.utils.benchmark.Timer"),
]:
    functions[id(obj)] = name
queue = deque((r, importlib.import_module(r), 0) for r in roots)
seen, found = {id(m) for _, m, _ in queue}, []
while queue:
    path, obj, level = queue.popleft()
    try:
        names = list(vars(obj)) if isinstance(obj, types.ModuleType) else dir(obj)
    except Exception:
        continue
    for name in names:
        if name.startswith("_"):
            continue  # private names: refused by the private rule wherever they are
        try:
            value = getattr(obj, name)
        except Exception:
            continue
        where = f"{path}.{name}"
        if isinstance(value, types.ModuleType) and value.__name__.split(".")[0] in modules:
            found.append([where, value.__name__])
        elif id(value) in functions:
            found.append([where, functions[id(value)]])
        elif level + 1 < depth and id(value) not in seen and (
            isinstance(value, types.ModuleType)
            or isinstance(value, type) and (value.__module__ or "").split(".")[0] in roots
        ):
            seen.add(id(value))
            queue.append((where, value, level + 1))
print(json.dumps(found))
"""

# Modules that give a process files, processes, memory, frames or code objects
DANGEROUS_MODULES = [
    "builtins",
    "sys",
    "os",
    "posix",
    "gc",
    "importlib",
    "subprocess",
    "pickle",
    "_pickle",
    "marshal",
    "ctypes",
    "io",
    "_io",
    "shutil",
    "socket",
    "inspect",
    "types",
    "numpy",
    "runpy",
    "code",
    "codeop",
    "pdb",
    "tempfile",
    "pathlib",
    "multiprocessing",
    "threading",
    "_thread",
    "signal",
    "linecache",
    "traceback",
    "logging",
    "zipfile",
    "tarfile",
    "gzip",
    "string",
    "concurrent",
    "typing_extensions",
    "copyreg",
    "tracemalloc",
    "faulthandler",
    "platform",
    "glob",
    "urllib",
    "http",
    "mmap",
    "fcntl",
    "resource",
    "pty",
    "shelve",
    "sqlite3",
    "sysconfig",
    "site",
    "pkgutil",
    "zipimport",
    "asyncio",
    "ssl",
    "unittest",
    "pydoc",
]
BUILTINS = [
    "exec",
    "eval",
    "compile",
    "open",
    "__import__",
    "getattr",
    "setattr",
    "delattr",
    "globals",
    "locals",
    "vars",
    "breakpoint",
    "input",
    "help",
]
NET = "\nclass Net:\n    pass\n"


@pytest.fixture(scope="module")
def reached() -> list[tuple[str, str]]:
    roots = sorted(r for r in DEFAULT_POLICY.allowed_import_roots if r != "__future__")
    args = [json.dumps(roots), "3", json.dumps(DANGEROUS_MODULES), json.dumps(BUILTINS)]
    done = subprocess.run(
        [sys.executable, "-c", WALK, *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [(path, target) for path, target in json.loads(done.stdout)]


def test_the_walk_finds_the_known_doors(reached: list[tuple[str, str]]) -> None:
    paths = dict(reached)
    assert paths["enum.bltns"] == "builtins"
    assert paths["torch.nn.functional.np"] == "numpy"
    assert paths["torch.serialization.load"] == "torch.load"
    assert paths["typing.sys"] == "sys"
    assert len(reached) > 100


def test_every_path_to_a_dangerous_object_is_refused(reached: list[tuple[str, str]]) -> None:
    passed = [
        f"{path} -> {target}"
        for path, target in reached
        if check(f"import {path.split('.')[0]}\nx = {path}{NET}") is None
    ]
    assert passed == []
