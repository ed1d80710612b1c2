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
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lemo_nade.engine import confine, measure, phases, retrain, structure
from lemo_nade.engine.data import Split, split_for_job
from lemo_nade.engine.measuring import Power, measure_trained
from lemo_nade.engine.prepared import load_prepared, load_test
from lemo_nade.engine.protocol import EVAL_FILE, TRAIN_FILE, looks_like_oom
from lemo_nade.engine.train import TrainingDiverged, train
from lemo_nade.files import atomic_write
from lemo_nade.records import EvalJob, Evaluation, Metrics, Status

CANDIDATE_FILE = "candidate.py"  # the name candidate frames carry in tracebacks
ERROR_LINES = 15
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
    # A fork of the server inherits its cached temporary directory (torch's imports
    # asked for it there): this child's is its own working directory (TMPDIR).
    tempfile.tempdir = None
    job = EvalJob.from_dict(job_data)
    evaluation = run_job(job, log=lambda line: print(line, flush=True))
    write_result(result, evaluation)
    return 0


def run_job(job: EvalJob, log: Callable[[str], None] | None = None) -> Evaluation:
    """Build, shape-check, train and measure ``job.code`` in this process; never raises
    for anything the candidate does."""
    start = time.perf_counter()
    try:
        if job.mode == "export":  # from the measured archive: no candidate code runs
            from lemo_nade.engine.export import export_model

            with _stage(Status.FAILED_EXPORT, f"exporting as {job.export_format}"):
                export_model(job, Path.cwd())
            return Evaluation(Status.OK, wall_time_s=time.perf_counter() - start)
        if job.phase != "all":
            return _phase(job, log, start)
        metrics = _evaluate(job, log)
    except StageFailed as failed:
        return Evaluation(
            failed.status,
            error=failed.error,
            wall_time_s=time.perf_counter() - start,
            failure_kwh=failed.spent_kwh,
        )
    return Evaluation(Status.OK, metrics, wall_time_s=time.perf_counter() - start)


def _phase(job: EvalJob, log: Callable[[str], None] | None, start: float) -> Evaluation:
    """One process of the split search protocol (:mod:`lemo_nade.engine.phases`)."""
    metrics = None
    if job.phase == "prepare":
        with _stage(Status.FAILED_DATA, "preparing the dataset"):
            phases.run_prepare(job)
    elif job.phase == "train":
        _train_and_hand_over(job, log)
    elif job.phase == "measure":
        metrics = _measure_handed_over(job)
    else:
        raise StageFailed(Status.CRASHED, f"unknown phase {job.phase!r}")
    return Evaluation(Status.OK, metrics, wall_time_s=time.perf_counter() - start)


def _train_and_hand_over(job: EvalJob, log: Callable[[str], None] | None) -> None:
    """The candidate's process: build, shape-check, train, export. No metric leaves it."""
    device, model, weight_decay = _device_and_model(job)
    with _stage(Status.FAILED_DATA, "loading the prepared training data"):
        split = load_prepared(Path(job.prepared) / TRAIN_FILE, device)
    with _stage(Status.FAILED_SHAPE, "forward on a dummy batch"):
        check_shape(model.to(device), split)
    # retrain: a checkpoint after every epoch, in this process's working directory
    checkpoint = retrain.FileCheckpoint(Path.cwd()) if job.mode == "retrain" else None
    with _stage(Status.FAILED_TRAIN, "training"):
        train(model, split, job, weight_decay, log, checkpoint=checkpoint)
    with _stage(Status.FAILED_EXPORT, "exporting the trained model with torch.export"):
        phases.hand_over(model, split)


