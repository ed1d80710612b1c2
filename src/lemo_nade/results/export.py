"""``lemo-nade export``: the retrained model as a file a user can ship.

Every format is made from the measured archive ``retrain/NNN/model.pt2`` (the
``torch.export`` program the trusted measuring child measured), never by running the
candidate's code: ``state_dict`` (the archive's weights under the names of the
candidate's ``Net``, whose source goes beside them), ``torchscript`` (``torch.jit.trace``
of the archive's graph; no source needed to load, though TorchScript is deprecated in
recent PyTorch), ``onnx`` (the TorchScript-based exporter on the archive's graph, opset
default; needs the ``onnx`` extra: ``pip install 'lemo-nade[onnx]'``) and ``pt2`` (the
archive as is; ``torch.export.load``). Each goes to ``RUN_DIR/export/<format>/`` with:

- the model file, and ``model.py`` (the candidate's source, which defines ``Net``: text
  for the user, not run by the export);
- ``preprocess.json``: input shape, per-channel mean and std in 0..255 pixel units
  (``x = (uint8_image - mean) / std``, NCHW float32);
- ``model_card.json``: dataset, run id, candidate, metrics and how they were measured;
- ``sample_input.pt`` and ``expected_logits.pt``: real test images and PyTorch's logits,
  to check the exported file (``export.json`` has the max abs difference found).

The export child runs in the sandbox with no candidate code (the archive is untrusted
data: it is loaded without unpickling, ATen-only), in a new, empty working directory
(``retrain/NNN/work-export-<format>/``) that holds a copy of the archive. The child
writes ``export-<format>/`` there; the run process copies out only the files this
format makes, each through :mod:`lemo_nade.sandbox.handover` (a regular file, no links,
at most the child's file size limit; anything else fails the export in one line),
re-checks ``export.json`` and writes ``model.py``, ``preprocess.json``,
``model_card.json`` and ``export.json`` itself, into a folder of its own
(``export/.<format>.tmp``) that is then renamed into place, so nothing is left
half-written and nothing is written where the child could have planted a link.

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
from lemo_nade.config import RunConfig, config_from_json
from lemo_nade.files import atomic_write, atomic_write_json
from lemo_nade.numbers import finite
from lemo_nade.records import EvalJob, Status
from lemo_nade.results.retrain import (
    ARCHIVE,
    ARTIFACT_LIMIT_BYTES,
    JSON_LIMIT_BYTES,
    RESULT,
    RetrainError,
    fresh_dir,
    remove,
    workdir,
)
from lemo_nade.runs import search_job
from lemo_nade.sandbox.handover import copy_regular, opened_dir, read_regular
from lemo_nade.store import DB_NAME, RunStore

FORMATS = ("state_dict", "torchscript", "onnx", "pt2")
EXTRAS = {"onnx": ("onnx", "onnxruntime")}
TIMEOUT_S = 1800.0
# What the export child may hand over, per format, besides the check files: nothing else
# it writes is copied.
MODEL_FILES = {
    "state_dict": ("model_state.pt",),
    "torchscript": ("model.ts",),
    "onnx": ("model.onnx",),
    "pt2": ("model.pt2",),
}
CHECK_FILES = ("sample_input.pt", "expected_logits.pt")
INFO = "export.json"


class ExportError(RetrainError):
    """Bad export request: unknown format, missing extra, nothing retrained yet."""


def export(run_dir: Path, fmt: str) -> dict[str, Any]:
    """Write the measured archive in the sandbox as ``fmt`` and publish it under
    ``RUN_DIR/export/FMT/`` (replacing an earlier export); returns the model card and
    its ``path``."""
    run_dir = Path(run_dir)
    retrained = _retrained(run_dir, fmt)
    with RunStore.open(run_dir, writer=True) as store:
        config = config_from_json(store.config_json())
        record = next(r for r in store.iterations() if r.idx == retrained["iteration"])
        folder = workdir(run_dir, record.idx)
        # no candidate code in the child: it loads the archive only
        job = replace(search_job(config, ""), mode="export", export_format=fmt)
        staging = run_dir / "export" / f".{fmt}.tmp"
        try:
            fresh_dir(staging)
            info = _export_in_child(folder, job, staging, config)
            _write_own_files(staging, record.code, info)
            card = _model_card(store.run_id, record.idx, config.dataset, fmt, info, retrained)
            atomic_write_json(staging / "model_card.json", card)
        except BaseException:
            remove(staging)
            raise
        final = _publish(staging, run_dir / "export" / fmt)
        store.add_event("exported", {"format": fmt, "max_abs_diff": info["max_abs_diff"]})
    return {"path": str(final), **card}


def _export_in_child(
    folder: Path, job: EvalJob, staging: Path, config: RunConfig
) -> dict[str, Any]:
    """Run the export child in a fresh ``folder/work-export-FMT/`` holding a copy of the
    measured archive, hand its files over into ``staging``, remove its folder; returns
    the checked ``export.json``."""
    fmt = job.export_format
    child = folder / f"work-export-{fmt}"
    try:
        fresh_dir(child)
        if not copy_regular(folder / ARCHIVE, child / ARCHIVE, ARTIFACT_LIMIT_BYTES):
            raise ExportError(
                f"{folder / ARCHIVE} is missing or not a regular file; "
                f"run `lemo-nade retrain {folder.parent.parent} --fresh` again"
            )
        job = replace(job, artifact=str(child / ARCHIVE))
        # this export's own sandbox; one candidate: a fresh interpreter costs less than a
        # fork server's start
        with sandbox.Sandbox(fork_server=False) as box:
            evaluation = box.evaluate(  # no candidate code: nothing for the policy to check
                job, TIMEOUT_S, config.memory_limit_mb, workdir=child, check_policy=False
            )
        if evaluation.status is not Status.OK:
            raise RuntimeError(
                f"exporting as {fmt} failed ({evaluation.status.value}): "
                + (evaluation.error.strip().splitlines() or ["no error text"])[-1]
            )
        return _hand_over(child / f"export-{fmt}", staging, fmt)
    finally:
        remove(child)


def _hand_over(produced: Path, staging: Path, fmt: str) -> dict[str, Any]:
    """Copy this format's files out of the child's ``produced`` folder into ``staging``
    (refusing links, non-regular and oversized files); returns its checked
    ``export.json``. Anything missing or refused fails the export in one line."""
    with opened_dir(produced) as fd:
        if fd is None:
            raise RuntimeError(f"exporting as {fmt} failed: no {produced.name}/ folder was made")
        info = _checked_info(read_regular(INFO, JSON_LIMIT_BYTES, dir_fd=fd), fmt)
        for name in (*MODEL_FILES[fmt], *CHECK_FILES):
            if not copy_regular(name, staging / name, ARTIFACT_LIMIT_BYTES, dir_fd=fd):
                raise RuntimeError(
                    f"exporting as {fmt} failed: {name} is missing, a link, not a regular "
                    f"file, or over {ARTIFACT_LIMIT_BYTES // 2**20} MB"
                )
    return info


def _checked_info(raw: bytes | None, fmt: str) -> dict[str, Any]:
    """The child's ``export.json`` rebuilt from the fields it must hold, of the types they
    must have (the child's other keys go no further); a one-line RuntimeError if not."""
    try:
        data = json.loads(raw) if raw is not None else None
        if not isinstance(data, dict):
            raise ValueError("missing or not an object")
        if data.get("files") != list(MODEL_FILES[fmt]):
            raise ValueError(f"files must be {list(MODEL_FILES[fmt])}")
        shape = data.get("input_shape")
        if not isinstance(shape, list) or not shape or not all(_count(n) for n in shape):
            raise ValueError("input_shape must be positive whole numbers")
        mean, std = _numbers(data.get("mean"), shape[0]), _numbers(data.get("std"), shape[0])
        diff = data.get("max_abs_diff")
        checked_on, version = data.get("checked_on"), data.get("torch")
        if isinstance(diff, bool) or not isinstance(diff, (int, float)):
            raise ValueError("max_abs_diff must be a number")
        if not isinstance(checked_on, str) or not isinstance(version, str):
            raise ValueError("checked_on and torch must be text")
    except (ValueError, RecursionError) as exc:
        raise RuntimeError(
            f"exporting as {fmt} failed: the child's {INFO} is unusable ({exc})"
        ) from None
    return {
        "format": fmt,
        "files": list(MODEL_FILES[fmt]),
        "max_abs_diff": float(diff),
        "checked_on": checked_on[:200],
        "input_shape": shape,
        "mean": mean,
        "std": std,
        "torch": version[:100],
    }


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _numbers(value: Any, count: int) -> list[float]:
    """``value`` as ``count`` finite numbers (one per channel), or ValueError."""
    numbers = [finite(v) for v in value] if isinstance(value, list) else []
    if len(numbers) != count or any(n is None for n in numbers):
        raise ValueError(f"mean and std must be {count} finite numbers")
    return [n for n in numbers if n is not None]


def _write_own_files(staging: Path, code: str, info: dict[str, Any]) -> None:
    """What the run process writes itself: the source, the preprocessing, the checked
    ``export.json`` (the model card comes after, from the same ``info``)."""
    atomic_write(staging / "model.py", code)
    preprocess = {
        "input_shape": info["input_shape"],
        "layout": "NCHW float32",
        "mean": info["mean"],
        "std": info["std"],
        "formula": "x = (uint8_image - mean) / std, per channel",
    }
    atomic_write_json(staging / "preprocess.json", preprocess)
    atomic_write_json(staging / INFO, info)


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


def _publish(staging: Path, final: Path) -> Path:
    """Rename the finished ``staging`` folder (a sibling of ``final``) into place, so
    ``export/FMT/`` is never half-written."""
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
