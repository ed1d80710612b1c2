"""Datasets as in-memory tensors: loading, the stratified split, normalisation, augmentation.

Images stay uint8 ``[N, C, H, W]`` (4x smaller than float32), on the GPU when there is
one; each batch is converted and normalised on the fly with the training split's
per-channel mean/std. Augmentation is one batched affine warp per batch (no per-image
Python loop). No DataLoader, no worker processes. Errors about files are
:class:`lemo_nade.datasets.DatasetError` naming the file, what was expected, and where
to get the dataset.

Original formats read here (nothing is downloaded):

- CIFAR-10 / CIFAR-100 "python version": pickled dicts with ``data`` uint8 ``[N, 3072]``
  (R, G, B planes of 32x32) and ``labels`` / ``fine_labels``.
- ImageNet16-120 (NAS-Bench-201): the 16x16 Downsampled ImageNet pickles
  ``train_data_batch_1..10`` and ``val_data`` with ``data`` uint8 ``[N, 768]`` and
  1-based ``labels`` 1..1000; images with labels 1..120 are kept, as labels 0..119.
- ``npz:PATH``: ``x_train``, ``y_train``, ``x_test``, ``y_test``.

Checksums: a file that holds the official number of images must match the official md5
(else it is corrupt or modified: an error). A file of another size (a subset, such as
the CIFAR-10 subset in ``../shared/data``) is checked for structure only and reported in
:attr:`RawData.notes`. Pickles are read with an unpickler that only builds plain
containers and numpy arrays, so a data file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lemo_nade.datasets import (
    DATASETS,
    DatasetError,
    DatasetInfo,
    builtin_path,
    canonical,
    dataset_folder,
)
from lemo_nade.records import EvalJob


@dataclass(frozen=True)
class RawData:
    """A dataset as loaded: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    notes: tuple[str, ...] = ()  # what was verified and what was not (checksums)
    class_names: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))


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


def load(dataset: str, data_dir: str | None) -> RawData:
    """Load ``digits`` (shipped), ``npz:PATH``, or a registered dataset from ``data_dir``."""
    if dataset.startswith("npz:"):
        return _load_npz(Path(dataset[4:]), None)
    name = canonical(dataset)
    if name == "digits":
        return _load_npz(builtin_path("digits"), DATASETS["digits"].num_classes)
    info = DATASETS.get(name)
    if info is None or name not in _LOADERS:
        raise DatasetError(f"dataset: the engine cannot load {dataset!r}")
    if not data_dir:
        raise DatasetError(
            f"data_dir: dataset {dataset!r} needs --data-dir DIR ({info.where_to_get})"
        )
    return _LOADERS[name](info, dataset_folder(info, data_dir))


# ---- npz -----------------------------------------------------------------------------


def _load_npz(path: Path, num_classes: int | None) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as exc:
        raise DatasetError(
            f"dataset: {path} lacks array {exc}; an npz dataset holds x_train, y_train, "
            "x_test, y_test (np.savez)"
        ) from None
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


def _labels(
    y: Any, path: Path, key: str, num_classes: int | None = None, first: int = 0
) -> np.ndarray:
    """1-D integer labels ``first..first+num_classes-1``, returned as int64 (unshifted)."""
    try:
        y = np.asarray(y)
    except (ValueError, TypeError):
        y = np.asarray([], dtype=object)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(
            f"dataset: {path} {key} must be 1-D integer labels (got {y.dtype} {y.shape})"
        )
    if y.size and (y.min() < first or (num_classes is not None and y.max() >= first + num_classes)):
        top = "" if num_classes is None else f"..{first + num_classes - 1}"
        raise DatasetError(
            f"dataset: {path} {key} has labels {y.min()}..{y.max()}; expected {first}{top}"
        )
    return y.astype(np.int64)


def _raw(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    path: Path,
    notes: tuple[str, ...] = (),
    class_names: tuple[str, ...] = (),
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
        notes,
        class_names,
    )


