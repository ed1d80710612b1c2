"""The sandboxed child: what runs one candidate, in a fork or a fresh interpreter.

:func:`run_request` reads an :class:`~lemo_nade.records.EvalJob`, runs the candidate's
code, and writes an :class:`~lemo_nade.records.Evaluation` (``to_dict`` shape) to the
result file atomically. Every way a candidate can fail becomes a status in that file;
the exit code is 0 whenever a result was written. Normally a child of the fork server
(:mod:`lemo_nade.engine.forkserver`) calls it; the fallback is a fresh interpreter,
``python -m lemo_nade.engine.worker REQUEST_JSON RESULT_JSON``, where REQUEST_JSON is
``{"job": {...}, "spec": {...}, "confine": true}`` (the same fields the fork server
gets). Either way the process first confines itself (:func:`lemo_nade.engine.confine.contain`).
Only :mod:`lemo_nade.sandbox` should start this: it is where ``exec`` of generated code
is acceptable, because it runs in a throw-away process with a scrubbed environment,
resource limits, a temporary working directory and the kernel isolation available. It
imports nothing from the main-process side: what both sides share is
:mod:`lemo_nade.engine.protocol`.

Error texts are short (the candidate's own frames and the exception, at most
:data:`ERROR_LINES` lines) because they are fed back to an LLM.
"""

from __future__ import annotations

import faulthandler
import json
import linecache
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lemo_nade.engine import confine, measure, retrain
from lemo_nade.engine.data import Split, split_for_job
from lemo_nade.engine.protocol import looks_like_oom
from lemo_nade.engine.train import TrainingDiverged, train
from lemo_nade.files import atomic_write
from lemo_nade.records import EvalJob, Evaluation, Metrics, Status

CANDIDATE_FILE = "candidate.py"  # the name candidate frames carry in tracebacks
ERROR_LINES = 15
MIN_ENERGY_SPAN_S = 0.02  # an E2 span shorter than this is below the counters' resolution
ERROR_CHARS = 2000


