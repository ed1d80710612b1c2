"""The search protocol's training loop (paper Sec. 4.1): Adam, cross-entropy, LR reduced on a
validation-loss plateau. Plain loop over in-memory tensors; no DataLoader, no workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lemo_nade.engine.data import Split, augment, shuffled_batches
from lemo_nade.engine.measure import accuracy_and_loss
from lemo_nade.records import EvalJob


class TrainingDiverged(ArithmeticError):
    """A loss became NaN or infinite; the worker reports ``FAILED_NAN``."""


@dataclass(frozen=True)
class TrainResult:
    epochs_run: int
    train_loss: float  # mean loss of the last epoch, train mode (augmented when augmenting)
    val_loss: float  # validation loss after the last epoch (NaN when there is no validation set)
    lr: float  # the learning rate at the end, after plateau reductions


def train(
    model: nn.Module,
    split: Split,
    job: EvalJob,
    weight_decay: float = 0.0,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``split.x_train`` for ``job.epochs`` epochs.

    Reproducible for ``job.seed`` on one machine (CPU): the global torch seed (dropout),
    the shuffling and the augmentation each come from it. Raises :class:`TrainingDiverged`
    on a non-finite training or validation loss. ``weight_decay`` is Adam's L2 term.
    """
    torch.manual_seed(job.seed)
    device = split.x_train.device
    optimizer = torch.optim.Adam(model.parameters(), lr=job.lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=job.plateau_factor, patience=job.plateau_patience
    )
    shuffle = torch.Generator().manual_seed(job.seed)
    warp = torch.Generator(device=device).manual_seed(job.seed + 1) if job.augment else None
    train_loss = val_loss = float("nan")
    for epoch in range(1, job.epochs + 1):
        train_loss = _epoch(model, split, optimizer, job.batch_size, shuffle, warp, epoch)
        _, val_loss = accuracy_and_loss(
            model, split.x_val, split.y_val, job.batch_size, split.normalize
        )
        if len(split.x_val) and not math.isfinite(val_loss):
            raise TrainingDiverged(f"validation loss became {val_loss} after epoch {epoch}")
        scheduler.step(val_loss if len(split.x_val) else train_loss)
        lr = optimizer.param_groups[0]["lr"]
        if log is not None:
            log(
                f"epoch {epoch}/{job.epochs} train_loss={train_loss:.4f} "
                f"val_loss={val_loss:.4f} lr={lr:.2e}"
            )
    return TrainResult(job.epochs, train_loss, val_loss, optimizer.param_groups[0]["lr"])


def _epoch(
    model: nn.Module,
    split: Split,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    shuffle: torch.Generator,
    warp: torch.Generator | None,
    epoch: int,
) -> float:
    """One pass in a fresh random order; returns the mean training loss."""
    model.train()
    device = split.x_train.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    for step, idx in enumerate(
        shuffled_batches(len(split.x_train), batch_size, shuffle, str(device))
    ):
        if len(idx) < 2:  # a trailing batch of one: BatchNorm cannot train on it
            continue
        xb = split.normalize(split.x_train[idx])
        if warp is not None:
            xb = augment(xb, warp)
        loss = F.cross_entropy(model(xb), split.y_train[idx])
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training loss became {loss.item()} at epoch {epoch}, batch {step + 1}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach().double() * len(idx)
        seen += len(idx)
    return total.item() / max(seen, 1)
