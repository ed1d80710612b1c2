"""The training loop: Adam, cross-entropy, LR reduced on a validation-loss plateau, optional
early stopping. A plain loop over in-memory tensors; no DataLoader, no worker processes.

Two protocols from the paper, both plain :class:`~lemo_nade.records.EvalJob` settings:

- search (Sec. 4.1, the ``EvalJob`` defaults): Adam lr 1e-3, batch 512, LR x0.1 when the
  validation loss has not improved for 5 epochs, 20 epochs;
- final retrain of the chosen model (Sec. 4.2): batch 1024, Adam lr 0.01, plateau
  patience 20, at most 500 epochs with early stopping: :func:`lemo_nade.records.final_job`.

Speed: per batch, the only host work is indexing, the launch of the ops and (on CPU)
one finiteness check of the loss; losses are accumulated on the device and read once
per epoch; no worker processes. How the job runs on its device (the CPU allocator,
mixed precision, channels_last, cuDNN autotuning, determinism) is
:mod:`lemo_nade.engine.runtime`; fused Adam on CUDA and the optional ``torch.compile``
are here.

Reproducibility: the global torch seed (initial weights are seeded by the caller;
dropout here), the shuffling (a CPU generator) and the augmentation (a generator on the
data's device) all derive from ``job.seed``. On a CPU, the same seed, thread count,
machine and torch version give the same numbers run to run. On CUDA, cuDNN autotuning
and atomic-add kernels make results vary slightly unless ``job.deterministic`` is set
(``torch.use_deterministic_algorithms(True, warn_only=True)``, no autotuning; slower).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lemo_nade.engine.augment import PAPER_AUGMENT, Augment, augment
from lemo_nade.engine.data import Split, shuffled_batches
from lemo_nade.engine.measure import accuracy_and_loss
from lemo_nade.engine.runtime import (
    Runtime,
    determinism,
    grad_scaler,
    runtime_for,
    tune_cpu_allocator,
)
from lemo_nade.records import EvalJob


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
    with determinism(job.deterministic, device):
        return _train(model, split, job, rt, weight_decay, log, augment_spec, checkpoint)


@dataclass
class _State:
    """What a checkpoint holds, so that a resumed training goes on exactly where it
    stopped: weights, optimiser and scheduler, both generators, the best epoch so far
    and the last losses. ``best_state`` is kept only with early stopping."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    shuffle: torch.Generator
    warp: torch.Generator | None
    epoch: int = 0
    best: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    train_loss: float = math.nan
    val_loss: float = math.nan

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.shuffle.set_state(saved["shuffle"])
        if self.warp is not None and saved.get("warp") is not None:
            self.warp.set_state(saved["warp"])
        self.best, self.best_epoch = saved["best"], saved["best_epoch"]
        self.best_state, self.epoch = saved["best_state"], saved["epoch"]
        self.train_loss, self.val_loss = saved["train_loss"], saved["val_loss"]

    def saved(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "shuffle": self.shuffle.get_state(),
            "warp": self.warp.get_state() if self.warp is not None else None,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
        }


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
    shuffle = torch.Generator().manual_seed(job.seed)
    warp = torch.Generator(device=rt.device).manual_seed(job.seed + 1) if job.augment else None
    st = _State(model, optimizer, scheduler, shuffle, warp)  # restore() sets these in place
    scaler = grad_scaler(rt)
    has_val = len(split.x_val) > 0
    patience = job.early_stopping_patience
    if checkpoint is not None and (saved := checkpoint.load()) is not None:
        st.restore(saved)
        if log is not None:
            log(f"resumed from the checkpoint of epoch {st.epoch}")
    for epoch in range(st.epoch + 1, job.epochs + 1):
        st.epoch = epoch
        st.train_loss = train_epoch(
            step_model, split, optimizer, job.batch_size, shuffle, warp, epoch, rt, scaler, spec
        )
        st.val_loss = validation_loss(model, split, job.batch_size, rt)
        if has_val and not math.isfinite(st.val_loss):
            raise TrainingDiverged(f"validation loss became {st.val_loss} after epoch {epoch}")
        monitored = st.val_loss if has_val else st.train_loss
        scheduler.step(monitored)
        if log is not None:
            log(
                f"epoch {epoch}/{job.epochs} train_loss={st.train_loss:.4f} "
                f"val_loss={st.val_loss:.4f} lr={optimizer.param_groups[0]['lr']:.2e}"
            )
        if monitored < st.best:
            st.best, st.best_epoch = monitored, epoch
            if patience > 0:
                st.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif patience > 0 and epoch - st.best_epoch >= patience:
            break
        if checkpoint is not None:
            checkpoint.save(st.saved())
    return _result(st, job, has_val, log)


def _result(
    st: _State, job: EvalJob, has_val: bool, log: Callable[[str], None] | None
) -> TrainResult:
    """The outcome; with early stopping, the best epoch's weights put back first."""
    val_loss = st.val_loss
    if st.best_state is not None and st.best_epoch != st.epoch:
        st.model.load_state_dict(st.best_state)
        val_loss = st.best if has_val else val_loss
        if log is not None:
            log(f"restored the weights of epoch {st.best_epoch} (val_loss={st.best:.4f})")
    return TrainResult(
        st.epoch,
        st.train_loss,
        val_loss,
        st.optimizer.param_groups[0]["lr"],
        st.best_epoch,
        stopped_early=st.epoch < job.epochs,
    )


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
