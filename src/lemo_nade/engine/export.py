"""The export child: the measured archive, written as one format and checked.

Runs in the sandbox (``EvalJob.mode == "export"``) in a new, empty working directory
holding only a copy of the retrained model's ``model.pt2``, the ``torch.export`` archive
that the measuring child measured. No candidate code runs here: the archive is loaded
as :mod:`lemo_nade.engine.artifact` loads it for measuring (no unpickling, ATen-only
graphs), so the exported model is exactly the measured one. The child writes
``export-<format>/``; the run process copies out the format's model file,
``sample_input.pt``, ``expected_logits.pt`` and ``export.json`` (refusing links and
anything not a plain file: see :mod:`lemo_nade.results.export`), and writes the source,
the preprocessing and the model card itself into ``RUN_DIR/export/``.

Every format is checked against the archive on real inputs (the first test images,
normalised as in training): the maximum absolute difference of the logits is stored in
``export.json`` beside ``sample_input.pt`` and ``expected_logits.pt``, which a user (and
the tests) can load in a fresh process to check the exported model again.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lemo_nade.engine import artifact
from lemo_nade.engine.data import split_for_job
from lemo_nade.engine.loaders import load
from lemo_nade.engine.phases import Graph
from lemo_nade.records import EvalJob

SAMPLES = 8
Program = torch.export.ExportedProgram


def export_model(job: EvalJob, folder: Path) -> None:
    """Write ``folder/export-FMT/`` from the archive at ``job.artifact``."""
    torch.set_num_threads(job.threads or os.cpu_count() or 1)
    program = artifact.load(Path(job.artifact).read_bytes())
    model = program.module()
    split = split_for_job(job)  # the training split's statistics
    x = split.normalize(load(job.dataset, job.data_dir).x_test[:SAMPLES])
    with torch.inference_mode():
        expected = model(x)
    out = folder / f"export-{job.export_format}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    writer = WRITERS[job.export_format]
    files, got = writer(program, x, out)
    diff = float((got - expected).abs().max())
    torch.save(x, out / "sample_input.pt")
    torch.save(expected, out / "expected_logits.pt")
    info: dict[str, Any] = {
        "format": job.export_format,
        "files": files,
        "max_abs_diff": diff,
        "checked_on": f"{len(x)} test images",
        "input_shape": list(x.shape[1:]),
        "mean": split.mean.tolist(),
        "std": split.std.tolist(),
        "torch": torch.__version__,
    }
    (out / "export.json").write_text(json.dumps(info, indent=2))


def _state_dict(program: Program, x: torch.Tensor, out: Path) -> tuple[list[str], torch.Tensor]:
    """The archive's weights under the names of the candidate's ``Net`` (its source goes
    beside them as ``model.py``); checked by loading them back into the graph."""
    weights = {k: v.detach().cpu() for k, v in program.module().state_dict().items()}
    torch.save(weights, out / "model_state.pt")
    check = program.module()
    check.load_state_dict(torch.load(out / "model_state.pt", weights_only=True))
    with torch.inference_mode():
        return ["model_state.pt"], check(x)


def _pt2(program: Program, x: torch.Tensor, out: Path) -> tuple[list[str], torch.Tensor]:
    """The archive itself (``torch.export.load``), as measured."""
    data = artifact.export_bytes_of(program)
    (out / "model.pt2").write_bytes(data)
    with torch.inference_mode():
        return ["model.pt2"], artifact.load(data).module()(x)


def _torchscript(program: Program, x: torch.Tensor, out: Path) -> tuple[list[str], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated; tracing warns
        traced = torch.jit.trace(program.module(), x)
        traced.save(str(out / "model.ts"))
        loaded = torch.jit.load(str(out / "model.ts"))
    with torch.inference_mode():
        return ["model.ts"], loaded(x)


def _onnx(program: Program, x: torch.Tensor, out: Path) -> tuple[list[str], torch.Tensor]:
    import onnxruntime

    path = out / "model.onnx"
    model: nn.Module = Graph(program)  # the exporter switches modes: a no-op on a graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x.numpy()})
    return ["model.onnx"], torch.from_numpy(logits)


WRITERS = {"state_dict": _state_dict, "torchscript": _torchscript, "onnx": _onnx, "pt2": _pt2}
