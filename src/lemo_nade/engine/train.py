"""The training loop: Adam, cross-entropy, LR reduced on a validation-loss plateau, optional
early stopping. A plain loop over in-memory tensors; no DataLoader, no worker processes.

Two protocols from the paper, both plain :class:`~lemo_nade.records.EvalJob` settings:

- search (Sec. 4.1, the ``EvalJob`` defaults): Adam lr 1e-3, batch 512, LR x0.1 when the
  validation loss has not improved for 5 epochs, 20 epochs;
- final retrain of the chosen model (Sec. 4.2): batch 1024, Adam lr 0.01, plateau
  patience 20, at most 500 epochs with early stopping: :func:`lemo_nade.records.final_job`.

Speed: per batch, the only host work is indexing, the launch of the ops and (on CPU)
one finiteness check of the loss; losses are accumulated on the device and read once
per epoch. On CPU: glibc is told to keep freed large blocks for reuse
(:func:`tune_cpu_allocator`; without it every step page-faults its activations in
afresh), threads as the job says, no worker processes. On CUDA: bf16 autocast (fp16
with a gradient scaler where bf16 is not supported), channels_last, fused Adam, cuDNN
autotuning, optional ``torch.compile``. The GPU paths are written to PyTorch's
documented APIs but were not run on a GPU in development (no GPU was available).

Reproducibility: the global torch seed (initial weights are seeded by the caller;
dropout here), the shuffling (a CPU generator) and the augmentation (a generator on the
data's device) all derive from ``job.seed``. On a CPU, the same seed, thread count,
machine and torch version give the same numbers run to run. On CUDA, cuDNN autotuning
and atomic-add kernels make results vary slightly unless ``job.deterministic`` is set
(``torch.use_deterministic_algorithms(True, warn_only=True)``, no autotuning; slower).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lemo_nade.engine.augment import PAPER_AUGMENT, Augment, augment
from lemo_nade.engine.data import Split, shuffled_batches
from lemo_nade.engine.measure import accuracy_and_loss
from lemo_nade.records import EvalJob

AMP_MODES = ("auto", "bf16", "fp16", "off")
SWITCHES = ("auto", "on", "off")


class Checkpoint(Protocol):
    """Where ``train`` keeps its state after every epoch, to continue after a crash."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class TrainingDiverged(ArithmeticError):
    """A loss became NaN or infinite; the worker reports ``FAILED_NAN``."""


@dataclass(frozen=True)
class TrainResult:
    epochs_run: int
    train_loss: float  # mean loss of the last epoch, train mode (augmented when augmenting)
    val_loss: float  # validation loss of the returned weights (NaN without a validation set)
    lr: float  # the learning rate at the end, after plateau reductions
    best_epoch: int = 0  # the epoch with the lowest validation loss
    stopped_early: bool = False  # early stopping ended training before ``job.epochs``


@dataclass(frozen=True)
class Runtime:
    """How a job runs on a device: mixed precision and memory format, resolved."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: full float32
    channels_last: bool

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def runtime_for(job: EvalJob, device: torch.device | str) -> Runtime:
    """``amp`` auto: bf16 on CUDA (fp16 where bf16 is unsupported), off on CPU, where
    autocast is slower than float32 on most CPUs. ``channels_last`` auto: on CUDA only."""
    device = torch.device(device)
    if job.amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}; got {job.amp!r}")
    if job.channels_last not in SWITCHES:
        raise ValueError(f"channels_last must be one of {', '.join(SWITCHES)}")
    cuda = device.type == "cuda"
    amp_dtype: torch.dtype | None = None
    if job.amp == "auto" and cuda:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif job.amp in ("bf16", "fp16"):
        amp_dtype = torch.bfloat16 if job.amp == "bf16" else torch.float16
    channels_last = job.channels_last == "on" or (job.channels_last == "auto" and cuda)
    return Runtime(device, amp_dtype, channels_last)


def train(
    model: nn.Module,
    split: Split,
    job: EvalJob,
    weight_decay: float = 0.0,
    log: Callable[[str], None] | None = None,
    augment_spec: Augment = PAPER_AUGMENT,
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``split.x_train`` for up to ``job.epochs`` epochs.

    The model must already be on the split's device. Raises :class:`TrainingDiverged` on
    a non-finite training or validation loss. ``weight_decay`` is Adam's L2 term. With
    ``job.early_stopping_patience`` > 0, training stops after that many epochs without a
    lower validation loss and the model gets its best epoch's weights back.
    """
    if job.threads > 0:
        torch.set_num_threads(job.threads)
    tune_cpu_allocator()
    torch.manual_seed(job.seed)
    device = split.x_train.device
    rt = runtime_for(job, device)
    with _determinism(job.deterministic, device):
        return _train(model, split, job, rt, weight_decay, log, augment_spec, checkpoint)


