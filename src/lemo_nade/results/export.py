"""``lemo-nade export``: the retrained model as a file a user can ship.

Formats: ``state_dict`` (weights + the source that defines ``Net``), ``torchscript``
(``torch.jit.trace``; no source needed to load, though TorchScript is deprecated in
recent PyTorch) and ``onnx`` (the TorchScript-based exporter, opset default; needs the
``onnx`` extra: ``pip install 'lemo-nade[onnx]'``). Each goes to
``RUN_DIR/export/<format>/`` with:

- the model file, and ``model.py`` (the candidate's source, which defines ``Net``);
- ``preprocess.json``: input shape, per-channel mean and std in 0..255 pixel units
  (``x = (uint8_image - mean) / std``, NCHW float32);
- ``model_card.json``: dataset, run id, candidate, metrics and how they were measured;
- ``sample_input.pt`` and ``expected_logits.pt``: real test images and PyTorch's logits,
  to check the exported file (``export.json`` has the max abs difference found).

The model is rebuilt from its code in the sandbox, like any candidate. The folder is
written under a temporary name and renamed, so nothing is left half-written.

Pure main-process side: no torch import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from lemo_nade import sandbox
from lemo_nade.config import config_from_json
from lemo_nade.records import Status
from lemo_nade.results.retrain import RESULT, RetrainError, workdir
from lemo_nade.runs import search_job
from lemo_nade.store import DB_NAME, RunStore

FORMATS = ("state_dict", "torchscript", "onnx")
EXTRAS = {"onnx": ("onnx", "onnxruntime")}
TIMEOUT_S = 1800.0


class ExportError(RetrainError):
    """Bad export request: unknown format, missing extra, nothing retrained yet."""


def export(run_dir: Path, fmt: str) -> dict[str, Any]:
    if fmt not in FORMATS:
        raise ExportError(f"--format: unknown {fmt!r}; allowed: {', '.join(FORMATS)}")
    missing = [m for m in EXTRAS.get(fmt, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"--format {fmt} needs {', '.join(missing)}: pip install 'lemo-nade[{fmt}]'"
        )
    run_dir = Path(run_dir)
    result_path = run_dir / RESULT
    if not (run_dir / DB_NAME).is_file():
        raise ExportError(
            f"{run_dir} is not a run directory (no {DB_NAME}); "
            "pass a directory made by `lemo-nade run`"
        )
    if not result_path.is_file():
        raise ExportError(
            f"{run_dir} has no retrained model; run `lemo-nade retrain {run_dir}` first"
        )
    retrained = json.loads(result_path.read_text())
    with RunStore.open(run_dir, writer=True) as store:
        config = config_from_json(store.config_json())
        record = next(r for r in store.iterations() if r.idx == retrained["iteration"])
        folder = workdir(run_dir, record.idx)
        job = replace(search_job(config, record.code), mode="export", export_format=fmt)
        evaluation = sandbox.evaluate(job, TIMEOUT_S, config.memory_limit_mb, workdir=folder)
        produced = folder / f"export-{fmt}"
        if evaluation.status is not Status.OK or not (produced / "export.json").is_file():
            raise RuntimeError(
                f"exporting as {fmt} failed ({evaluation.status.value}): "
                + (evaluation.error.strip().splitlines() or ["no error text"])[-1]
            )
        info = json.loads((produced / "export.json").read_text())
        (produced / "model.py").write_text(record.code)
        preprocess = {
            "input_shape": info["input_shape"],
            "layout": "NCHW float32",
            "mean": info["mean"],
            "std": info["std"],
            "formula": "x = (uint8_image - mean) / std, per channel",
        }
        (produced / "preprocess.json").write_text(json.dumps(preprocess, indent=2))
        card = {
            "run_id": store.run_id,
            "candidate": record.idx,
            "dataset": config.dataset,
            "format": fmt,
            "files": [*info["files"], "model.py"],
            "metrics": {k: retrained.get(k) for k in _CARD_KEYS},
            "how_measured": (
                "test accuracy once on the held-out test set after retraining with "
                f"{retrained.get('protocol')}; FPS median of timed windows; energy source "
                f"{retrained.get('energy_source')}"
            ),
            "export_check": {"max_abs_diff": info["max_abs_diff"], "on": info["checked_on"]},
            "torch": info["torch"],
        }
        (produced / "model_card.json").write_text(json.dumps(card, indent=2))
        final = run_dir / "export" / fmt
        final.parent.mkdir(exist_ok=True)
        staging = final.with_name(f".{fmt}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.move(str(produced), staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        store.add_event("exported", {"format": fmt, "max_abs_diff": info["max_abs_diff"]})
    return {"path": str(final), **card}


_CARD_KEYS = (
    "test_accuracy",
    "validation_accuracy",
    "params",
    "fps",
    "latency_ms_p50",
    "latency_ms_p95",
    "inference_kwh_pue_per_image",
    "energy_source",
)
