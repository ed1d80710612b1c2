"""Datasets as in-memory tensors: loading, the stratified split, normalisation, augmentation.

Images stay uint8 ``[N, C, H, W]`` (4x smaller than float32); each batch is converted
and normalised on the fly with the training split's per-channel mean/std. Augmentation
is one batched affine warp per batch (no per-image Python loop). No DataLoader workers.
Errors about files are :class:`lemo_nade.datasets.DatasetError` naming the file.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lemo_nade.datasets import DATASETS, DatasetError, builtin_path


@dataclass(frozen=True)
class RawData:
    """A dataset as loaded: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))


@dataclass(frozen=True)
class Split:
    """The 9:1 train/validation split of a training set, with the train split's statistics."""

    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: torch.Tensor  # float32 [C], in 0..255 pixel units, from the training split only
    std: torch.Tensor
    num_classes: int

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float32, zero mean / unit variance per channel."""
        return (x.float() - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def to(self, device: torch.device | str) -> Split:
        tensors = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val")}
        return replace(self, **tensors, mean=self.mean.to(device), std=self.std.to(device))


# (folder, training files, test files, label key, classes) in the original python layouts
_CIFAR: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], bytes, int]] = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), b"fine_labels", 100),
}


def load(dataset: str, data_dir: str | None) -> RawData:
    """Load ``digits`` (shipped), ``npz:PATH``, ``cifar10`` or ``cifar100`` (from ``data_dir``)."""
    if dataset == "digits":
        return _load_npz(builtin_path("digits"), DATASETS["digits"].num_classes)
    if dataset.startswith("npz:"):
        return _load_npz(Path(dataset[4:]), None)
    if dataset in _CIFAR:
        if not data_dir:
            raise DatasetError(f"data_dir: dataset {dataset!r} needs --data-dir DIR")
        return _load_cifar(Path(data_dir), *_CIFAR[dataset])
    raise DatasetError(f"dataset: the engine cannot load {dataset!r}")


def _load_npz(path: Path, num_classes: int | None) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as exc:
        raise DatasetError(f"dataset: {path} lacks array {exc}") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"dataset: cannot read {path} as .npz ({exc})") from None
    x_train, x_test = (_images_nchw(arrays[k], path, k) for k in ("x_train", "x_test"))
    y_train, y_test = (_labels(arrays[k], path, k) for k in ("y_train", "y_test"))
    classes = num_classes or int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    return _raw(x_train, y_train, x_test, y_test, classes, path)


def _images_nchw(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DatasetError(
            f"dataset: {path} {key} is {x.dtype}; expected uint8 pixels 0..255 "
            "(convert with (x * 255).round().astype('uint8'))"
        )
    if x.ndim == 3:  # N, H, W
        return x[:, None]
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    if x.ndim == 4 and x.shape[3] in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise DatasetError(
        f"dataset: {path} {key} has shape {x.shape}; expected [N,H,W], [N,C,H,W] or [N,H,W,C] "
        "with C 1 or 3"
    )


def _labels(y: Any, path: Path, key: str, num_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(
            f"dataset: {path} {key} must be 1-D integer labels (got {y.dtype} {y.shape})"
        )
    if y.size and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
        top = "" if num_classes is None else f"..{num_classes - 1}"
        raise DatasetError(
            f"dataset: {path} {key} has labels {y.min()}..{y.max()}; expected 0{top}"
        )
    return y.astype(np.int64)


def _raw(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    path: Path,
) -> RawData:
    for x, y, name in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if len(x) != len(y):
            raise DatasetError(f"dataset: {path} {name}: {len(x)} images but {len(y)} labels")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"dataset: {path} train/test image shapes differ")
    return RawData(
        torch.from_numpy(np.ascontiguousarray(x_train)),
        torch.from_numpy(y_train),
        torch.from_numpy(np.ascontiguousarray(x_test)),
        torch.from_numpy(y_test),
        num_classes,
    )


def _load_cifar(
    root: Path,
    folder: str,
    train_files: tuple[str, ...],
    test_files: tuple[str, ...],
    label_key: bytes,
    num_classes: int,
) -> RawData:
    def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_read_cifar_batch(root / folder / n, label_key, num_classes) for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    x_train, y_train = read(train_files)
    x_test, y_test = read(test_files)
    return _raw(x_train, y_train, x_test, y_test, num_classes, root / folder)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file cannot run code."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        return super().find_class(module, name)


def _read_cifar_batch(
    path: Path, label_key: bytes, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python-format pickle: ``{b'data': uint8 [N, 3072], label_key: [N]}``."""
    if not path.is_file():
        raise DatasetError(f"dataset: {path} is missing (extract the original archive there)")
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # any unpickling failure is a bad file
        raise DatasetError(f"dataset: cannot read {path} as a CIFAR batch ({exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"dataset: {path} needs keys b'data' and {label_key!r}; has {keys}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        shape = getattr(data, "shape", None)
        raise DatasetError(f"dataset: {path} b'data' must be uint8 [N, 3072]; got {shape}")
    labels = _labels(batch[label_key], path, repr(label_key), num_classes)
    if len(labels) != len(data):
        raise DatasetError(f"dataset: {path} has {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


# ---- split and normalisation ---------------------------------------------------------


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


def make_split(raw: RawData, val_fraction: float, seed: int) -> Split:
    train_idx, val_idx = stratified_split(raw.y_train, val_fraction, seed)
    x_train = raw.x_train[train_idx]
    mean, std = channel_stats(x_train)
    return Split(
        x_train=x_train,
        y_train=raw.y_train[train_idx],
        x_val=raw.x_train[val_idx],
        y_val=raw.y_train[val_idx],
        mean=mean,
        std=std,
        num_classes=raw.num_classes,
    )


def shuffled_batches(
    n: int, batch_size: int, generator: torch.Generator, device: str = "cpu"
) -> Iterator[torch.Tensor]:
    """Index chunks over ``n`` items in a fresh random order (the generator lives on the CPU)."""
    yield from torch.randperm(n, generator=generator).to(device).split(max(1, batch_size))


# ---- augmentation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Augment:
    """Random affine augmentation; the defaults are the paper's (Sec. 4.1).

    Ranges are symmetric: rotation in degrees, shifts as a fraction of width/height, shear
    as the shear factor, zoom as the scale deviation (0.1: x0.9..x1.1, per axis).
    """

    rotation_deg: float = 20.0
    flip_p: float = 0.5  # horizontal flip
    shift: float = 0.1
    shear: float = 0.1
    zoom: float = 0.1

    def scaled(self, strength: float) -> Augment:
        return Augment(
            *(
                strength * v
                for v in (self.rotation_deg, self.flip_p, self.shift, self.shear, self.zoom)
            )
        )


PAPER_AUGMENT = Augment()


def affine_matrices(
    n: int, height: int, width: int, generator: torch.Generator, spec: Augment, device: str = "cpu"
) -> torch.Tensor:
    """``[n, 2, 3]`` output->input maps in ``affine_grid``'s normalised coordinates.

    Rotation and shear are corrected for the aspect ratio, so they are true pixel-space
    rotations/shears on non-square images too.
    """

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator, device=device) * 2 - 1) * limit

    angle = uniform(math.radians(spec.rotation_deg))
    shear = uniform(spec.shear)
    zoom_x, zoom_y = 1 + uniform(spec.zoom), 1 + uniform(spec.zoom)
    flip = torch.rand(n, generator=generator, device=device) < spec.flip_p
    zoom_x = torch.where(flip, -zoom_x, zoom_x)
    ratio = height / width
    cos, sin = angle.cos(), angle.sin()
    # A = R @ Shear @ diag(zoom_x, zoom_y), with R and Shear conjugated by the aspect ratio
    a00 = cos * zoom_x
    a01 = (cos * shear * ratio - sin * ratio) * zoom_y
    a10 = sin / ratio * zoom_x
    a11 = (sin * shear + cos) * zoom_y
    tx, ty = uniform(2 * spec.shift), uniform(2 * spec.shift)  # normalised coords span 2
    return torch.stack([a00, a01, tx, a10, a11, ty], dim=1).view(n, 2, 3)


def augment(
    x: torch.Tensor, generator: torch.Generator, spec: Augment = PAPER_AUGMENT
) -> torch.Tensor:
    """One batched affine warp of a float batch ``[N, C, H, W]``; edges repeat (Keras 'nearest')."""
    n, _, height, width = x.shape
    theta = affine_matrices(n, height, width, generator, spec, device=str(x.device))
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