class StageFailed(Exception):
    """A candidate failed in a known way; carries the status and the LLM-facing text."""

    def __init__(self, status: Status, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.spent_kwh: float | None = None  # energy measured before the failure


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lemo_nade.engine.worker REQUEST_JSON RESULT_JSON", file=sys.stderr)
        return 2
    request = json.loads(Path(args[0]).read_text())
    result = Path(args[1])
    if "spec" not in request:  # a bare EvalJob: no confinement (tests, debugging)
        return run_request(request, result)
    spec = confine.Spec.from_dict(request["spec"])
    features = confine.probe() if request.get("confine", True) else confine.Features()
    confine.contain(spec, features, lambda: run_request(request["job"], result))


def run_request(job_data: dict[str, Any], result: Path) -> int:
    """The candidate process's whole life: evaluate the job, write the result file."""
    faulthandler.enable()  # a segfault in native code still leaves a trace in the log
    job = EvalJob.from_dict(job_data)
    evaluation = run_job(job, log=lambda line: print(line, flush=True))
    write_result(result, evaluation)
    return 0


def run_job(job: EvalJob, log: Callable[[str], None] | None = None) -> Evaluation:
    """Build, shape-check, train and measure ``job.code`` in this process; never raises
    for anything the candidate does."""
    start = time.perf_counter()
    try:
        if job.mode == "export":
            from lemo_nade.engine.export import export_model

            with _stage(Status.FAILED_BUILD, f"exporting as {job.export_format}"):
                export_model(job, Path.cwd(), build=lambda: _build(load_candidate(job.code)))
            return Evaluation(Status.OK, wall_time_s=time.perf_counter() - start)
        metrics = _evaluate(job, log)
    except StageFailed as failed:
        return Evaluation(
            failed.status,
            error=failed.error,
            wall_time_s=time.perf_counter() - start,
            failure_kwh=failed.spent_kwh,
        )
    return Evaluation(Status.OK, metrics, wall_time_s=time.perf_counter() - start)


def write_result(path: Path, evaluation: Evaluation) -> None:
    """Atomically, so the parent never reads half a file; no fsync (the parent reads it
    back at once). NaN stays NaN (a JSON ``NaN`` token, which the parent's ``json.loads``
    reads): Metrics fields such as ``fps_cv`` are floats that may be NaN, not None."""
    atomic_write(path, json.dumps(evaluation.to_dict()), fsync=False)


def _evaluate(job: EvalJob, log: Callable[[str], None] | None) -> Metrics:
    torch.set_num_threads(job.threads or os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with _stage(Status.FAILED_BUILD, "building the model (running the code, then Net())"):
        namespace = load_candidate(job.code)
        torch.manual_seed(job.seed)  # reproducible initial weights
        model = _build(namespace)
        weight_decay = _weight_decay(namespace)
    with _stage(Status.FAILED_DATA, "loading the dataset"):
        split = split_for_job(job, device, log)  # the seeded 9:1 split (and search subset)
    with _stage(Status.FAILED_SHAPE, "forward on a dummy batch"):
        check_shape(model.to(device), split)
    sensors_start = time.perf_counter()
    sensors = measure.sensors_for(device)  # RAPL / NVML where readable, else the estimate
    power = _Power(job.cpu_power_w_per_core, job.ram_power_w_per_gb, device, sensors)
    sensors_s = time.perf_counter() - sensors_start
    checkpoint = retrain.FileCheckpoint(Path.cwd()) if job.mode == "retrain" else None
    whole = None
    try:
        with power.span() as whole:
            with _stage(Status.FAILED_TRAIN, "training"), power.span() as e1:
                result = train(model, split, job, weight_decay, log, checkpoint=checkpoint)
            with _stage(Status.FAILED_TRAIN, "measuring"):
                fields = _measure_trained(model, split, job, power, train_s=e1.wall_s)
            if job.mode == "retrain":  # the held-out test set, once, after training
                with _stage(Status.FAILED_TRAIN, "testing"):
                    fields |= _test_once(model, split, job, power)
                fields["best_epoch"] = result.best_epoch
    except StageFailed as failed:  # what was spent before it failed still counts
        failed.spent_kwh = whole.energy_kwh if whole is not None else None
        raise
    fields["measure_time_s"] += sensors_s
    return Metrics(
        **fields,
        candidate_kwh=whole.energy_kwh,
        E1=e1.energy_kwh,
        E1_parts=e1.parts_kwh,
        energy_sources=e1.sources_text(),
        energy_note=e1.note,
        energy_source=e1.source,
        train_time_s=e1.wall_s,
        epochs_run=result.epochs_run,
        train_images=len(split.x_train),
        device=device.type,
    )


@dataclass(frozen=True)
class _Power:
    """What every energy span of one candidate is read with."""

    cpu_w_per_core: float
    ram_w_per_gb: float
    device: torch.device
    sensors: measure.Sensors

    def span(self) -> AbstractContextManager[measure.Reading]:
        return measure.energy_span(
            self.cpu_w_per_core, self.ram_w_per_gb, self.device, self.sensors
        )


def _measure_trained(
    model: nn.Module, split: Split, job: EvalJob, power: _Power, train_s: float
) -> dict[str, Any]:
    """The trained model's Metrics fields: A1, A2 and E2 (paper Algorithm 1: A1 <-
    Model.eval(train_set); [E2, A2] <- Model.eval(val)), size, FLOPs and speed."""
    with power.span() as e_a1:
        a1, train_loss = measure.accuracy_and_loss(
            model, split.x_train, split.y_train, job.batch_size, split.normalize
        )
    with power.span() as e2:
        a2, val_loss = measure.accuracy_and_loss(
            model, split.x_val, split.y_val, job.batch_size, split.normalize
        )
    start = time.perf_counter()
    flops = measure.flops_per_image(model, split.x_val, split.normalize)
    speed = measure.measure_speed(
        model,
        split.x_val,
        job.batch_size,
        split.normalize,
        budget_s=measure.speed_budget_s(train_s),
        span=power.span(),
    )
    measure_s = time.perf_counter() - start
    e2_kwh, e2_parts = e2.energy_kwh, e2.parts_kwh
    if 0 < e2.wall_s < MIN_ENERGY_SPAN_S:
        passes = [(e_a1, len(split.x_train)), (e2, len(split.x_val))]
        if speed.fps_energy is not None:
            passes.append((speed.fps_energy, speed.fps_images))
        start = time.perf_counter()
        e2_kwh, e2_parts = _resolved_e2(model, split, job, power, passes, e2.wall_s)
        measure_s += time.perf_counter() - start  # any repeat is overhead, counted as such
    return {
        "A1": a1,
        "A2": a2,
        "E2": e2_kwh,
        "E2_parts": e2_parts,
        "F": speed.fps,
        "P": measure.parameter_count(model),
        "params_trainable": measure.trainable_parameter_count(model),
        "model_mb": measure.model_size_mb(model),
        "flops_per_image": flops,
        "fps_batch": speed.fps_batch,
        "fps_cv": speed.fps_cv,
        "latency_ms_p50": speed.latency_ms_p50,
        "latency_ms_p95": speed.latency_ms_p95,
        "threads": speed.threads,
        "measure_time_s": measure_s,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "eval_time_s": e2.wall_s,
        "val_images": len(split.x_val),
    }


def _resolved_e2(
    model: nn.Module,
    split: Split,
    job: EvalJob,
    power: _Power,
    passes: list[tuple[measure.Reading, int]],
    val_s: float,
) -> tuple[float, dict[str, float]]:
    """E2 where the validation pass alone is shorter than ``MIN_ENERGY_SPAN_S``, below the
    counters' resolution (other threads' CPU time moves in scheduler ticks).

    Every eval-mode pass of this model at this batch size has the same energy per image:
    ``passes`` holds the A1 pass over the training split, the validation pass and the
    timed FPS windows on validation inputs, with their image counts. E2 = their energy per
    image x validation images. Where even all of them together are too short, the
    validation pass (``val_s`` seconds) is repeated until it is not."""
    if sum(span.wall_s for span, _ in passes) < MIN_ENERGY_SPAN_S:
        repeats = math.ceil(MIN_ENERGY_SPAN_S / max(val_s, 1e-6))
        with power.span() as again:
            for _ in range(repeats):
                measure.accuracy_and_loss(
                    model, split.x_val, split.y_val, job.batch_size, split.normalize
                )
        passes = [(again, repeats * len(split.x_val))]
    return _per_image_energy(passes, len(split.x_val))


def _test_once(model: nn.Module, split: Split, job: EvalJob, power: _Power) -> dict[str, Any]:
    """The held-out test set's accuracy and energy; saves the trained weights."""
    with power.span() as e3:
        accuracy, images = retrain.test_accuracy(
            model, job.dataset, job.data_dir, split, job.batch_size
        )
    retrain.save_weights(model, Path.cwd())
    return {"test_accuracy": accuracy, "test_images": images, "test_energy_kwh": e3.energy_kwh}


def _per_image_energy(
    passes: list[tuple[measure.Reading, int]], images: int
) -> tuple[float, dict[str, float]]:
    """(kWh, kWh by part) of ``images`` images at the energy per image of ``passes``
    (readings with the images each ran)."""
    scale = images / max(1, sum(n for _, n in passes))
    parts: dict[str, float] = {}
    for span, _ in passes:
        for k, v in span.parts_kwh.items():
            parts[k] = parts.get(k, 0.0) + v * scale
    return sum(parts.values()), parts


def load_candidate(code: str) -> dict[str, Any]:
    """Run the candidate's source as a fresh module; its lines show up in tracebacks."""
    linecache.cache[CANDIDATE_FILE] = (len(code), None, code.splitlines(True), CANDIDATE_FILE)
    namespace: dict[str, Any] = {"__name__": "candidate", "__file__": CANDIDATE_FILE}
    exec(compile(code, CANDIDATE_FILE, "exec"), namespace)
    return namespace


def _build(namespace: dict[str, Any]) -> nn.Module:
    net = namespace.get("Net")
    if not callable(net):
        raise TypeError("the code defines no class Net")
    model = net()
    if not isinstance(model, nn.Module):
        raise TypeError(f"Net() must be a torch.nn.Module; got {type(model).__name__}")
    return model


def _weight_decay(namespace: dict[str, Any]) -> float:
    """The optional module constant ``WEIGHT_DECAY`` (Adam's L2 term), as the offline
    architect writes it; absent means 0."""
    value = namespace.get("WEIGHT_DECAY", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"WEIGHT_DECAY must be a number; got {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"WEIGHT_DECAY must be in [0, 1); got {value}")
    return float(value)


def check_shape(model: nn.Module, split: Split) -> None:
    """Forward two random images of the dataset's shape; the output must be [2, classes]."""
    shape = (2, *split.x_train.shape[1:])
    x = torch.randn(shape, device=split.x_train.device)
    model.eval()
    with torch.no_grad():
        out = model(x)
    expected = [2, split.num_classes]
    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != expected:
        raise StageFailed(
            Status.FAILED_SHAPE,
            f"Net output for an input of shape {list(shape)} is {got}; expected {expected} "
            "(batch, classes: raw logits)",
        )


@contextmanager
def _stage(status: Status, doing: str) -> Iterator[None]:
    """Turn any exception in the block into ``StageFailed`` with the right status."""
    try:
        yield
    except StageFailed:
        raise
    except TrainingDiverged as exc:
        raise StageFailed(Status.FAILED_NAN, f"{doing}: {exc}") from None
    except BaseException as exc:  # the candidate may raise anything, SystemExit included
        oom = isinstance(exc, MemoryError) or (
            isinstance(exc, RuntimeError) and looks_like_oom(str(exc))
        )
        raise StageFailed(
            Status.OOM if oom else status, f"{doing} failed:\n{short_error(exc)}"
        ) from None


def short_error(exc: BaseException) -> str:
    """The candidate's own frames (or the innermost two) and the exception line(s)."""
    frames = traceback.extract_tb(exc.__traceback__)
    shown = [f for f in frames if f.filename == CANDIDATE_FILE] or frames[-2:]
    text = "".join(traceback.format_list(shown))
    text += "".join(traceback.format_exception_only(type(exc), exc))
    lines = text.rstrip().splitlines()[-ERROR_LINES:]
    return "\n".join(lines)[-ERROR_CHARS:]


if __name__ == "__main__":
    sys.exit(main())
