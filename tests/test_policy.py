"""The AST policy: what passes, what is rejected and with which rule."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lemo_nade.records import Status
from lemo_nade.sandbox.policy import DEFAULT_POLICY, check

GOOD = '''"""A fine model; its __init__ builds layers."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        nn.init.kaiming_normal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x)) + x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(b=Block(1)))
        self.head = nn.Linear(64, 10)
        self.scale = math.sqrt(2.0)
        self.tag = type(self).__name__

    def forward(self, x: torch.Tensor) -> Any:
        return self.head(self.body(x).flatten(1) * self.scale)
'''

NET = "\nclass Net:\n    pass\n"


def test_a_normal_model_passes() -> None:
    assert check(GOOD) is None


def test_syntax_error_is_failed_syntax_with_the_line() -> None:
    result = check("import torch\nclass Net(:\n    pass\n")
    assert result is not None
    status, message = result
    assert status is Status.FAILED_SYNTAX
    assert message.startswith("syntax: line 2")


@pytest.mark.parametrize(
    ("code", "rule", "needle"),
    [
        ("import os" + NET, "import", "'os'"),
        ("import torch, subprocess" + NET, "import", "'subprocess'"),
        ("from importlib import import_module" + NET, "import", "'importlib'"),
        ("from . import helpers" + NET, "import", "relative"),
        ("from torch import *" + NET, "import", "import *"),
        ("x = eval('1')" + NET, "name", "'eval'"),
        ("f = open" + NET, "name", "'open'"),
        ("getattr(object, 'x')" + NET, "name", "'getattr'"),
        ("from operator import attrgetter" + NET, "name", "'attrgetter'"),
        ("import operator\nf = operator.methodcaller('x')" + NET, "attribute", "'methodcaller'"),
        ("import torch\ntorch.os.system('id')" + NET, "attribute", "'os'"),
        ("import typing\ntyping.sys.modules" + NET, "attribute", "'sys'"),
        ("import torch\ntorch._C._get_tracing_state()" + NET, "private", "torch._C"),
        ("import torch\nw = torch.load('w.pt')" + NET, "qualname", "torch.load"),
        ("import torch as t\nt.hub.load('a', 'b')" + NET, "qualname", "torch.hub"),
        ("from torch import hub" + NET, "qualname", "torch.hub"),
        ("import torch.jit\ntorch.jit.load('m')" + NET, "qualname", "torch.jit.load"),
        ("import torch\ntorch.ops.load_library('x.so')" + NET, "qualname", "torch.ops"),
        ("from torch.utils import cpp_extension" + NET, "qualname", "torch.utils.cpp_extension"),
        ("import torch.package" + NET, "qualname", "torch.package"),
        ("x = ().__class__.__base__" + NET, "dunder", "'__base__'"),
        ("b = __builtins__" + NET, "dunder", "'__builtins__'"),
        ("class Net:\n    def __del__(self):\n        pass\n", "dunder", "'__del__'"),
        ("s = '{0.__globals__}'" + NET, "dunder", "'__globals__'"),
        # ways around the plain rules: each must still be rejected
        ("from torch import os" + NET, "attribute", "'os'"),
        ("import torch._C as c" + NET, "private", "torch._C"),
        (
            "import torch.fx\ntorch.fx.graph_module._exec_with_source('x', {})" + NET,
            "private",
            "_exec",
        ),
        (
            "import torch\nmatch torch:\n    case object(os=o):\n        pass" + NET,
            "attribute",
            "'os'",
        ),
        ("g = (i for i in [0])\nb = g.gi_frame.f_builtins" + NET, "attribute", "'f_builtins'"),
        ("import torch\ndef f(x: 'torch.os.system(1)'):\n    pass" + NET, "annotation", "'os'"),
        ("def f(x: 'import os'):\n    pass" + NET, "annotation", "not a valid expression"),
        ("import typing\ntyping.get_type_hints(object)" + NET, "qualname", "get_type_hints"),
        (
            "import torch\ntorch.UntypedStorage.from_file('f', False, 1)" + NET,
            "attribute",
            "'from_file'",
        ),
        ("from torch.utils import collect_env" + NET, "qualname", "collect_env"),
        ("class Model:\n    pass\n", "net", "found 0"),
        ("Net = 1\n", "net", "found 0"),
        (NET + NET, "net", "found 2"),
    ],
)
def test_rejections_name_their_rule(code: str, rule: str, needle: str) -> None:
    result = check(code)
    assert result is not None, code
    status, message = result
    assert status is Status.FAILED_POLICY
    assert message.startswith(f"{rule}: "), message
    assert needle in message


def test_rejection_carries_the_line_number() -> None:
    result = check("import torch\n\nimport socket" + NET)
    assert result == (
        Status.FAILED_POLICY,
        f"import: line 3: import of 'socket' is not allowed; allowed modules: "
        f"{', '.join(sorted(DEFAULT_POLICY.allowed_import_roots))}",
    )


def test_model_methods_named_like_builtins_stay_allowed() -> None:
    # ``eval`` and ``compile`` as *attributes* are normal torch API, not the builtins
    code = "import torch\nm = torch.nn.Linear(1, 1)\nm.eval()\nf = torch.compile" + NET
    assert check(code) is None


def test_rules_are_data_a_policy_can_be_extended() -> None:
    code = "import torch\nx = torch.cuda.is_available()" + NET
    assert check(code) is None
    strict = replace(
        DEFAULT_POLICY, forbidden_qualnames=(*DEFAULT_POLICY.forbidden_qualnames, "torch.cuda")
    )
    result = check(code, strict)
    assert result is not None and result[1].startswith("qualname: line 2: torch.cuda")


def test_absurd_nesting_is_a_syntax_failure_not_a_crash() -> None:
    result = check("x = " + "(" * 500 + ")" * 500 + NET)
    assert result is not None and result[0] is Status.FAILED_SYNTAX


def test_private_attributes_of_own_objects_and_string_annotations_stay_allowed() -> None:
    code = (
        "from __future__ import annotations\n"
        "import torch\n"
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self) -> None:\n"
        "        super().__init__()\n"
        "        self._scale = 2.0\n"
        "    def forward(self, x: 'torch.Tensor') -> 'torch.Tensor':\n"
        "        return x * self._scale\n"
    )
    assert check(code) is None
