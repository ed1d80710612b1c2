"""The candidate's hand-over: a torch.export program plus its weights, no candidate Python.

Candidate side: :func:`export_bytes` turns the trained model (eval mode) into a ``.pt2``
archive. Measuring side: :func:`load` turns such bytes back into a runnable graph module
without executing anything the archive could smuggle in: the archive's entries are
checked first (no pickled payloads, no AOTInductor libraries, no extra files), every
``torch.load`` while loading is forced to ``weights_only=True`` (torch.export's loader
falls back to a full unpickle otherwise), and the graph's calls must be ATen/prims ops.
"""

from __future__ import annotations

import io
import json
import zipfile

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from lemo_nade.engine import graphcheck, loadguard
from lemo_nade.engine.protocol import MAX_ARTIFACT_BYTES


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


def load(data: bytes) -> torch.export.ExportedProgram:
    """The exported program in ``data``; raises ArtifactError for anything unexpected."""
    if len(data) > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"artifact of {len(data)} bytes is over the limit")
    _check_entries(data)
    loadguard.memoise_schema_hints()
    try:
        with loadguard.no_code():
            program = torch.export.load(io.BytesIO(data))
    except loadguard.CodeRefused as exc:
        raise ArtifactError(f"artifact refused: {exc}") from None
    except Exception as exc:  # a malformed archive: the loader's own message, first line
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ArtifactError(f"artifact cannot be loaded: {type(exc).__name__}: {first}") from None
    try:
        graphcheck.check(program)
    except graphcheck.GraphRefused as exc:
        raise ArtifactError(f"artifact refused: {exc}") from None
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


def held_tensors(program: torch.export.ExportedProgram) -> list[torch.Tensor]:
    """Every tensor the program holds, once each: parameters, buffers, lifted constants."""
    held = [*program.state_dict.values(), *program.constants.values()]
    return list({id(t): t for t in held if isinstance(t, torch.Tensor)}.values())


def tensor_elements(program: torch.export.ExportedProgram) -> int:
    """Every number the program holds: parameters, buffers and lifted constants (a
    complex number counts as two; the graph may not reinterpret a tensor's dtype, see
    :mod:`lemo_nade.engine.graphcheck`)."""
    return sum(t.numel() * (2 if t.is_complex() else 1) for t in held_tensors(program))
