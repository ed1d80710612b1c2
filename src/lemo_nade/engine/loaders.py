"""Datasets' original files read into memory: :func:`load` gives a :class:`RawData`.

Images stay uint8 ``[N, C, H, W]`` (4x smaller than float32). Errors about files are
:class:`lemo_nade.datasets.DatasetError` naming the file, what was expected, and where
to get the dataset. Formats (nothing is downloaded):

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
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lemo_nade.datasets import (
    DATASETS,
    SHIFTED,
    DatasetError,
    DatasetInfo,
    builtin_path,
    canonical,
    dataset_folder,
    read_npz,
)
from lemo_nade.engine.shifted import shift


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


def load(dataset: str, data_dir: str | None) -> RawData:
    """Load ``digits`` (shipped), ``npz:PATH``, or a registered dataset from ``data_dir``."""
    if dataset.startswith("npz:"):
        return _load_npz(Path(dataset[4:]), None)
    name = canonical(dataset)
    if name == "digits":
        return _load_npz(builtin_path("digits"), DATASETS["digits"].num_classes)
    if name == SHIFTED:
        digits = _load_npz(builtin_path("digits"), DATASETS["digits"].num_classes)
        x_train, x_test = (
            shift(x.numpy(), split)
            for x, split in ((digits.x_train, "train"), (digits.x_test, "test"))
        )
        return replace(digits, x_train=torch.from_numpy(x_train), x_test=torch.from_numpy(x_test))
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
    arrays = read_npz(path)
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
        notes.append(f"{where}: not the official file ({size}); md5 not checked, structure checked")


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
