"""Hostile candidates the static policy rejects before any process starts, and broken
models and hard deaths: each ends with a specific status and the run goes on (the two
layers and the ``world`` fixture: hostile.py)."""

from __future__ import annotations

import sys

import pytest

from hostile import NET, TINY, World, run_hostile
from lemo_nade.records import Status
from sandboxes import job

pytest_plugins = ["sandbox_fixtures"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


# ---- the policy rejects these before anything runs ------------------------------------

POLICY_CASES = {
    "import os": "import os\nos.system('id')",
    "import subprocess": "import subprocess\nsubprocess.run(['id'])",
    "import socket": "import socket\nsocket.create_connection(('127.0.0.1', 9))",
    "import ctypes": "import ctypes\nctypes.CDLL(None)",
    "import importlib": "import importlib\nimportlib.import_module('os')",
    "import pickle": "import pickle\npickle.loads(b'')",
    "eval": "eval('1 + 1')",
    "exec": "exec('x = 1')",
    "compile": "compile('x = 1', 'f', 'exec')",
    "open": "open('/etc/passwd').read()",
    "__import__": "__import__('os').system('id')",
    "globals": "globals()['x'] = 1",
    "getattr chain": "import torch\ngetattr(getattr(torch, 'o' + 's'), 'sys' + 'tem')('id')",
    "vars by string": "import torch\nvars(torch)['o' + 's']",
    "subclasses walk": "().__class__.__bases__[0].__subclasses__()",
    "builtins by built string": "b = __builtins__\nb['_' * 2 + 'import' + '_' * 2]('os')",
    "format string walk": "s = '{0.__init__.__globals__}'.format(object)",
    "torch.os": "import torch\ntorch.os.system('id')",
    "from torch import os": "from torch import os\nos.system('id')",
    "match class attribute": (
        "import torch\nmatch torch:\n    case object(os=o):\n        o.system('id')"
    ),
    "generator frame": "g = (i for i in [0])\ng.gi_frame.f_builtins",
    "string annotation": (
        "import torch\ndef f(x: \"torch.os.system('id') or int\") -> None:\n    pass"
    ),
    "typing.ForwardRef": "import typing\ntyping.ForwardRef('1')",
    "torch.load": "import torch\ntorch.load('evil.pt', weights_only=False)",
    "torch.jit.load": "import torch\ntorch.jit.load('evil.pt')",
    "torch.hub": "import torch\ntorch.hub.load('evil/repo', 'model')",
    "cpp_extension": "from torch.utils.cpp_extension import load_inline",
    "storage from_file": "import torch\ntorch.UntypedStorage.from_file('/etc/passwd', False, 64)",
    "torch._C": "import torch._C as c",
    "fx private exec": "import torch.fx\ntorch.fx.graph_module._exec_with_source('x = 1', {})",
    "collect_env shell": "from torch.utils import collect_env\ncollect_env.run('id')",
    "torch.ops library": "import torch\ntorch.ops.load_library('/tmp/evil.so')",
}


@pytest.mark.parametrize("code", POLICY_CASES.values(), ids=POLICY_CASES.keys())
def test_policy_rejects_before_any_process_starts(
    code: str, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    monkeypatch.setattr(world.box, "_run_in", lambda *a: started.append(a))
    evaluation = run_hostile(world, code + NET, policy=True)
    assert evaluation.status is Status.FAILED_POLICY, evaluation.error
    assert evaluation.error.split(":")[0] in {
        "import",
        "name",
        "attribute",
        "qualname",
        "private",
        "dunder",
        "annotation",
    }
    assert started == []


# ---- broken models --------------------------------------------------------------------

FORWARD = "return self.head(x.flatten(1))"
BROKEN = {
    "nan": (TINY.replace(FORWARD, FORWARD + " * float('nan')"), Status.FAILED_NAN),
    "wrong shape": (TINY.replace("nn.Linear(64, 10)", "nn.Linear(64, 7)"), Status.FAILED_SHAPE),
    "returns a tuple": (
        TINY.replace(FORWARD, "return (self.head(x.flatten(1)),)"),
        Status.FAILED_SHAPE,
    ),
    "not a module": ("class Net:\n    pass\n", Status.FAILED_BUILD),
    "exits": (
        "class Net:\n    def __init__(self):\n        raise SystemExit(0)\n",
        Status.FAILED_BUILD,
    ),
}


@pytest.mark.parametrize(("code", "status"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_models_get_their_status(code: str, status: Status, world: World) -> None:
    evaluation = run_hostile(world, code, policy=True)
    assert evaluation.status is status, evaluation.error


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("import ctypes\nctypes.string_at(0)\n", "killed by SIGSEGV"),
        ("import os\nos._exit(0)\n", "exited with code 0 and wrote no result"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "killed by SIGKILL"),
    ],
    ids=["segfault", "silent exit", "self kill"],
)
def test_hard_deaths_are_crashes(code: str, needle: str, world: World) -> None:
    evaluation = run_hostile(world, code + NET)
    assert evaluation.status is Status.CRASHED and needle in evaluation.error


def test_the_run_goes_on_after_all_that(world: World) -> None:
    assert world.box.evaluate(job(TINY), 60).status is Status.OK
