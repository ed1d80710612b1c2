"""The export child: rebuild the retrained model, write one format, check it round-trips.

Runs in the sandbox in a new, empty working directory holding only a copy of the
retrained ``model_state.pt``, and writes ``export-<format>/`` there; the run process
copies out the format's model file, ``sample_input.pt``, ``expected_logits.pt`` and
``export.json`` (refusing links and anything not a plain file: see
:mod:`lemo_nade.results.export`), and writes the source, the preprocessing and the model
card itself into ``RUN_DIR/export/``.

Every format is checked against PyTorch on real inputs (the first test images,
normalised as in training): the maximum absolute difference of the logits is stored in
``export.json`` beside ``sample_input.pt`` and ``expected_logits.pt``, which a user (and
the tests) can load in a fresh process to check the exported model again.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lemo_nade.engine.data import split_for_job
from lemo_nade.engine.loaders import load
from lemo_nade.engine.retrain import WEIGHTS
from lemo_nade.records import EvalJob

SAMPLES = 8


def export_model(job: EvalJob, folder: Path, build: Callable[[], nn.Module]) -> None:
    torch.set_num_threads(job.threads or os.cpu_count() or 1)
    model = build()
    state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    split = split_for_job(job)  # the training split's statistics
    x = split.normalize(load(job.dataset, job.data_dir).x_test[:SAMPLES])
    with torch.inference_mode():
        expected = model(x)
    out = folder / f"export-{job.export_format}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    writer = WRITERS[job.export_format]
    files, got = writer(model, x, out)
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


def _state_dict(model: nn.Module, x: torch.Tensor, out: Path) -> tuple[list[str], torch.Tensor]:
    torch.save(model.state_dict(), out / "model_state.pt")
    with torch.inference_mode():
        return ["model_state.pt"], model(x)


def _torchscript(model: nn.Module, x: torch.Tensor, out: Path) -> tuple[list[str], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        traced = torch.jit.trace(model, x)
        traced.save(str(out / "model.ts"))
        loaded = torch.jit.load(str(out / "model.ts"))
    with torch.inference_mode():
        return ["model.ts"], loaded(x)


def _onnx(model: nn.Module, x: torch.Tensor, out: Path) -> tuple[list[str], torch.Tensor]:
    import onnxruntime

    path = out / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter
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


WRITERS = {"state_dict": _state_dict, "torchscript": _torchscript, "onnx": _onnx}
