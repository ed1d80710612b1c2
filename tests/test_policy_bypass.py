"""Ways around the policy's rules that used to pass ``check``: each is now refused, and the
message names the rule. One case per bypass class: aliases of every binding form, modules
reached as attributes of allowed ones, private names through an alias, and a method
called with a module as its ``self``."""

from __future__ import annotations

import pytest

from lemo_nade.records import Status
from lemo_nade.sandbox.policy import check

NET = "\nclass Net:\n    pass\n"
METHOD = "import collections\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"

# (code, rule, needle): every one of these passed check() before aliases were followed
ALIASES = {
    "assignment": ("import torch\nt = torch\nt.ops.load_library('x.so')", "qualname", "t.ops"),
    "assignment of a function": ("import torch\nt = torch\nf = t.hub", "qualname", "torch.hub"),
    "alias of a from-import": (
        "from torch import utils as u\nv = u\nv.benchmark",
        "qualname",
        "v.",
    ),
    "tuple unpacking": ("import torch\na, b = 1, torch\nb.ops", "qualname", "torch.ops"),
    "starred unpacking": ("import torch\n*a, b = [torch]\na[0].ops", "qualname", "torch.ops"),
    "walrus": ("import torch\nif (t := torch):\n    t.ops", "qualname", "torch.ops"),
    "default argument": ("import torch\ndef f(t=torch):\n    return t.ops", "qualname", "t.ops"),
    "keyword-only default": ("import torch\ndef f(*, t=torch):\n    t.hub", "qualname", "hub"),
    "lambda default": ("import torch\nf = lambda t=torch: t.ops", "qualname", "torch.ops"),
    "for target": ("import torch\nfor t in (torch,):\n    t.ops", "qualname", "t.ops"),
    "with target": ("import torch\nwith torch as t:\n    t.ops", "qualname", "t.ops"),
    "comprehension": ("import torch\n[t.ops for t in [torch]]", "qualname", "t.ops"),
    "call argument": ("import torch\ndef f(m):\n    return m.ops\nf(torch)", "qualname", "m.ops"),
    "return value": ("import torch\ndef f():\n    return torch\nf().ops", "qualname", "f().ops"),
    "lambda result": ("import torch\nf = lambda: torch\nf().ops", "qualname", "f().ops"),
    "container": ("import torch\n[torch][0].hub", "qualname", "torch.hub"),
    "dict method": ("import torch\n{'a': torch}.get('a').ops", "qualname", "torch.ops"),
    "mutation": ("import torch\nxs = []\nxs.append(torch)\nxs[0].ops", "qualname", "xs[0]"),
    "exception": (
        "import torch\ntry:\n    raise ValueError(torch)\n"
        "except ValueError as e:\n    e.args[0].ops",
        "qualname",
        "torch.ops",
    ),
    "match capture": (
        "import torch\nmatch torch:\n    case m:\n        m.ops",
        "qualname",
        "m.ops",
    ),
    "match attribute": (
        "import torch\nmatch torch:\n    case object(ops=o):\n        o.aten",
        "qualname",
        "torch.ops",
    ),
    "self attribute": (
        METHOD + "    def __init__(self):\n        super().__init__()\n"
        "        import torch\n        self.t = torch\n\n"
        "    def forward(self, x):\n        return self.t.ops.aten.relu(x)\n",
        "qualname",
        "self.t.ops",
    ),
    "class attribute": (
        "import torch\nclass Net:\n    t = torch\n    def f(self):\n        return self.t.ops\n",
        "qualname",
        "torch.ops",
    ),
    "a module's own name for torch": ("import torch\ntorch.torch.ops", "qualname", "torch.ops"),
    "typing through an alias": ("import typing as t\nh = t\nh.ForwardRef('x')", "qualname", "h."),
    "string annotation through an alias": (
        "import torch\nt = torch\ndef f(x: 't.ops') -> None:\n    pass",
        "annotation",
        "torch.ops",
    ),
    "private through an alias": (
        "import collections\nc = collections\nc._sys",
        "private",
        "c._sys",
    ),
    "private on a call result": ("import torch\ntorch.nn.Module()._apply", "private", "_apply"),
    "private in a match pattern": (
        "import collections\nmatch collections:\n    case object(_sys=s):\n        pass",
        "private",
        "_sys",
    ),
}

