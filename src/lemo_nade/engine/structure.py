"""What a measured model is made of, read from its exported graph: the structural facts the
instruction checker (:mod:`lemo_nade.compliance`) compares between a parent and its child.

Measuring side: runs in the measuring child on the handed-over ``ExportedProgram``, so
these facts come from the graph the numbers were measured on, never from the candidate's
own process. Handles both the training IR that ``torch.export`` gives since torch 2.5
(``conv2d``, ``linear``, ``batch_norm``, eval-mode ``dropout`` kept with its ``p``) and the
older decomposed ATen IR (``convolution``, ``addmm``/``mm``, ``_native_batch_norm_*``, no
dropout at all).

The facts (:func:`graph_structure`; every value a whole number >= 0 or a list of
numbers >= 0):

- ``conv_layers``, ``conv_channels`` (output channels per conv layer, in graph order) and
  ``conv_channels_total``: convolutions on the main path. A projection shortcut (the
  1x1 conv that matches a residual's channels) is a part of its skip connection, not a
  layer, as in "ResNet-18"; ``conv_ops`` counts every convolution.
- ``skip_connections``: residual joins. An ``add`` of two activations where one of them,
  or what it was computed from through shortcut operations (a 1x1 conv, batch norm,
  pooling, padding, resizing, reshaping, dropout, scaling by a constant), is an earlier
  activation of the other: ``f(x) + x``, ``f(x) + proj(x)``, ``f(x) + pool(x)``. A
  ``cat`` counts when an operand is an earlier activation of another one passed through
  parameter-free operations only (DenseNet's ``cat([x, f(x)])``); concatenated parallel
  branches (Inception: ``cat([conv1x1(x), conv3x3(x)])``) and a sequential net's ops
  are no skip connections. Products (``x * sigmoid(...)``, attention gates) never count.
- ``dense_layers``, ``dense_units`` (output features per dense layer: ``linear``,
  ``addmm``/``mm``/``matmul`` by a weight, in graph order), ``hidden_units`` (the sum
  of all but the last: the classifier's width is the class count).
- ``batch_norms``.
- ``dropout_layers``, ``dropout_rates`` (each ``p``, in graph order): 0 and empty where
  the IR drops eval-mode dropout.

Imports torch; nothing from the main-process side.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch.fx import Node

CONV = frozenset(
    {
        "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
        "conv_transpose2d", "conv_transpose3d", "cudnn_convolution", "mkldnn_convolution",
    }
)  # fmt: skip
DENSE = frozenset({"linear", "addmm", "mm", "matmul"})
BATCH_NORM = frozenset(
    {
        "batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
        "native_batch_norm", "cudnn_batch_norm", "miopen_batch_norm",
        "_batch_norm_impl_index", "_batch_norm_with_update", "_batch_norm_no_update",
    }
)  # fmt: skip
DROPOUT = frozenset(
    {
        "dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout",
        "alpha_dropout_", "feature_alpha_dropout", "feature_alpha_dropout_", "native_dropout",
    }
)  # fmt: skip
ADD = frozenset({"add", "add_"})
CAT = frozenset({"cat", "concat", "concatenate"})
# Parameter-free operations that keep a tensor "the same activation" on a shortcut.
RESHAPE = frozenset(
    {
        "view", "reshape", "_unsafe_view", "flatten", "contiguous", "clone", "alias",
        "detach", "expand", "slice", "narrow", "select", "unsqueeze", "squeeze", "_to_copy",
        "to", "lift_fresh_copy", "max_pool1d", "max_pool2d", "max_pool3d",
        "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d",
        "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
        "_adaptive_avg_pool2d", "adaptive_max_pool2d", "constant_pad_nd", "pad",
        "reflection_pad2d", "replication_pad2d", "upsample_nearest2d",
        "upsample_bilinear2d", "_upsample_nearest_exact2d", "interpolate",
    }
) | DROPOUT  # fmt: skip
SCALE = frozenset({"mul", "mul_", "div", "div_"})  # by a constant only


def graph_structure(program: torch.export.ExportedProgram) -> dict[str, Any]:
    """The structural facts of ``program``'s top-level graph (see the module docstring)."""
    nodes = [n for n in program.graph.nodes if n.op != "output"]
    active = _activations(nodes, set(program.graph_signature.user_inputs))
    ancestors = _ancestors(nodes, active)
    skips, shortcut_convs = _residual_joins(nodes, active, ancestors)
    convs = [n for n in nodes if _op(n) in CONV and n not in shortcut_convs]
    channels = [_width(n, dim=1) for n in convs]
    dense = [_width(n, dim=-1) for n in nodes if _is_dense(n, active)]
    dropouts = [n for n in nodes if _op(n) in DROPOUT]
    return {
        "conv_layers": len(convs),
        "conv_ops": sum(1 for n in nodes if _op(n) in CONV),
        "conv_channels": channels,
        "conv_channels_total": sum(channels),
        "skip_connections": skips,
        "dense_layers": len(dense),
        "dense_units": dense,
        "hidden_units": sum(dense[:-1]),
        "batch_norms": sum(1 for n in nodes if _op(n) in BATCH_NORM),
        "dropout_layers": len(dropouts),
        "dropout_rates": [_rate(n) for n in dropouts],
    }


