"""Which exported graphs the measuring child runs: pure functions of their input.

The archive a candidate hands over is untrusted data. Loading it runs no Python of the
candidate's (:mod:`lemo_nade.engine.artifact`), but the graph itself still runs in the
measuring child, next to the evaluation data. So a graph is measured only if every call
in it is an ATen/prims operator that computes from its arguments alone:

- no operator that touches files or prints (``aten.from_file``, ``aten.save``,
  ``aten._print``, or any with a file-name argument): the graph could read the
  validation labels the measuring child holds;
- no in-place or ``out=`` write to anything that outlives a call (a parameter, buffer,
  constant or input, or a view of one): a call counter could tell the accuracy passes
  from the speed passes and answer the latter with a constant;
- no random operator (an eval-mode model has none; a seeded stream would also count
  calls), no control-flow higher-order operator (``torch.cond``, ``while_loop``: a
  classifier needs none, and they carry subgraphs and state), no dtype reinterpretation
  (``view.dtype`` hides weights from P).

In-place operators on intermediate values (``nn.ReLU(inplace=True)``) stay allowed:
they change nothing that survives the call.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

ALLOWED_NAMESPACES = frozenset({"aten", "prims"})
# (schema name, overload or "" for all overloads)
DENIED = frozenset(
    {("aten::from_file", ""), ("aten::save", ""), ("aten::_print", ""), ("aten::view", "dtype")}
)
FILE_ARGUMENTS = frozenset({"filename", "file", "path", "f"})


class GraphRefused(Exception):
    """The graph does something a measured model may not; the message says what."""


def check(program: torch.export.ExportedProgram) -> None:
    """Raise GraphRefused unless ``program`` is a pure function of its input."""
    kinds = {spec.kind.name for spec in program.graph_signature.output_specs}
    if kinds - {"USER_OUTPUT"}:
        raise GraphRefused(f"the graph changes stored tensors ({', '.join(sorted(kinds))})")
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is not None:
            _check_nodes(graph)


def _check_nodes(graph: torch.fx.Graph) -> None:
    lasting: set[torch.fx.Node] = set()  # placeholders and views of them
    for node in graph.nodes:
        if node.op == "placeholder" or node.op == "get_attr":
            lasting.add(node)
        elif node.op in ("call_module", "call_method"):
            raise GraphRefused(f"the graph has a {node.op} node ({node.target})")
        elif node.op == "call_function":
            _check_call(node, lasting)


def _check_call(node: torch.fx.Node, lasting: set[torch.fx.Node]) -> None:
    target = node.target
    if target is operator.getitem:
        if _inputs(node) & lasting:
            lasting.add(node)
        return
    if isinstance(target, torch._ops.HigherOrderOperator):
        raise GraphRefused(f"the graph uses control flow ({target.name()}), not measured")
    if not isinstance(target, torch._ops.OpOverload) or target.namespace not in ALLOWED_NAMESPACES:
        raise GraphRefused(f"the graph calls {target!r}, not an ATen operator")
    schema = target._schema
    if (schema.name, "") in DENIED or (schema.name, target._overloadname) in DENIED:
        raise GraphRefused(f"the graph calls {target}, which a measured model may not")
    if any(arg.name in FILE_ARGUMENTS for arg in schema.arguments):
        raise GraphRefused(f"the graph calls {target}, which reads or writes files")
    bound = _bound(node, schema)
    if torch.Tag.nondeterministic_seeded in target.tags and not _identity_dropout(bound):
        raise GraphRefused(f"the graph draws random numbers ({target}) in eval mode")
    for arg, value in bound:
        written = value if isinstance(value, (list, tuple)) else [value]
        hit = [v for v in written if isinstance(v, torch.fx.Node) and v in lasting]
        if arg.alias_info is not None and arg.alias_info.is_write and hit:
            raise GraphRefused(
                f"the graph writes into {hit[0].name} ({target}): a stored tensor or an "
                "input must not change between calls"
            )
    if any(r.alias_info is not None for r in schema.returns) and _inputs(node) & lasting:
        lasting.add(node)  # a view (or in-place result) of something lasting


def _identity_dropout(bound: list[tuple[Any, Any]]) -> bool:
    """A dropout exported in eval mode (``train=False``): the identity, no random draw."""
    return any(arg.name == "train" and value is False for arg, value in bound)


def _bound(node: torch.fx.Node, schema: Any) -> list[tuple[Any, Any]]:
    """(schema argument, the node's value for it) for every argument given."""
    pairs = []
    for index, arg in enumerate(schema.arguments):
        if arg.kwarg_only or index >= len(node.args):
            if arg.name in node.kwargs:
                pairs.append((arg, node.kwargs[arg.name]))
        else:
            pairs.append((arg, node.args[index]))
    return pairs


def _inputs(node: torch.fx.Node) -> set[torch.fx.Node]:
    return set(node.all_input_nodes)
