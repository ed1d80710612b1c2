"""``lemo-nade retrain``: the chosen candidate, from scratch, under the paper's final
protocol (Sec. 4.2: at most 500 epochs, batch 1024, Adam from lr 0.01, LR x0.1 after a
20-epoch plateau; early stopping is ours), on the full training split (no search
subset), then the held-out test set once.

It runs in the sandbox like a search candidate, across the trust boundary
(:mod:`lemo_nade.sandbox.split`): a trusted child prepares ``train.pt`` (the training
split less the plateau slice: no validation or test labels) and ``eval.pt`` (validation
and test sets); the candidate's child trains on ``train.pt`` and hands over a
``torch.export`` archive; a trusted measuring child loads the archive and computes every
number (A1, A2, test accuracy once, FPS, latency, P, FLOPs, E2, the test pass's energy);
E1 and the hours are measured from outside. The run's ``retrain/NNN/`` folder is the run's
own (the candidate cannot write there): ``sessions.json``, the kept ``checkpoint.pt`` with
its ``progress.json``, and the measured archive ``model.pt2`` (what ``export`` exports).
The training child gets a new, empty ``retrain/NNN/work/`` per session, holding only a
copy of the kept checkpoint; it writes ``checkpoint.pt`` there after every epoch (and
``progress.json`` for the progress bar).
When the child ends (normally, killed, or the command interrupted; or, at the next
session, after the run process itself was killed) the run copies the checkpoint out with
:mod:`lemo_nade.sandbox.handover` (a regular file, no links, at most the child's file
size limit) and removes ``work/``; the run process never writes into ``work/`` while a
child can, and never follows a name in it. So an interrupted retrain continues from its
last epoch when run again. The result goes into the run store (event ``retrained``) and
into ``RUN_DIR/retrain.json``, which ``report`` reads.

Honest accounting after a resume: ``hours`` adds the training time of earlier sessions up
to the checkpoint they left (the child stores it in the checkpoint); ``kwh_pue`` covers
only the session that finished (``resumed_from_epoch`` says from where). ``sessions``
lists every session's starting epoch and protocol, so a protocol changed between
sessions is on record.

Pure main-process side: no torch import.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lemo_nade import sandbox
from lemo_nade.config import RunConfig, build_config, config_from_json
from lemo_nade.engine.confine import FILE_SIZE_LIMIT_BYTES
from lemo_nade.files import atomic_write, atomic_write_json
from lemo_nade.history import IterationRecord, best_of
from lemo_nade.numbers import finite
from lemo_nade.records import EvalJob, Evaluation, Status, final_job
from lemo_nade.runs import search_job
from lemo_nade.sandbox.handover import copy_regular, opened_dir, read_regular
from lemo_nade.sandbox.workdirs import remove_tree
from lemo_nade.score import co2_lbs, energy_to_kwh_pue
from lemo_nade.store import RunStore, StoreError

RESULT = "retrain.json"
PROGRESS = "progress.json"
SESSIONS = "sessions.json"  # one entry per retrain session: from_epoch, protocol
CHECKPOINT = "checkpoint.pt"  # as lemo_nade.engine.retrain names them (child side, torch)
ARCHIVE = "model.pt2"  # the measured torch.export archive, written by the run process
CHILD_DIR = "work"  # the retrain child's working directory, inside retrain/NNN/
# A child cannot write a larger file (RLIMIT_FSIZE): anything larger is not its output.
ARTIFACT_LIMIT_BYTES = FILE_SIZE_LIMIT_BYTES
JSON_LIMIT_BYTES = 1 << 20  # progress.json, sessions.json, export.json
DEFAULT_TIMEOUT_S = 7 * 24 * 3600.0


class RetrainError(StoreError):
    """The run cannot be retrained as asked (no such candidate, nothing succeeded)."""


def workdir(run_dir: Path, idx: int) -> Path:
    """Candidate ``idx``'s retrain folder: the run's own (the child works in a subfolder)."""
    return Path(run_dir) / "retrain" / f"{idx:03d}"


def choose(records: list[IterationRecord], candidate: int | None) -> IterationRecord:
    if candidate is None:
        best = best_of(records)
        if best is None:
            raise RetrainError("the run has no successful candidate to retrain")
        return best
    chosen = next((r for r in records if r.idx == candidate), None)
    if chosen is None:
        raise RetrainError(
            f"candidate {candidate} is not in the run (it has iterations 0..{len(records) - 1})"
        )
    if chosen.status is not Status.OK:
        raise RetrainError(
            f"candidate {candidate} did not succeed ({chosen.status.value}); choose another"
        )
    return chosen


def with_final(config: RunConfig, final: dict[str, Any] | None) -> RunConfig:
    """``config`` with the final protocol's keys in ``final`` changed (the others kept);
    a bad value is a one-line :class:`~lemo_nade.config.ConfigError`."""
    return build_config(config.model_dump(), {"final": final}) if final else config


def retrain(
    run_dir: Path,
    candidate: int | None = None,
    final: dict[str, Any] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Retrain, test, record; returns what was written to ``retrain.json``."""
    with RunStore.open(run_dir, writer=True) as store:
        config = with_final(config_from_json(store.config_json()), final)
        chosen = choose(store.iterations(), candidate)
        folder = workdir(run_dir, chosen.idx)
        resumed, before_s = _prepare(folder, config, chosen.idx)
        final_protocol = final_job(search_job(config, chosen.code), **config.final.model_dump())
        job = replace(final_protocol, mode="retrain")
        store.add_event("retrain_started", {"iteration": chosen.idx, "from_epoch": resumed})
        sessions = _add_session(folder, resumed, config)
        start = time.time()
        evaluation = _run_child(folder, job, timeout_s, config.memory_limit_mb, on_progress)
        if evaluation.status is not Status.OK or evaluation.metrics is None:
            store.add_event(
                "retrain_failed", {"iteration": chosen.idx, "status": evaluation.status.value}
            )
            raise RuntimeError(
                f"retraining candidate {chosen.idx} failed ({evaluation.status.value}): "
                f"{evaluation.error.strip().splitlines()[-1] if evaluation.error else ''}; "
                "run the command again to continue from the last checkpoint"
            )
        seconds = before_s + time.time() - start
        evaluation = _with_epochs(evaluation, _progress(folder))
        result = summarise(chosen, evaluation, config, seconds, resumed, folder)
        result["sessions"] = sessions
        atomic_write_json(Path(run_dir) / RESULT, result)  # NaN becomes null
        store.add_event("retrained", result)
        _retire_exports(Path(run_dir))
    return result