# ---- pickled originals (CIFAR, ImageNet16) ---------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file cannot run code."""

    ALLOWED = frozenset(
        {
            (core, name)
            for core in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name in ("_reconstruct", "scalar")
        }
        | {
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol 2 stores bytes
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        return super().find_class(module, name)


@dataclass(frozen=True)
class _Batch:
    path: Path
    entries: dict[str, Any]  # keys as str whether the file stored str or bytes keys
    md5: str


def _read_pickle(path: Path, info: DatasetInfo) -> _Batch:
    """One pickled dict, its keys decoded to str; python 2 and 3 pickles alike (latin1)."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"dataset: cannot read {path} ({exc}); {info.where_to_get}") from None
    try:
        obj = _ArrayUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except Exception as exc:  # any unpickling failure is a bad file
        raise DatasetError(
            f"dataset: cannot read {path} as a {info.name} pickle ({exc}); the original "
            f"python-format file is expected: {info.where_to_get}"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetError(
            f"dataset: {path} holds a {type(obj).__name__}; expected a dict of arrays "
            f"({info.where_to_get})"
        )
    entries = {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}
    return _Batch(path, entries, hashlib.md5(blob).hexdigest())


def _images_rows(batch: _Batch, label_key: str, info: DatasetInfo) -> np.ndarray:
    """``data`` as uint8 ``[N, C*H*W]``, checked against the dataset's image shape."""
    entries = batch.entries
    if "data" not in entries or label_key not in entries:
        raise DatasetError(
            f"dataset: {batch.path} needs keys 'data' and {label_key!r}; has "
            f"{sorted(entries)} (is this the python version of {info.name}? {info.where_to_get})"
        )
    c, h, w = info.input_shape
    data = entries["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (c * h * w,):
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise DatasetError(
            f"dataset: {batch.path} 'data' must be uint8 [N, {c * h * w}] ({c}x{h}x{w} images, "
            f"channel planes); got {got.strip()}"
        )
    return data


def _check_official(batch: _Batch, images: int, info: DatasetInfo, notes: list[str]) -> None:
    official = info.official_file(batch.path.name)
    if official is None:
        return
    where = f"{info.folder}/{batch.path.name}"
    if batch.md5 == official.md5:
        notes.append(f"{where}: md5 matches the official file")
    elif official.images is not None and images == official.images:
        raise DatasetError(
            f"dataset: {batch.path} has the official size ({images} images) but md5 "
            f"{batch.md5}, not the official {official.md5}: the file is corrupt or was "
            f"modified; {info.where_to_get}"
        )
    else:
        size = f"{images} images" + (
            f", the official file has {official.images}" if official.images else ""
        )
        notes.append(f"{where}: not the official file ({size}); md5 not checked, structure is")


def _load_cifar(info: DatasetInfo, folder: Path) -> RawData:
    label_key = "labels" if info.name == "cifar10" else "fine_labels"
    notes: list[str] = []

    def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            batch = _read_pickle(folder / name, info)
            data = _images_rows(batch, label_key, info)
            labels = _labels(
                batch.entries[label_key], batch.path, repr(label_key), info.num_classes
            )
            if len(labels) != len(data):
                raise DatasetError(
                    f"dataset: {batch.path} has {len(data)} images but {len(labels)} labels"
                )
            _check_official(batch, len(data), info, notes)
            xs.append(data.reshape(-1, *info.input_shape))
            ys.append(labels)
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = read(info.train_files)
    x_test, y_test = read(info.test_files)
    names = _class_names(folder / info.meta_files[0], info)
    return _raw(x_train, y_train, x_test, y_test, info.num_classes, folder, tuple(notes), names)


def _class_names(path: Path, info: DatasetInfo) -> tuple[str, ...]:
    """The meta file's class names (``label_names`` / ``fine_label_names``), checked."""
    key = "label_names" if info.name == "cifar10" else "fine_label_names"
    entries = _read_pickle(path, info).entries
    names = entries.get(key)
    if not isinstance(names, list) or len(names) != info.num_classes:
        count = len(names) if isinstance(names, list) else "no"
        raise DatasetError(
            f"dataset: {path} must list {info.num_classes} class names under {key!r}; has "
            f"{count} ({info.where_to_get})"
        )
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


IMAGENET16_CLASSES = 120


def _load_imagenet16(info: DatasetInfo, folder: Path) -> RawData:
    """NAS-Bench-201's ImageNet16-120: keep original labels 1..120, shifted to 0..119."""
    notes: list[str] = []

    def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            batch = _read_pickle(folder / name, info)
            data = _images_rows(batch, "labels", info)
            labels = _labels(batch.entries["labels"], batch.path, "'labels'", 1000, first=1)
            if len(labels) != len(data):
                raise DatasetError(
                    f"dataset: {batch.path} has {len(data)} images but {len(labels)} labels"
                )
            _check_official(batch, len(data), info, notes)
            keep = labels <= IMAGENET16_CLASSES
            xs.append(data[keep].reshape(-1, *info.input_shape))
            ys.append(labels[keep] - 1)
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = read(info.train_files)
    x_test, y_test = read(info.test_files)
    return _raw(x_train, y_train, x_test, y_test, info.num_classes, folder, tuple(notes))


_LOADERS = {"cifar10": _load_cifar, "cifar100": _load_cifar, "imagenet16-120": _load_imagenet16}


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


# ---- augmentation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Augment:
    """Random affine augmentation; the defaults are the paper's (Sec. 4.1): rotation 20°,
    horizontal flip, 10% width and height shift, 10% shear, 10% zoom.

    Ranges are symmetric and uniform: rotation in degrees; shifts as a fraction of
    width/height; shear as the shear *factor* (0.1: x' = x + 0.1 y, about 5.7°); zoom as
    the scale deviation, drawn per axis (0.1: x0.9..x1.1), as Keras'
    ``ImageDataGenerator`` does. Keras reads ``shear_range`` in degrees; the paper's
    "10% shear" is taken as a factor here. Pixels from outside the image repeat the
    edge (Keras' default ``fill_mode='nearest'``); sampling is bilinear.
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


@dataclass(frozen=True)
class AffineParams:
    """One draw of the random parameters, each a tensor ``[n]``."""

    angle: torch.Tensor  # radians
    shear: torch.Tensor  # factor
    zoom_x: torch.Tensor
    zoom_y: torch.Tensor
    flip: torch.Tensor  # bool
    shift_x: torch.Tensor  # fraction of the width
    shift_y: torch.Tensor  # fraction of the height


def sample_affine(
    n: int, generator: torch.Generator, spec: Augment = PAPER_AUGMENT, device: str = "cpu"
) -> AffineParams:
    """Draw ``n`` parameter sets, each uniform on its symmetric range (flip: Bernoulli)."""
    draws = torch.rand(7, n, generator=generator, device=device)
    sym = draws[:6] * 2 - 1  # uniform on [-1, 1)
    return AffineParams(
        angle=sym[0] * math.radians(spec.rotation_deg),
        shear=sym[1] * spec.shear,
        zoom_x=1 + sym[2] * spec.zoom,
        zoom_y=1 + sym[3] * spec.zoom,
        flip=draws[6] < spec.flip_p,
        shift_x=sym[4] * spec.shift,
        shift_y=sym[5] * spec.shift,
    )


def affine_from_params(params: AffineParams, height: int, width: int) -> torch.Tensor:
    """``[n, 2, 3]`` output->input maps in ``affine_grid``'s normalised coordinates.

    ``A = R @ Shear @ diag(±zoom_x, zoom_y)``; rotation and shear are corrected for the
    aspect ratio, so they are true pixel-space rotations/shears on non-square images.
    """
    ratio = height / width
    cos, sin = params.angle.cos(), params.angle.sin()
    zoom_x = torch.where(params.flip, -params.zoom_x, params.zoom_x)
    zoom_y, shear = params.zoom_y, params.shear
    a00 = cos * zoom_x
    a01 = (cos * shear * ratio - sin * ratio) * zoom_y
    a10 = sin / ratio * zoom_x
    a11 = (sin * shear + cos) * zoom_y
    tx, ty = 2 * params.shift_x, 2 * params.shift_y  # normalised coordinates span 2
    return torch.stack([a00, a01, tx, a10, a11, ty], dim=1).view(-1, 2, 3)


def affine_matrices(
    n: int, height: int, width: int, generator: torch.Generator, spec: Augment, device: str = "cpu"
) -> torch.Tensor:
    """Random ``[n, 2, 3]`` maps: :func:`sample_affine` then :func:`affine_from_params`."""
    return affine_from_params(sample_affine(n, generator, spec, device), height, width)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply ``[N, 2, 3]`` maps to a float batch in one ``grid_sample``; edges repeat."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(
    x: torch.Tensor, generator: torch.Generator, spec: Augment = PAPER_AUGMENT
) -> torch.Tensor:
    """One batched random affine warp of a float batch ``[N, C, H, W]`` (seeded by
    ``generator``, which must live on ``x``'s device)."""
    n, _, height, width = x.shape
    return warp(x, affine_matrices(n, height, width, generator, spec, device=str(x.device)))