# Dangerous modules and functions that allowed modules re-export under other names
REACHED = {
    "builtins as enum.bltns": ("import enum\nenum.bltns", "attribute", "'bltns'"),
    "builtins through typing": ("import typing\nb = typing.stdlib_re.enum.bltns", "attribute", ""),
    "open as tarfile.bltn_open": ("def f(m):\n    return m.bltn_open", "attribute", "bltn_open"),
    "gc through torch.cuda": (
        "import torch\ntorch.cuda.graphs.gc.get_objects()",
        "attribute",
        "gc",
    ),
    "numpy.load through torch": (
        "import torch.nn.functional as F\nF.np.load('x.npy', allow_pickle=True)",
        "attribute",
        "'load'",
    ),
    "numpy.fromfile through torch": ("import torch\ntorch.storage.np.fromfile('x')", "", ""),
    "a tensor's numpy module": ("import torch\nn = torch.nn.functional.np", "attribute", "'np'"),
    "torch.load as torch.torch.load": ("import torch\ntorch.torch.load('x')", "qualname", ""),
    "torch.load through serialization": ("import torch\n[torch][0].serialization", "qualname", ""),
    "torch.load on any object": ("def f(m):\n    return m.load('x')", "attribute", "'load'"),
    "get_type_hints re-exported": (
        "import torch\ntorch.utils.checkpoint.get_type_hints(object)",
        "attribute",
        "'get_type_hints'",
    ),
    "getattr by format string": (
        "import torch\ntorch.jit.frontend.string.Formatter().get_field('0.os', [torch], {})",
        "attribute",
        "'get_field'",
    ),
    "multiprocessing through tunable": (
        "import torch\ntorch.cuda.tunable.mp",
        "qualname",
        "tunable",
    ),
    "linecache reads files": (
        "import torch\ntorch.fx.graph_module.linecache.getlines('/etc/passwd')",
        "attribute",
        "'linecache'",
    ),
    "types builds code": ("import dataclasses\ndataclasses.types.CodeType", "attribute", "'types'"),
    "ops imports modules": (
        "import torch\nt = torch\nt.ops.import_module('os')",
        "qualname",
        "t.ops",
    ),
    "export's graph module": ("import torch\ntorch.export.export", "qualname", "torch.export"),
    "benchmark executes strings": (
        "import torch\nu = [torch.utils][0]\nu.benchmark.Timer('1')",
        "qualname",
        "torch.utils.benchmark",
    ),
}

# torch.fx turns node names into Python source and executes it
FX = {
    "fx helper through an alias": (
        "import torch.fx\ng = torch.fx.graph_module\ng._exec_with_source('x = 1', {})",
        "attribute",
        "'fx'",
    ),
    "fx module under another name": ("import torch.fx as f", "attribute", "'fx'"),
    "fx helper on any object": ("def f(m):\n    m._exec_with_source('x', {})", "private", "_exec"),
    "fx GraphModule": ("from torch.fx import GraphModule", "attribute", "'GraphModule'"),
    "a graph module's recompile": ("def f(gm):\n    gm.recompile()", "attribute", "'recompile'"),
}

# self._x is the candidate's own only when self cannot be anything but an instance
SELF = {
    "method read off its class": (
        METHOD + "    def g(self):\n        return self._sys\n\n\nNet.g(collections)\n",
        "private",
        "self._sys",
    ),
    "method read off type(x)": (
        METHOD + "    def g(self):\n        return self._sys\n\n"
        "    def h(self):\n        return type(self).g(collections)\n",
        "private",
        "self._sys",
    ),
    "method read off a class alias": (
        METHOD + "    def g(self):\n        return self._sys\n\n\nk = Net\nk.g(collections)\n",
        "private",
        "self._sys",
    ),
    "self reassigned": (
        METHOD + "    def g(self):\n        self = collections\n        return self._sys\n",
        "private",
        "self._sys",
    ),
    "self with a default": (
        METHOD + "    def g(self=collections):\n        return self._sys\n",
        "private",
        "self._sys",
    ),
    "self of a static method": (
        METHOD + "    @staticmethod\n    def g(self):\n        return self._sys\n",
        "private",
        "self._sys",
    ),
    "a decorator that calls the method": (
        "import collections\nfrom torch import nn\n\n\ndef deco(f):\n"
        "    f(collections)\n    return f\n\n\nclass Net(nn.Module):\n"
        "    @deco\n    def g(self):\n        return self._sys\n",
        "private",
        "self._sys",
    ),
    "module passed as self": (
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def g(self):\n        return self.ops\n\n\nNet.g(torch)\n",
        "qualname",
        "self.ops",
    ),
}

CASES = {**ALIASES, **REACHED, **FX, **SELF}


@pytest.mark.parametrize(("code", "rule", "needle"), CASES.values(), ids=CASES.keys())
def test_bypass_is_refused_by_its_rule(code: str, rule: str, needle: str) -> None:
    source = code if "class Net" in code else code + NET
    result = check(source)
    assert result is not None, source
    status, message = result
    assert status is Status.FAILED_POLICY
    assert message.startswith(f"{rule}: " if rule else ""), message
    assert needle in message


def test_the_alias_is_named_in_the_message() -> None:
    result = check("import torch\n\nt = torch\nt.hub.list('a/b')" + NET)
    assert result is not None
    assert result[1] == (
        "qualname: line 4: torch.hub is not allowed in model code (no loading, saving, "
        "extensions or evaluating strings as code); t.hub.list is torch.hub.list"
    )


def test_aliases_beyond_the_follow_limit_are_refused_not_missed() -> None:
    hops = "\n".join(f"a{i + 1} = a{i}" for i in range(70))
    result = check(f"import torch\na0 = torch\n{hops}\na70.ops" + NET)
    assert result is not None and result[1].startswith("alias: "), result


def test_a_long_harmless_chain_is_not_an_alias_problem() -> None:
    hops = "\n".join(f"a{i + 1} = a{i} + 1" for i in range(300))
    assert check(f"a0 = 1\n{hops}" + NET) is None