def _op(node: Node) -> str:
    """The ATen operator's name without its overload (``conv2d``); '' for anything else."""
    if node.op != "call_function":
        return ""
    if node.target is operator.getitem:
        return "getitem"
    packet = getattr(node.target, "overloadpacket", None)
    return str(getattr(packet, "__name__", ""))


def _inputs(node: Node) -> list[Node]:
    """The nodes ``node`` reads, in argument order, each once."""
    found: list[Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), found.append)
    return list(dict.fromkeys(found))


def _activations(nodes: list[Node], user_inputs: set[str]) -> set[Node]:
    """The nodes that depend on the model's input (not only on weights and constants)."""
    active: set[Node] = set()
    for node in nodes:
        if (node.op == "placeholder" and node.name in user_inputs) or any(
            arg in active for arg in _inputs(node)
        ):
            active.add(node)
    return active


def _ancestors(nodes: list[Node], active: set[Node]) -> dict[Node, int]:
    """Each activation's activation ancestors (itself excluded), as a bit set."""
    bit = {node: 1 << i for i, node in enumerate(n for n in nodes if n in active)}
    ancestors: dict[Node, int] = {}
    for node in nodes:
        if node in active:
            mask = 0
            for arg in _inputs(node):
                if arg in active:
                    mask |= ancestors[arg] | bit[arg]
            ancestors[node] = mask
    return ancestors


def _residual_joins(
    nodes: list[Node], active: set[Node], ancestors: dict[Node, int]
) -> tuple[int, set[Node]]:
    """How many joins are residual, and the convolutions on their shortcuts."""
    bit = {node: 1 << i for i, node in enumerate(n for n in nodes if n in active)}

    def earlier(chain: list[Node], other: Node) -> int | None:
        """Where in ``chain`` the first strict ancestor of ``other`` is, if anywhere."""
        return next((i for i, t in enumerate(chain) if ancestors[other] & bit[t]), None)

    joins, shortcut_convs = 0, set()
    for node in nodes:
        op = _op(node)
        if op not in ADD and op not in CAT:
            continue
        operands = [a for a in _inputs(node) if a in active]
        found: list[tuple[int, list[Node]]] = []
        for s in operands:
            chain = _shortcut_chain(s, active, projections=op in ADD)
            for other in (o for o in operands if o is not s):
                at = earlier(chain, other)
                if at is not None:
                    found.append((at, [c for c in chain[:at] if _op(c) in CONV]))
        if found:
            joins += 1
            shortcut_convs.update(min(found, key=lambda f: (len(f[1]), f[0]))[1])
    return joins, shortcut_convs


def _shortcut_chain(node: Node, active: set[Node], projections: bool) -> list[Node]:
    """``node`` and what it was computed from through shortcut operations, back to the
    first other operation (included): with ``projections``, also through a 1x1 conv
    and batch norm."""
    chain = [node]
    while True:
        op, args = _op(node), [a for a in _inputs(node) if a in active]
        passes = op in RESHAPE or op == "getitem" or (op in SCALE and len(args) == 1)
        if projections:
            passes = passes or op in BATCH_NORM or (op in CONV and _pointwise(node))
        if not passes or len(args) != 1:
            return chain
        node = args[0]
        chain.append(node)


def _pointwise(conv: Node) -> bool:
    weight = conv.args[1] if len(conv.args) > 1 else None
    value = weight.meta.get("val") if isinstance(weight, Node) else None
    return isinstance(value, torch.Tensor) and all(int(k) == 1 for k in value.shape[2:])


def _is_dense(node: Node, active: set[Node]) -> bool:
    """A matrix product of an activation with a weight (not of two activations)."""
    op = _op(node)
    if op not in DENSE:
        return False
    x, w = (node.args[1], node.args[2]) if op == "addmm" else (node.args[0], node.args[1])
    return x in active and w not in active


def _width(node: Node, dim: int) -> int:
    """The size of ``dim`` of the node's output (channels, features); 0 if not concrete."""
    value = node.meta.get("val")
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return 0
    size = value.shape[dim]
    return int(size) if isinstance(size, int) else 0


def _rate(node: Node) -> float:
    """A dropout's ``p`` (0..1)."""
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
    return round(min(1.0, max(0.0, float(p))), 6) if isinstance(p, (int, float)) else 0.0


def safe_structure(program: torch.export.ExportedProgram) -> dict[str, Any]:
    """:func:`graph_structure`, or ``{}`` (the checker's "unknown") if it fails: a fact
    that cannot be read must not fail a candidate whose numbers were measured."""
    try:
        return graph_structure(program)
    except Exception:  # a graph shape this reader does not know
        return {}