def _train(
    model: nn.Module,
    split: Split,
    job: EvalJob,
    rt: Runtime,
    weight_decay: float,
    log: Callable[[str], None] | None,
    spec: Augment,
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    step_model: nn.Module = torch.compile(model) if job.compile else model  # type: ignore[assignment]
    optimizer = make_optimizer(model, job.lr, weight_decay, rt.device)
    scheduler = plateau_scheduler(optimizer, job.plateau_patience, job.plateau_factor)
    scaler = _scaler(rt)
    shuffle = torch.Generator().manual_seed(job.seed)
    warp = torch.Generator(device=rt.device).manual_seed(job.seed + 1) if job.augment else None
    has_val = len(split.x_val) > 0
    patience = job.early_stopping_patience
    best, best_epoch, best_state = math.inf, 0, None
    train_loss = val_loss = float("nan")
    epoch = start = 0
    if checkpoint is not None and (saved := checkpoint.load()) is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        shuffle.set_state(saved["shuffle"])
        if warp is not None and saved.get("warp") is not None:
            warp.set_state(saved["warp"])
        best, best_epoch, best_state = saved["best"], saved["best_epoch"], saved["best_state"]
        epoch = start = saved["epoch"]
        train_loss, val_loss = saved["train_loss"], saved["val_loss"]
        if log is not None:
            log(f"resumed from the checkpoint of epoch {start}")
    for epoch in range(start + 1, job.epochs + 1):
        train_loss = train_epoch(
            step_model, split, optimizer, job.batch_size, shuffle, warp, epoch, rt, scaler, spec
        )
        val_loss = validation_loss(model, split, job.batch_size, rt)
        if has_val and not math.isfinite(val_loss):
            raise TrainingDiverged(f"validation loss became {val_loss} after epoch {epoch}")
        monitored = val_loss if has_val else train_loss
        scheduler.step(monitored)
        lr = optimizer.param_groups[0]["lr"]
        if log is not None:
            log(
                f"epoch {epoch}/{job.epochs} train_loss={train_loss:.4f} "
                f"val_loss={val_loss:.4f} lr={lr:.2e}"
            )
        if monitored < best:
            best, best_epoch = monitored, epoch
            if patience > 0:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif patience > 0 and epoch - best_epoch >= patience:
            break
        if checkpoint is not None:
            checkpoint.save(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "shuffle": shuffle.get_state(),
                    "warp": warp.get_state() if warp is not None else None,
                    "best": best,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                }
            )
    stopped = epoch < job.epochs
    if best_state is not None and best_epoch != epoch:
        model.load_state_dict(best_state)
        val_loss = best if has_val else val_loss
        if log is not None:
            log(f"restored the weights of epoch {best_epoch} (val_loss={best:.4f})")
    return TrainResult(
        epoch, train_loss, val_loss, optimizer.param_groups[0]["lr"], best_epoch, stopped
    )


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
ALLOCATOR_THRESHOLD = 1 << 30
_allocator_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in the heap for reuse (glibc ``mallopt``); once per process.

    By default glibc serves every block above its mmap threshold (at most 32 MB) with a
    fresh ``mmap`` and returns it with ``munmap`` on free, so each training step of a
    CNN at batch 512 re-faults its activations page by page: on the 2-core development
    VM that was ~2 million page faults per epoch, and a plain training loop ran 2.0x
    faster with this setting than without (``bench/train.py``). Raising the mmap and
    trim thresholds to 1 GiB lets freed blocks be reused instead. The cost: the process
    keeps its peak heap until it exits, which suits the one-candidate sandbox child.
    Returns whether the settings took (False off glibc, e.g. on macOS or musl).
    """
    global _allocator_tuned
    if _allocator_tuned is None:
        _allocator_tuned = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
                _allocator_tuned = bool(
                    mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_THRESHOLD)
                    and mallopt(_M_TRIM_THRESHOLD, ALLOCATOR_THRESHOLD)
                )
            except (OSError, AttributeError):
                pass
    return _allocator_tuned


def plateau_scheduler(
    optimizer: torch.optim.Optimizer, patience: int, factor: float
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """LR x ``factor`` once the monitored loss has not decreased for ``patience``
    successive epochs (paper Sec. 4.1: "for successive 5 epochs"; Keras' semantics).
    PyTorch's own ``patience`` reduces one epoch later (on more than ``patience`` bad
    epochs), hence ``patience - 1``."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=factor, patience=max(0, patience - 1)
    )


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer:
    """Adam; the fused kernel on CUDA (one launch for all parameters, and no host sync
    under an fp16 gradient scaler); PyTorch's default implementation on CPU."""
    options: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, **options)


