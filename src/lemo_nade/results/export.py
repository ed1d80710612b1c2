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
from lemo_nade.files import atomic_write_json
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
    """Rebuild the retrained model in the sandbox as ``fmt`` and publish it under
    ``RUN_DIR/export/FMT/`` (replacing an earlier export); returns the model card and
    its ``path``."""
    run_dir = Path(run_dir)
    retrained = _retrained(run_dir, fmt)
    with RunStore.open(run_dir, writer=True) as store:
        config = config_from_json(store.config_json())
        record = next(r for r in store.iterations() if r.idx == retrained["iteration"])
        folder = workdir(run_dir, record.idx)
        job = replace(search_job(config, record.code), mode="export", export_format=fmt)
        # this export's own sandbox; one candidate: a fresh interpreter costs less than a
        # fork server's start
        with sandbox.Sandbox(fork_server=False) as box:
            evaluation = box.evaluate(job, TIMEOUT_S, config.memory_limit_mb, workdir=folder)
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
        atomic_write_json(produced / "preprocess.json", preprocess)
        card = _model_card(store.run_id, record.idx, config.dataset, fmt, info, retrained)
        atomic_write_json(produced / "model_card.json", card)
        final = _publish(produced, run_dir / "export" / fmt)
        store.add_event("exported", {"format": fmt, "max_abs_diff": info["max_abs_diff"]})
    return {"path": str(final), **card}


def _retrained(run_dir: Path, fmt: str) -> dict[str, Any]:
    """``retrain.json`` of ``run_dir``, once the request is known to make sense."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: unknown {fmt!r}; allowed: {', '.join(FORMATS)}")
    missing = [m for m in EXTRAS.get(fmt, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"--format {fmt} needs {', '.join(missing)}: pip install 'lemo-nade[{fmt}]'"
        )
    if not (run_dir / DB_NAME).is_file():
        raise ExportError(
            f"{run_dir} is not a run directory (no {DB_NAME}); "
            "pass a directory made by `lemo-nade run`"
        )
    if not (run_dir / RESULT).is_file():
        raise ExportError(
            f"{run_dir} has no retrained model; run `lemo-nade retrain {run_dir}` first"
        )
    data: dict[str, Any] = json.loads((run_dir / RESULT).read_text())
    return data


def _model_card(
    run_id: str, idx: int, dataset: str, fmt: str, info: dict[str, Any], retrained: dict[str, Any]
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "candidate": idx,
        "dataset": dataset,
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


def _publish(produced: Path, final: Path) -> Path:
    """Move the finished folder to ``final`` under a temporary name, then rename it into
    place, so ``export/FMT/`` is never half-written."""
    final.parent.mkdir(exist_ok=True)
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.move(str(produced), staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


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
