"""Datasets as in-memory tensors: the stratified split, the search subset,
normalisation and batches. Loading the original files is :mod:`lemo_nade.engine.loaders`;
augmentation is :mod:`lemo_nade.engine.augment`.

Images stay uint8 ``[N, C, H, W]``, on the GPU when there is one; each batch is
converted and normalised on the fly with the training split's per-channel mean/std. No
DataLoader, no worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from lemo_nade.engine.loaders import RawData, load
from lemo_nade.records import EvalJob


@dataclass(frozen=True)
class Split:
    """The 9:1 train/validation split of a training set, with the train split's statistics.

    The test set is not part of it: a search never sees test images.
    """

    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: torch.Tensor  # float32 [C], in 0..255 pixel units, from the training split only
    std: torch.Tensor
    num_classes: int

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float32, zero mean / unit variance per channel (a new tensor)."""
        out = x.to(dtype=torch.float32, copy=True)
        return out.sub_(self.mean.view(1, -1, 1, 1)).div_(self.std.view(1, -1, 1, 1))

    def to(self, device: torch.device | str) -> Split:
        tensors = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val")}
        return replace(self, **tensors, mean=self.mean.to(device), std=self.std.to(device))


# ---- split, subset and normalisation ---------------------------------------------------


def stratified_split(
    y: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, validation) indices; each class contributes ``round(n_c * val_fraction)``.

    Deterministic for a seed (and torch version), so every candidate of a run sees the
    same split.
    """
    generator = torch.Generator().manual_seed(seed)
    train_parts, val_parts = [], []
    for cls in torch.unique(y).tolist():
        idx = torch.nonzero(y == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_val = round(len(idx) * val_fraction)
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    empty = torch.zeros(0, dtype=torch.long)
    train = torch.cat(train_parts) if train_parts else empty
    val = torch.cat(val_parts) if val_parts else empty
    return torch.sort(train).values, torch.sort(val).values


def class_subset(
    y: torch.Tensor, per_class: int = 0, fraction: float = 1.0, seed: int = 0
) -> torch.Tensor:
    """Sorted indices of a class-stratified subset, the same for a seed.

    ``per_class > 0``: that many images of each class (all of a smaller class);
    otherwise ``round(n_c * fraction)`` of each class, at least one. ``0`` and ``1.0``:
    everything.
    """
    if per_class <= 0 and fraction >= 1.0:
        return torch.arange(len(y))
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for cls in torch.unique(y).tolist():
        idx = torch.nonzero(y == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        keep = per_class if per_class > 0 else max(1, round(len(idx) * fraction))
        parts.append(idx[:keep])
    if not parts:
        return torch.zeros(0, dtype=torch.long)
    return torch.sort(torch.cat(parts)).values


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, in chunks (no float copy of the whole set)."""
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        total_sq += (part * part).sum(dim=(0, 2, 3))
    count = max(1, x.numel() // max(1, channels))
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays as is
    return mean.float(), std.float()


_SUBSET_SEED_MIX = 7919  # the subset's draw is independent of the split's


def make_split(
    raw: RawData,
    val_fraction: float,
    seed: int,
    subset_per_class: int = 0,
    subset_fraction: float = 1.0,
) -> Split:
    """The seeded 9:1 stratified split of ``raw``'s training set (the test set is unused).

    With a subset (``subset_per_class`` or ``subset_fraction``), only the *training* part
    is reduced, class-stratified and seeded; validation stays whole, and the
    normalisation statistics come from the whole training part, so they are the same
    with and without a subset.
    """
    train_idx, val_idx = stratified_split(raw.y_train, val_fraction, seed)
    mean, std = channel_stats(raw.x_train[train_idx])
    if subset_per_class > 0 or subset_fraction < 1.0:
        keep = class_subset(
            raw.y_train[train_idx], subset_per_class, subset_fraction, seed * _SUBSET_SEED_MIX + 1
        )
        train_idx = train_idx[keep]
    return Split(
        x_train=raw.x_train[train_idx],
        y_train=raw.y_train[train_idx],
        x_val=raw.x_train[val_idx],
        y_val=raw.y_train[val_idx],
        mean=mean,
        std=std,
        num_classes=raw.num_classes,
    )


def split_for_job(
    job: EvalJob,
    device: torch.device | str | None = None,
    log: Callable[[str], None] | None = None,
) -> Split:
    """Load ``job``'s dataset and make its split (with the search subset, if any);
    ``log`` gets the loader's notes (which files matched their official checksums)."""
    raw = load(job.dataset, job.data_dir)
    if log is not None:
        for note in raw.notes:
            log(f"data: {note}")
    split = make_split(
        raw,
        job.val_fraction,
        job.split_seed,
        subset_per_class=job.subset_per_class,
        subset_fraction=job.subset_fraction,
    )
    return split.to(device) if device is not None else split


def shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator, device: str = "cpu"
) -> Iterator[torch.Tensor]:
    """Index chunks over ``n`` items in a fresh random order (the generator lives on the CPU)."""
    yield from torch.randperm(n, generator=generator).to(device).split(max(1, batch_size))