def _scaler(rt: Runtime) -> Any:
    """A gradient scaler for fp16 on CUDA; bf16 and float32 need none."""
    if rt.amp_dtype is torch.float16 and rt.device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def train_epoch(
    model: nn.Module,
    split: Split,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    shuffle: torch.Generator,
    warp: torch.Generator | None,
    epoch: int,
    rt: Runtime | None = None,
    scaler: Any = None,
    spec: Augment = PAPER_AUGMENT,
    check_every_batch: bool | None = None,
) -> float:
    """One pass over ``split.x_train`` in a fresh random order; the mean training loss.

    Per batch: gather the uint8 images, normalise (and augment) them, forward, backward,
    step. The batch losses stay on the device until the end of the epoch. A trailing
    batch of one image is skipped (BatchNorm cannot train on it). A non-finite loss
    raises :class:`TrainingDiverged` naming the batch: at once where checking is free
    (``check_every_batch`` None: everywhere but CUDA), else at the end of the epoch.
    """
    rt = rt or Runtime(split.x_train.device, None, False)
    model.train()
    device = split.x_train.device
    batches = [
        idx
        for idx in shuffled_batches(len(split.x_train), batch_size, shuffle, str(device))
        if len(idx) >= 2
    ]
    losses = torch.zeros(len(batches), dtype=torch.float32, device=device)
    check_each = device.type != "cuda" if check_every_batch is None else check_every_batch
    for step, idx in enumerate(batches):
        xb = split.normalize(split.x_train[idx])
        if warp is not None:
            xb = augment(xb, warp, spec)
        with rt.autocast():
            logits = model(rt.prepare(xb))
        loss = F.cross_entropy(logits.float(), split.y_train[idx])
        if check_each and not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training loss became {loss.item()} at epoch {epoch}, batch {step + 1}"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses[step] = loss.detach()
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float32, device=device)
    seen = sum(len(b) for b in batches)
    mean = float((losses * sizes).sum()) / max(seen, 1)  # the epoch's one host sync
    if not math.isfinite(mean):
        bad = int(torch.nonzero(~torch.isfinite(losses))[0])
        raise TrainingDiverged(
            f"training loss became {float(losses[bad])} at epoch {epoch}, batch {bad + 1}"
        )
    return mean


def validation_loss(model: nn.Module, split: Split, batch_size: int, rt: Runtime) -> float:
    """Mean cross-entropy on the validation split (eval mode, the job's precision)."""
    if len(split.x_val) == 0:
        return float("nan")

    def transform(x: torch.Tensor) -> torch.Tensor:
        return rt.prepare(split.normalize(x))

    with rt.autocast():
        _, loss = accuracy_and_loss(model, split.x_val, split.y_val, batch_size, transform)
    return loss


@contextmanager
def _determinism(on: bool, device: torch.device) -> Iterator[None]:
    """``on``: deterministic kernels (warn where none exists), no cuDNN autotuning.
    Off on CUDA: cuDNN autotuning (fastest kernels; results vary slightly). Restored after."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    try:
        if on:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]