def _measure_handed_over(job: EvalJob) -> Metrics:
    """The measuring process (never runs candidate code): every metric but E1."""
    torch.set_num_threads(job.threads or os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with _stage(Status.FAILED_DATA, "loading the prepared evaluation data"):
        split = load_prepared(Path(job.prepared) / EVAL_FILE, device)
    test = None
    if job.mode == "retrain":  # read now: the file is out of reach once the graph runs
        with _stage(Status.FAILED_DATA, "loading the test set"):
            test = load_test(Path(job.prepared) / EVAL_FILE, device)
    with _stage(Status.FAILED_EXPORT, "loading the exported model"):
        program, model = phases.load_graph(Path(job.artifact), device)
    confine.forget_read_paths()  # the graph runs next: no file it could read labels from
    sensors = measure.sensors_for(device)
    power = Power(job.cpu_power_w_per_core, job.ram_power_w_per_gb, device, sensors)
    with power.span() as whole, _stage(Status.FAILED_TRAIN, "measuring the exported model"):
        fields = measure_trained(model, split, job, power, train_s=job.train_time_s)
        if test is not None:  # the held-out test set, once, after everything else
            fields |= _test_once(model, split, test, job, power)
    fields |= phases.graph_sizes(program)
    fields["structure"] = structure.safe_structure(program)  # for the instruction checker
    return Metrics(
        **fields,
        E1=0.0,  # the parent's: measured from outside the candidate's process
        candidate_kwh=whole.energy_kwh,
        energy_sources=whole.sources_text(),
        energy_note=whole.note,
        energy_source=whole.source,
        train_images=len(split.x_train),
        device=device.type,
    )


def write_result(path: Path, evaluation: Evaluation) -> None:
    """Atomically, so the parent never reads half a file; no fsync (the parent reads it
    back at once). NaN stays NaN (a JSON ``NaN`` token, which the parent's ``json.loads``
    reads): Metrics fields such as ``fps_cv`` are floats that may be NaN, not None."""
    atomic_write(path, json.dumps(evaluation.to_dict()), fsync=False)


def _device_and_model(job: EvalJob) -> tuple[torch.device, nn.Module, float]:
    """Threads and device set; the candidate's code run and ``Net()`` built (seeded), with
    its ``WEIGHT_DECAY``."""
    torch.set_num_threads(job.threads or os.cpu_count() or 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with _stage(Status.FAILED_BUILD, "building the model (running the code, then Net())"):
        namespace = load_candidate(job.code)
        torch.manual_seed(job.seed)  # reproducible initial weights
        model = _build(namespace)
        weight_decay = _weight_decay(namespace)
    return device, model, weight_decay


def _evaluate(job: EvalJob, log: Callable[[str], None] | None) -> Metrics:
    device, model, weight_decay = _device_and_model(job)
    with _stage(Status.FAILED_DATA, "loading the dataset"):
        split = split_for_job(job, device, log)  # the seeded 9:1 split (and search subset)
    with _stage(Status.FAILED_SHAPE, "forward on a dummy batch"):
        check_shape(model.to(device), split)
    sensors_start = time.perf_counter()
    sensors = measure.sensors_for(device)  # RAPL / NVML where readable, else the estimate
    power = Power(job.cpu_power_w_per_core, job.ram_power_w_per_gb, device, sensors)
    sensors_s = time.perf_counter() - sensors_start
    whole = None
    try:
        with power.span() as whole:
            with _stage(Status.FAILED_TRAIN, "training"), power.span() as e1:
                result = train(model, split, job, weight_decay, log)
            with _stage(Status.FAILED_TRAIN, "measuring"):
                fields = measure_trained(model, split, job, power, train_s=e1.wall_s)
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


def _test_once(
    model: nn.Module,
    split: Split,
    test: tuple[torch.Tensor, torch.Tensor],
    job: EvalJob,
    power: Power,
) -> dict[str, Any]:
    """The held-out test set's accuracy and energy (retrain's measuring child), normalised
    with the training split's statistics."""
    x, y = test
    with power.span() as e3:
        accuracy, _loss = measure.accuracy_and_loss(model, x, y, job.batch_size, split.normalize)
    return {"test_accuracy": accuracy, "test_images": len(x), "test_energy_kwh": e3.energy_kwh}


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
    """The candidate's own frames (or the innermost two) and the exception line(s). A
    library's frame names its file from the package on (``torch/nn/modules/module.py``):
    the error goes into the next prompt, maybe to a hosted model, and a path on this
    machine says nothing to it (a ``Net`` without ``forward`` fails in torch's frames)."""
    frames = traceback.extract_tb(exc.__traceback__)
    shown = [f for f in frames if f.filename == CANDIDATE_FILE] or frames[-2:]
    for frame in shown:
        frame.filename = _package_path(frame.filename)
    text = "".join(traceback.format_list(shown))
    text += "".join(traceback.format_exception_only(type(exc), exc))
    lines = text.rstrip().splitlines()[-ERROR_LINES:]
    return "\n".join(lines)[-ERROR_CHARS:]


def _package_path(filename: str) -> str:
    """``filename`` from its package on, when it is an installed one, else its name."""
    _, packages, inside = filename.rpartition("-packages" + os.sep)
    return inside if packages else os.path.basename(filename)


if __name__ == "__main__":
    sys.exit(main())