def _prepare(folder: Path, config: RunConfig, idx: int) -> tuple[int, float]:
    """Collect what a killed session left, check the protocol, and give the child a fresh
    ``work/`` with a copy of the kept checkpoint; returns the epoch it resumes from and
    the training seconds before it (0, 0.0 when the kept checkpoint is unusable)."""
    child = folder / CHILD_DIR
    collect(child, folder)  # a session whose run process was killed left it there
    before = _progress(folder)
    resumed = int(before.get("epoch", 0))
    if resumed:
        _check_same_protocol(folder, config, idx)
    fresh_dir(child)
    if resumed and not copy_regular(folder / CHECKPOINT, child / CHECKPOINT, ARTIFACT_LIMIT_BYTES):
        return 0, 0.0  # missing, a link, not a plain file: start over
    return resumed, float(before.get("spent_s", 0.0)) if resumed else 0.0


def _run_child(
    folder: Path,
    job: EvalJob,
    timeout_s: float,
    memory_limit_mb: int | None,
    on_progress: Callable[[dict[str, Any]], None] | None,
) -> Evaluation:
    """The retrain's children, the training one in ``folder/work/``; whatever happens, its
    checkpoint comes out and ``work/`` goes. When they succeeded, the measured archive
    (from the run process's memory, never re-read from ``work/``) is stored as
    ``folder/model.pt2``."""
    child = folder / CHILD_DIR
    try:
        # this retrain's own sandbox; one candidate: a fresh interpreter costs less than a
        # fork server's start
        with sandbox.Sandbox(fork_server=False) as box:
            evaluation = _with_progress(
                child,
                on_progress,
                lambda: box.evaluate(job, timeout_s, memory_limit_mb, workdir=child),
            )
    finally:
        collect(child, folder)
    if evaluation.status is Status.OK:
        if not evaluation.artifact:
            return Evaluation(Status.CRASHED, error="the measured model archive is missing")
        atomic_write(folder / ARCHIVE, evaluation.artifact)
    return evaluation


