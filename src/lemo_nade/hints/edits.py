"""One edit per instruction of Table 2, written against the parent's own lines.

Each edit says in words what to change, quoting the lines (``change `nn.Conv2d(1, 16,
kernel_size=3, padding=1)` (line 9) to `nn.Conv2d(1, 32, ...)` ...``), and marks the
places in the code (:class:`~lemo_nade.hints.source.Mark`). The edits are chosen so that
nothing else has to change where possible (a conv block that keeps its channels, a hidden
layer as wide as its input), and so that the instruction checker
(:mod:`lemo_nade.compliance`) sees them: a residual join of a block's output with its
input, a new ``nn.init`` call, a higher ``WEIGHT_DECAY``. An edit that cannot be written
for this code is None.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable

from lemo_nade.hints.source import CONV, DROPOUTS, LINEAR, Edit, Layer, Mark, Model, literal

Writer = Callable[[Model], Edit | None]


def _at(layer: Layer) -> str:
    """The layer as written (no line number: the code shown has the TODO comments in it)."""
    return f"`{layer.text}`"


def _new_attribute(
    model: Model, owner: str, attr: str, value: str, use: str, before: bool
) -> Edit | None:
    """A new attribute in __init__ and its use in forward, right after (before) the
    statement that applies ``self.<owner>``."""
    applied = model.applied(owner)
    if applied is None:
        return None
    fresh = _fresh(model, attr)  # a second skip connection is not a second `self.res =`
    use = use.replace(f"self.{attr}(", f"self.{fresh}(")
    where = f"right {'before' if before else 'after'} `{applied.text}`"
    new = f"self.{fresh} = {value}"
    return Edit(
        f"in __init__ add `{new}`, and in forward, {where}, add `{use}`",
        (
            Mark(model.init_end, False, f"add here: {new}"),
            Mark(applied.line if before else applied.end, before, f"add here: {use}"),
        ),
    )


def _fresh(model: Model, attr: str) -> str:
    """``attr``, or ``attr2``, ``attr3``, ...: the first name the model does not use."""
    taken = set(model.assigned) | model.read_attrs
    return next(
        name
        for n in range(1, len(taken) + 2)
        if (name := attr if n == 1 else f"{attr}{n}") not in taken
    )


def _insert_after(model: Model, layer: Layer, new_layers: str, attr: str, use: str) -> Edit | None:
    """New layers inside the same nn.Sequential, after its last layer, or as a new
    attribute applied in forward right after ``layer``'s own line."""
    if not layer.in_sequential:
        return _new_attribute(model, layer.owner, attr, f"nn.Sequential({new_layers})", use, False)
    end = [x for x in model.layers if x.owner == layer.owner][-1]
    line = model.statements.get(layer.owner, "")
    if "\n" not in line and line.endswith(")"):  # one line: no place inside for a mark
        new = f"{line[:-1].rstrip().rstrip(',')}, {new_layers})"
        return Edit(
            f"add `{new_layers}` at the end of `self.{layer.owner}`, after {_at(end)}: make "
            f"its line `{new}`",
            (Mark(end.line, True, f"change the next line to: {new}"),),
        )
    return Edit(
        f"right after {_at(end)}, the last layer of `self.{layer.owner}`, add `{new_layers},`",
        (Mark(end.end, False, f"add here: {new_layers},"),),
    )


def _insert_before_head(model: Model, new_layers: str, attr: str, use: str) -> Edit | None:
    head = model.of(LINEAR)[-1]
    if not head.in_sequential:
        return _new_attribute(model, head.owner, attr, f"nn.Sequential({new_layers})", use, True)
    return Edit(
        f"right before {_at(head)}, add `{new_layers},`",
        (Mark(head.line, True, f"add here: {new_layers},"),),
    )


def _change(changes: list[tuple[Layer, str]], note: str) -> Edit:
    words = " and ".join(f"{_at(layer)} to `{new}`" for layer, new in changes)
    marks = tuple(
        Mark(layer.line, True, f"change the next layer to: {new}") for layer, new in changes
    )
    return Edit(f"change {words} ({note})", marks)


