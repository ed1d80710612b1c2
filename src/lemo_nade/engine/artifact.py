"""The candidate's hand-over: a torch.export program plus its weights, no candidate Python.

Candidate side: :func:`export_bytes` turns the trained model (eval mode) into a ``.pt2``
archive. Measuring side: :func:`load` turns such bytes back into a runnable graph module
without executing anything the archive could smuggle in: the archive's entries are
checked first (no pickled payloads, no AOTInductor libraries, no extra files), every
``torch.load`` while loading is forced to ``weights_only=True`` (torch.export's loader
falls back to a full unpickle otherwise), and the graph's calls must be ATen/prims ops.
"""

from __future__ import annotations

import contextlib
import io
import json
import operator
import typing
import zipfile
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from lemo_nade.engine.protocol import MAX_ARTIFACT_BYTES

_ALLOWED_NAMESPACES = frozenset({"aten", "prims"})
_ALLOWED_PY_CALLS = frozenset({operator.getitem})


class ArtifactError(Exception):
    """The candidate's model could not be exported, or an artifact is not acceptable."""


def export_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """The model in eval mode as a ``torch.export`` archive with a dynamic batch size.

    Raises whatever the exporter raises (data-dependent control flow, unsupported
    Python), and ArtifactError for a forward that fixes the batch size: the caller
    reports it as ``failed_export``, which goes back to the LLM.

    The batch dimension is ``Dim.AUTO`` (dynamic unless the code fixes it, checked
    after tracing) rather than a named range: the same graph, 20% less exporting time
    on a small CNN, and a clearer message when the code does fix it."""
    model.eval()
    program = torch.export.export(
        model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},), strict=False
    )
    _check_batch_dynamic(program, len(example))
    return export_bytes_of(program)


def _check_batch_dynamic(program: torch.export.ExportedProgram, example_batch: int) -> None:
    inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" and node.name in inputs else None
        if isinstance(value, torch.Tensor) and is_concrete_int(value.shape[0]):
            raise ArtifactError(
                f"forward only works for a batch of exactly {example_batch} images: some "
                "operation fixes the batch size (a reshape to a constant shape such as "
                f"x.view({example_batch}, -1), or int(x.size(0)) turning it into a Python "
                "number). Keep the batch dimension free: x.flatten(1) or "
                "x.view(x.size(0), -1)."
            )


def export_bytes_of(program: torch.export.ExportedProgram) -> bytes:
    """An exported program as ``.pt2`` archive bytes."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _memoise_schema_hints() -> None:
    """torch.export's loader calls ``typing.get_type_hints`` on its schema dataclasses
    once per deserialised object (hundreds per graph, about a third of loading a small
    model). The schema classes never change while the process lives, so the loader's
    module gets a ``typing`` whose ``get_type_hints`` remembers its answer per class
    and namespace; everything else is the real ``typing``. Set up where the fork server
    warms the loader, so every measuring child inherits the answers."""
    from torch._export.serde import serialize

    if isinstance(serialize.typing, _HintsMemo):
        return
    serialize.typing = _HintsMemo()  # type: ignore[assignment]


class _HintsMemo:
    def __init__(self) -> None:
        self._hints: dict[tuple[Any, ...], dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(typing, name)

    def get_type_hints(self, obj: Any, globalns: Any = None, localns: Any = None) -> Any:
        key = (obj, id(globalns), id(localns))
        if key not in self._hints:
            self._hints[key] = typing.get_type_hints(obj, globalns=globalns, localns=localns)
        return self._hints[key]


def load(data: bytes) -> torch.export.ExportedProgram:
    """The exported program in ``data``; raises ArtifactError for anything unexpected."""
    if len(data) > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"artifact of {len(data)} bytes is over the limit")
    _check_entries(data)
    _memoise_schema_hints()
    try:
        with _weights_only():
            program = torch.export.load(io.BytesIO(data))
    except ArtifactError:
        raise
    except Exception as exc:  # a malformed archive: the loader's own message, first line
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ArtifactError(f"artifact cannot be loaded: {type(exc).__name__}: {first}") from None
    _check_graph(program)
    return program


def _check_entries(data: bytes) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ArtifactError(f"artifact is not a torch.export archive: {exc}") from None
    names = archive.namelist()
    for name in names:
        inner = name.split("/", 1)[-1]
        if inner.startswith(("data/aotinductor/", "extra/")) or ".." in name:
            raise ArtifactError(f"artifact holds an unexpected entry: {name}")
        if inner.startswith(("data/weights/", "data/constants/")) and name.endswith("_config.json"):
            try:
                config = json.loads(archive.read(name))
                items = dict(config.get("config", {})).items()
            except (ValueError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
                raise ArtifactError(f"artifact entry {name} is unreadable: {exc}") from None
            for fqn, meta in items:
                if not isinstance(meta, dict):
                    raise ArtifactError(f"artifact entry {fqn!r} is not a plain tensor")
                if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(
                    ("weight_", "tensor_")
                ):
                    raise ArtifactError(f"artifact entry {fqn!r} is not a plain tensor")


@contextlib.contextmanager
def _weights_only() -> Iterator[None]:
    """While loading, every ``torch.load`` is restricted to tensors and plain containers,
    and the two other unpickling paths of torch.export's loader refuse."""
    original = torch.load

    def restricted(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    def refuse(*_: Any, **__: Any) -> Any:
        raise ArtifactError("artifact holds a pickled object")

    from torch.export.pt2_archive import _package

    saved = (_package.pickle, torch._C._pickle_load_obj)
    torch.load = restricted
    _package.pickle = type("NoPickle", (), {"loads": staticmethod(refuse)})  # type: ignore[assignment]
    torch._C._pickle_load_obj = refuse
    try:
        yield
    finally:
        torch.load = original
        _package.pickle, torch._C._pickle_load_obj = saved


def _check_graph(program: torch.export.ExportedProgram) -> None:
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if graph is not None else ():
            if node.op == "call_function" and not _allowed(node.target):
                raise ArtifactError(f"artifact calls {node.target!r}, not an ATen operator")
            if node.op in ("call_module", "call_method"):
                raise ArtifactError(f"artifact has a {node.op} node ({node.target})")


def _allowed(target: Any) -> bool:
    if target in _ALLOWED_PY_CALLS:
        return True
    if isinstance(target, torch._ops.OpOverload):
        return target.namespace in _ALLOWED_NAMESPACES
    return isinstance(target, torch._ops.HigherOrderOperator)


def held_tensors(program: torch.export.ExportedProgram) -> list[torch.Tensor]:
    """Every tensor the program holds, once each: parameters, buffers, lifted constants."""
    held = [*program.state_dict.values(), *program.constants.values()]
    return list({id(t): t for t in held if isinstance(t, torch.Tensor)}.values())


def tensor_elements(program: torch.export.ExportedProgram) -> int:
    """Every number the program holds: parameters, buffers and lifted constants."""
    return sum(t.numel() for t in held_tensors(program))