def collect(child: Path, folder: Path) -> None:
    """Copy the checkpoint (with its progress) out of the ended child's ``child`` folder
    into ``folder``, then remove ``child``. Read through
    :mod:`lemo_nade.sandbox.handover`: a link, FIFO, device or oversized file there counts
    as missing."""
    with opened_dir(child) as fd:
        if fd is not None:
            progress = read_regular(PROGRESS, JSON_LIMIT_BYTES, dir_fd=fd)
            copied = copy_regular(CHECKPOINT, folder / CHECKPOINT, ARTIFACT_LIMIT_BYTES, fd)
            if copied and progress is not None:
                atomic_write(folder / PROGRESS, progress, fsync=False)
    remove(child)


def fresh_dir(path: Path) -> None:
    """``path`` as a new, empty directory (whatever was there, link or not, is removed):
    a child's working directory with nothing planted in it."""
    remove(path)
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        raise RuntimeError(
            f"cannot remove {path} (left by a candidate); remove it by hand"
        ) from None


def remove(path: Path) -> None:
    """Remove ``path`` without following links (a link is unlinked; the tree removal
    follows none inside a directory); never raises: :func:`fresh_dir` finds what stayed."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            remove_tree(path)  # however deep the candidate made it
        else:
            path.unlink()
    except OSError:
        pass


def _with_epochs(evaluation: Evaluation, progress: dict[str, Any]) -> Evaluation:
    """The epochs run and the best epoch, from the checkpoint's progress (the measuring
    child sees only the archive): bookkeeping, not a measured number."""
    assert evaluation.metrics is not None
    epochs = int(progress.get("epoch", 0))
    best = int(progress.get("best_epoch", epochs))
    return replace(
        evaluation, metrics=replace(evaluation.metrics, epochs_run=epochs, best_epoch=best)
    )


def _retire_exports(run_dir: Path) -> None:
    """Exports are of the model retrain.json described before: move them to
    ``export.previous/`` (replacing an older one) so ``export/`` never mixes models."""
    exports, previous = run_dir / "export", run_dir / "export.previous"
    if exports.is_dir():
        shutil.rmtree(previous, ignore_errors=True)
        exports.rename(previous)


def summarise(
    chosen: IterationRecord,
    evaluation: Evaluation,
    config: RunConfig,
    seconds: float,
    resumed: int,
    folder: Path,
) -> dict[str, Any]:
    m = evaluation.metrics
    assert m is not None
    spent = m.candidate_kwh  # training, every eval pass, speed and the test pass
    if spent is None:
        spent = m.E1 + (m.test_energy_kwh or 0.0)
    kwh = energy_to_kwh_pue(spent, config.pue)
    per_image = None
    if m.test_energy_kwh is not None and m.test_images:
        per_image = energy_to_kwh_pue(m.test_energy_kwh / m.test_images, config.pue)
    return {
        "iteration": chosen.idx,
        "test_accuracy": m.test_accuracy,
        "test_images": m.test_images,
        "validation_accuracy": m.A2,
        "training_accuracy": m.A1,
        "params": m.P,
        "epochs": m.epochs_run,
        "best_epoch": m.best_epoch,
        "resumed_from_epoch": resumed,
        "hours": seconds / 3600,
        "kwh_pue": kwh,
        "co2_lbs": co2_lbs(kwh, config.co2_lbs_per_kwh),
        "fps": m.F,
        "latency_ms_p50": m.latency_ms_p50,
        "latency_ms_p95": m.latency_ms_p95,
        "inference_kwh_pue_per_image": per_image,
        "inference_co2_lbs_per_image": (
            co2_lbs(per_image, config.co2_lbs_per_kwh) if per_image is not None else None
        ),
        "energy_source": m.energy_source,
        "protocol": config.final.model_dump(),
        "weights": f"retrain/{folder.name}/{ARCHIVE}",  # relative to the run directory
    }


# What a continued retrain may change: how long it goes on. The others are the optimiser's
# and scheduler's state, which the checkpoint restores as they were.
CAN_CHANGE_ON_RESUME = ("epochs", "early_stopping_patience")


def _check_same_protocol(folder: Path, config: RunConfig, idx: int) -> None:
    """Refuse to continue a checkpoint under a different lr, batch size or plateau rule."""
    sessions = _sessions(folder)
    if not sessions:
        return
    then, now = sessions[-1].get("protocol"), config.final.model_dump()
    if not isinstance(then, dict):
        return
    for key, value in now.items():
        if key not in CAN_CHANGE_ON_RESUME and key in then and then[key] != value:
            option = "--" + key.replace("_", "-")
            raise RetrainError(
                f"{option}: candidate {idx}'s checkpoint was trained with {key} = {then[key]}, "
                f"not {value}; run with {option} {then[key]} to continue, or add --fresh to "
                "start over"
            )


def _sessions(folder: Path) -> list[dict[str, Any]]:
    """The sessions on record (read without following a link: a retrain folder of a run
    made before ``work/`` existed was the child's working directory)."""
    sessions = _json(folder / SESSIONS)
    return [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []


def _add_session(folder: Path, from_epoch: int, config: RunConfig) -> list[dict[str, Any]]:
    """Append this session (starting epoch, protocol, time) to ``folder/sessions.json``."""
    sessions = _sessions(folder) if from_epoch else []
    sessions.append(
        {"from_epoch": from_epoch, "protocol": config.final.model_dump(), "at": time.time()}
    )
    atomic_write_json(folder / SESSIONS, sessions, indent=1)
    return sessions


def _progress(folder: Path) -> dict[str, Any]:
    """``folder/progress.json`` (child-written) reduced to what it should hold: its
    finite numbers, the epochs as whole numbers >= 0; {} when unreadable."""
    data = _json(folder / PROGRESS)
    if not isinstance(data, dict):
        return {}
    kept: dict[str, Any] = {}
    for key in ("epoch", "best_epoch", "train_loss", "val_loss", "spent_s"):
        value = finite(data.get(key))
        if key in ("epoch", "best_epoch") and value is not None:
            kept[key] = max(0, int(value))
        elif value is not None and (key != "spent_s" or value >= 0):
            kept[key] = value
    return kept


def _json(path: Path) -> Any:
    """The JSON at ``path`` through :func:`~lemo_nade.sandbox.handover.read_regular`;
    None when refused or not JSON."""
    data = read_regular(path, JSON_LIMIT_BYTES)
    try:
        return None if data is None else json.loads(data)
    except (ValueError, RecursionError):
        return None


def _with_progress(
    folder: Path,
    on_progress: Callable[[dict[str, Any]], None] | None,
    work: Callable[[], Evaluation],
) -> Evaluation:
    """Run ``work`` here while a thread reports ``progress.json`` as it changes."""
    if on_progress is None:
        return work()
    done = threading.Event()

    def poll() -> None:
        last: dict[str, Any] = {}
        while not done.wait(0.5):
            now = _progress(folder)
            if now and now != last:
                on_progress(now)
                last = now

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        return work()
    finally:
        done.set()
        thread.join()