def _delete(model: Model, layer: Layer, also: str) -> Edit | None:
    """Delete ``layer``: its line (and ``also``) in an nn.Sequential; its attribute and
    the forward line that applies it, when that line applies nothing else."""
    if layer.in_sequential:
        return Edit(
            f"delete {_at(layer)} and {also}",
            (Mark(layer.line, True, f"delete the next layer and {also}"),),
        )
    applied = model.applied(layer.owner)
    others = [x.owner for x in model.of(CONV, LINEAR) if x.owner != layer.owner]
    if applied is None or any(f"self.{o}(" in applied.text for o in others):
        return None
    return Edit(
        f"delete {_at(layer)} and, in forward, `{applied.text}`",
        (
            Mark(layer.line, True, "delete the next line"),
            Mark(applied.line, True, "delete the next line"),
        ),
    )


def _same_width_block(model: Model) -> tuple[Layer, str] | None:
    """The last conv, and a conv block that keeps its output channels (as source)."""
    last = model.of(CONV)[-1]
    c = last.width(1)
    if c is None:
        return None
    return last, f"nn.Conv2d({c}, {c}, kernel_size=3, padding=1), nn.BatchNorm2d({c}), nn.ReLU()"


def _add_conv(model: Model) -> Edit | None:
    found = _same_width_block(model)
    if found is None:
        return None
    last, block = found
    edit = _insert_after(model, last, block, "conv_extra", "x = self.conv_extra(x)")
    note = f" (same {last.width(1)} channels in and out, so nothing else changes)"
    return edit and Edit(edit.text + note, edit.marks)


def _remove_conv(model: Model) -> Edit | None:
    """Delete a conv that keeps its channels (nothing else changes); else the last one,
    with the classifier's input size it then gets."""
    convs = model.of(CONV)
    if len(convs) < 2:
        return None
    same = [c for c in convs[1:] if c.width(0) is not None and c.width(0) == c.width(1)]
    also = "the BatchNorm2d and ReLU right after it"
    if same:
        return _delete(model, same[-1], also)
    last, before = convs[-1], convs[-2]
    c_out, c_new = last.width(1), before.width(1)
    head = model.of(LINEAR)[0] if model.of(LINEAR) else None
    n_out = head.width(1) if head is not None else None
    if head is None or c_new is None or head.width(0) != c_out or n_out is None:
        return None
    delete = _delete(model, last, also)
    change = _change([(head, head.with_widths(c_new, n_out))], f"{c_new} inputs")
    return delete and Edit(f"{delete.text}; then {change.text}", delete.marks + change.marks)


def _add_skip(model: Model) -> Edit | None:
    found = _same_width_block(model)
    if found is None:
        return None
    last, block = found
    seq = f"nn.Sequential({block})"
    edit = _new_attribute(model, last.owner, "res", seq, "x = x + self.res(x)", False)
    note = " (a residual connection: the block's input added to its output)"
    return edit and Edit(edit.text + note, edit.marks)


def _remove_skip(model: Model) -> Edit | None:
    joins = [s for s in model.forward if "+" in s.text and "=" in s.text]
    if not joins:
        return None
    join = joins[0]
    return Edit(
        f"in forward, `{join.text}`: drop the `+` and its second operand",
        (Mark(join.line, True, "drop the `+` and its second operand from the next line"),),
    )


def _add_dense(model: Model) -> Edit | None:
    n = model.of(LINEAR)[-1].width(0)
    if n is None:
        return None
    edit = _insert_before_head(
        model, f"nn.Linear({n}, {n}), nn.ReLU()", "hidden", "x = self.hidden(x)"
    )
    return edit and Edit(edit.text + " (as wide as its input)", edit.marks)


def _remove_dense(model: Model) -> Edit | None:
    linears = model.of(LINEAR)
    if len(linears) < 2:
        return None
    hidden, head = linears[-2], linears[-1]
    n_in, n_out = hidden.width(0), head.width(1)
    delete = _delete(model, hidden, "the activation after it")
    if n_in is None or n_out is None or delete is None:
        return None
    change = _change([(head, head.with_widths(n_in, n_out))], f"{n_in} inputs")
    return Edit(f"{delete.text}, and {change.text}", delete.marks + change.marks)


