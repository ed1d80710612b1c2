"""The data of the candidate-code policy: which modules, names and paths it refuses.

Kept apart from the checker (:mod:`lemo_nade.sandbox.policy`) so that extending the
policy is editing a table, not adding a branch. Pure: no torch import.

How the tables were chosen (torch 2.13, Python 3.11): a walk over the public attributes
of every allowed module, four levels deep, lists every path that reaches a dangerous
module or function; each such path must end in, or pass through, a name refused here
(``tests/test_policy_reach.py`` repeats that walk against the installed torch). The
attribute names are refused on *any* object, so aliases and containers cannot hide them;
the qualified names are refused after following aliases.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    """What candidate code may use. Module and qualified names are dotted paths."""

    allowed_import_roots: frozenset[str]  # a root allows its submodules (torch -> torch.nn)
    forbidden_names: frozenset[str]  # bare names (builtins) and names imported with ``from``
    forbidden_attributes: frozenset[str]  # ``x.NAME`` for any x: modules reachable through torch
    forbidden_qualnames: tuple[str, ...]  # after resolving aliases; prefixes match
    allowed_dunders: frozenset[str]
    net_class: str = "Net"


ALLOWED_IMPORT_ROOTS = frozenset(
    {
        "torch",
        "math",
        "typing",
        "collections",
        "functools",
        "itertools",
        "dataclasses",
        "numbers",
        "enum",
        "abc",
        "__future__",
        "operator",
    }
)

FORBIDDEN_NAMES = frozenset(
    {
        "exec",
        "eval",
        "compile",
        "open",
        "__import__",
        "globals",
        "locals",
        "vars",
        "getattr",
        "setattr",
        "delattr",
        "breakpoint",
        "input",
        "help",
        # operator's string-driven getters are getattr by another name
        "attrgetter",
        "methodcaller",
    }
)

# Modules that allowed modules re-export (``torch.os``, ``typing.sys``, ``enum.bltns`` is
# builtins, ``torch.nn.functional.np`` is numpy, ``torch.cuda.graphs.gc``); no model
# needs these names as attributes, so they are refused whatever object they are read on.
_MODULE_ATTRIBUTES = {
    "os",
    "sys",
    "subprocess",
    "shutil",
    "socket",
    "builtins",
    "bltns",  # enum's name for builtins
    "importlib",
    "ctypes",
    "pickle",
    "marshal",
    "io",
    "pathlib",
    "platform",
    "inspect",
    "signal",
    "threading",
    "multiprocessing",
    "python_multiprocessing",  # torch.utils.data.dataloader's name for multiprocessing
    "concurrent",
    "tempfile",
    "glob",
    "urllib",
    "http",
    "gc",  # gc.get_objects() finds any live object, the worker's data included
    "types",  # FunctionType/CodeType build functions from raw code objects
    "np",
    "numpy",  # numpy.load(allow_pickle=True), numpy.fromfile, numpy.ctypeslib
    "linecache",  # reads any file
    "traceback",  # walk_stack() hands out frames
    "logging",  # FileHandler writes, logging.config evaluates strings
    "zipfile",
    "tarfile",
    "gzip",
    "string",  # string.Formatter().get_field is getattr by string
    "typing_extensions",  # its own get_type_hints
    "copyreg",
    "runpy",
    "tracemalloc",
    "faulthandler",
    "_C",  # torch's raw C++ binding
    "fx",  # torch.fx.GraphModule turns node names into Python source and executes it
}

# Loaders, savers and code builders, by their attribute name wherever they live:
# ``torch.load`` is also ``torch.serialization.load`` and ``torch.torch.load``, numpy's
# loaders are reachable through torch, and ``get_type_hints`` is re-exported by
# ``torch.utils.checkpoint``.
_LOADER_ATTRIBUTES = {
    "load",
    "loads",
    "save",
    "load_library",  # torch.ops / torch.classes: dlopen a shared object
    "load_inline",
    "import_module",  # torch.ops.import_module
    "from_file",  # torch.UntypedStorage.from_file and friends read any file
    "fromfile",
    "loadtxt",
    "genfromtxt",
    "fromregex",
    "memmap",
    "open_memmap",
    "read_array",
    "bltn_open",  # tarfile's name for open
    "open",
    "hub",
    "cpp_extension",
    "serialization",
    "get_type_hints",  # evaluates string annotations
    "ForwardRef",
    "Formatter",
    "get_field",
    "GraphModule",
    "symbolic_trace",
    "recompile",
    "attrgetter",
    "methodcaller",
}

# Frames and code reached from generators, coroutines and tracebacks: a frame's
# f_globals/f_builtins lead back to the builtins (and __import__).
_FRAME_ATTRIBUTES = {
    "gi_frame",
    "gi_code",
    "cr_frame",
    "cr_code",
    "ag_frame",
    "ag_code",
    "tb_frame",
    "tb_next",
    "f_globals",
    "f_locals",
    "f_builtins",
    "f_back",
    "f_code",
}

FORBIDDEN_ATTRIBUTES = frozenset(_MODULE_ATTRIBUTES | _LOADER_ATTRIBUTES | _FRAME_ATTRIBUTES)

# Paths refused after aliases are followed (``t = torch; t.ops`` is ``torch.ops``): names
# too common to refuse on any object (``self.ops`` is a fine NAS cell) but doors in torch.
FORBIDDEN_QUALNAMES = (
    "torch.load",
    "torch.hub",
    "torch.jit.load",
    "torch.ops",
    "torch.utils.cpp_extension",
    "torch.package",
    "torch.save",
    "torch.from_file",
    "torch.serialization",
    "torch.library",
    "torch.classes",
    "torch.distributed",
    "torch.multiprocessing",
    "torch.utils.model_zoo",
    "torch.utils.collect_env",  # runs shell commands
    "torch.utils.show_pickle",
    "torch.utils.model_dump",
    "torch.utils.benchmark",  # compiles C++, executes statement strings
    "torch.utils.hipify",  # rewrites files in place
    "torch.utils.tensorboard",
    "torch.utils.data",  # worker processes
    "torch.cuda.tunable",  # its ``mp`` is multiprocessing (``self.mp`` is a fine max-pool)
    "torch.export",  # ExportedProgram.module() is a GraphModule; load/save files
    # evaluate strings as code: get_type_hints eval()s string annotations
    "typing.get_type_hints",
    "typing.ForwardRef",
)

DEFAULT_POLICY = Policy(
    allowed_import_roots=ALLOWED_IMPORT_ROOTS,
    forbidden_names=FORBIDDEN_NAMES,
    forbidden_attributes=FORBIDDEN_ATTRIBUTES,
    forbidden_qualnames=FORBIDDEN_QUALNAMES,
    allowed_dunders=frozenset({"__init__", "__name__", "__future__"}),
)