def _scale_conv(factor: float) -> Writer:
    def write(model: Model) -> Edit | None:
        convs = model.of(CONV)
        first = convs[0]
        c_in, c = first.width(0), first.width(1)
        if c_in is None or c is None:
            return None
        new = max(4, int(c * factor))
        changes = [(first, first.with_widths(c_in, new))]
        norms = [x for x in model.of("BatchNorm2d") if x.text.startswith(f"nn.BatchNorm2d({c}")]
        changes += [(norms[0], f"nn.BatchNorm2d({new})")] if norms else []
        user = convs[1] if len(convs) > 1 else model.of(LINEAR)[-1]
        out = user.width(1)
        if user.width(0) != c or out is None:
            return None
        changes.append((user, user.with_widths(new, out)))
        return _change(changes, f"{c} -> {new} channels")

    return write


def _scale_dense(factor: float) -> Writer:
    def write(model: Model) -> Edit | None:
        linears = model.of(LINEAR)
        if len(linears) < 2:
            return _add_dense(model) if factor > 1 else None
        hidden, nxt = linears[-2], linears[-1]
        n_in, n, n_out = hidden.width(0), hidden.width(1), nxt.width(1)
        if n_in is None or n is None or n_out is None or nxt.width(0) != n:
            return None
        new = max(4, int(n * factor))
        changes = [(hidden, hidden.with_widths(n_in, new)), (nxt, nxt.with_widths(new, n_out))]
        return _change(changes, f"{n} -> {new} units")

    return write


def _rate(layer: Layer) -> float | None:
    given = layer.node.args[0] if layer.node.args else None
    given = next((k.value for k in layer.node.keywords if k.arg == "p"), given)
    return 0.5 if given is None else literal(given)


def _change_rate(layer: Layer, up: bool) -> Edit | None:
    p = _rate(layer)
    if p is None or (up and p >= 0.9) or (not up and p <= 0):
        return None
    new = round(0.5 if up and p < 0.5 else (p + 0.1 if up else p / 2), 3)
    call = copy.deepcopy(layer.node)
    call.args, call.keywords = [ast.Constant(new)], []
    return _change([(layer, ast.unparse(call))], f"dropout {p:g} -> {new:g}")


def _add_dropout(model: Model) -> Edit | None:
    drops = model.of(*DROPOUTS)
    if drops:
        return _change_rate(drops[0], up=True)
    return _insert_before_head(model, "nn.Dropout(0.3)", "dropout", "x = self.dropout(x)")


def _remove_dropout(model: Model) -> Edit | None:
    drops = model.of(*DROPOUTS)
    return _change_rate(drops[0], up=False) if drops else None


def _init(model: Model) -> Edit | None:
    fn = "xavier_uniform_" if "kaiming_normal_" in model.inits else "kaiming_normal_"
    loop = (
        "for m in self.modules():\n"
        "    if isinstance(m, (nn.Conv2d, nn.Linear)):\n"
        f"        nn.init.{fn}(m.weight)"
    )
    text = "at the end of __init__ add:\n" + "\n".join(" " * 8 + s for s in loop.splitlines())
    return Edit(text, (Mark(model.init_end, False, "add here:\n" + loop),))


def _regularise(up: bool) -> Writer:
    def write(model: Model) -> Edit | None:
        wd = model.weight_decay
        if wd is None:
            return None
        if not up and wd <= 0:
            drops = model.of(*DROPOUTS)
            return _change_rate(drops[0], up=False) if drops else None
        new = (1e-4 if wd <= 0 else wd * 10) if up else wd / 10
        line = f"WEIGHT_DECAY = {new:g}"
        if model.weight_decay_line is None:
            mark = Mark(model.class_line, True, f"add here: {line}")
            return Edit(f"set the module constant `{line}` (now {wd:g}), above the class", (mark,))
        mark = Mark(model.weight_decay_line, True, f"change the next line to: {line}")
        return Edit(f"set `{line}` (now {wd:g})", (mark,))

    return write


EDITS: dict[str, Writer] = {
    "ACL": _add_conv,
    "RCL": _remove_conv,
    "ASC": _add_skip,
    "RSC": _remove_skip,
    "ADL": _add_dense,
    "RDL": _remove_dense,
    "AMK": _scale_conv(2.0),
    "RK": _scale_conv(0.5),
    "AMN": _scale_dense(2.0),
    "RN": _scale_dense(0.5),
    "AD": _add_dropout,
    "RD": _remove_dropout,
    "AWI": _init,
    "AR": _regularise(up=True),
    "RR": _regularise(up=False),
}
