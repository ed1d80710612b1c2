"""Dataset registry (pure side): names, shapes, class counts, the files each format needs,
the official checksums, and the checks that can be done before any child process starts.
Loading pixels lives in ``engine.loaders``. No torch here.

Every dataset except the built-in ``digits`` and ``shifted-digits`` is read from a local
directory in its original distribution format; nothing is downloaded. ``--data-dir DIR``
may name the directory that holds the extracted folder (``DIR/cifar-10-batches-py/...``)
or that folder itself (``DIR/data_batch_1``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lemo_nade.records import TaskSpec


class DatasetError(ValueError):
    """A dataset name, directory or file is wrong; the message says what to do."""


@dataclass(frozen=True)
class OfficialFile:
    """A file of an original distribution: its md5 and, where documented, its image count.

    The md5 is compared only when the file holds exactly ``images`` images (it claims to
    be the original); a subset or re-saved copy is checked for structure only.
    """

    md5: str
    images: int | None = None  # None: not documented per file (or not an image file)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    needs_data_dir: bool
    folder: str = ""  # the folder the original archive extracts to
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_files: tuple[str, ...] = ()
    where_to_get: str = ""
    official: tuple[tuple[str, OfficialFile], ...] = ()  # file name -> checksum

    @property
    def expected_files(self) -> tuple[str, ...]:
        """Every file the loader opens, relative to the dataset folder."""
        return (*self.train_files, *self.test_files, *self.meta_files)

    def official_file(self, name: str) -> OfficialFile | None:
        return dict(self.official).get(name)


_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_IMAGENET16_URL = "https://image-net.org/download-images (Downsampled ImageNet, 16x16)"

SHIFTED = "shifted-digits"  # built: the shipped digits on a 16x16 canvas (engine.shifted)

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10, needs_data_dir=False),
    SHIFTED: DatasetInfo(SHIFTED, (1, 16, 16), 10, needs_data_dir=False),
    "cifar10": DatasetInfo(
        "cifar10",
        (3, 32, 32),
        10,
        needs_data_dir=True,
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_files=("batches.meta",),
        where_to_get=f"extract cifar-10-python.tar.gz (python version) from {_CIFAR_URL}",
        # the official md5s (as published with torchvision's loader); 10,000 images each
        official=(
            ("data_batch_1", OfficialFile("c99cafc152244af753f735de768cd75f", 10_000)),
            ("data_batch_2", OfficialFile("d4bba439e000b95fd0a9bffe97cbabec", 10_000)),
            ("data_batch_3", OfficialFile("54ebc095f3ab1f0389bbae665268c751", 10_000)),
            ("data_batch_4", OfficialFile("634d18415352ddfa80567beed471001a", 10_000)),
            ("data_batch_5", OfficialFile("482c414d41f54cd18b22e5b47cb7c3cb", 10_000)),
            ("test_batch", OfficialFile("40351d587109b95175f43aff81a1287e", 10_000)),
        ),
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        (3, 32, 32),
        100,
        needs_data_dir=True,
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_files=("meta",),
        where_to_get=f"extract cifar-100-python.tar.gz (python version) from {_CIFAR_URL}",
        official=(
            ("train", OfficialFile("16019d7e3df5f24257cddd939b257f8d", 50_000)),
            ("test", OfficialFile("f0ef6b0ae62326f3e7ffdfab6717acfc", 10_000)),
        ),
    ),
    # NAS-Bench-201's ImageNet16-120: the 16x16 "Downsampled ImageNet" (Chrabaszcz et al.,
    # 2017) restricted to its labels 1..120; 151,700 training and 6,000 test images.
    "imagenet16-120": DatasetInfo(
        "imagenet16-120",
        (3, 16, 16),
        120,
        needs_data_dir=True,
        folder="ImageNet16",
        train_files=tuple(f"train_data_batch_{i}" for i in range(1, 11)),
        test_files=("val_data",),
        where_to_get=(
            "download Imagenet16_train.zip and Imagenet16_val.zip from "
            f"{_IMAGENET16_URL} and extract both"
        ),
        # md5s as listed by NAS-Bench-201's loader (D-X-Y/AutoDL-Projects,
        # lib/datasets/DownsampledImageNet.py); per-batch image counts are not published
        official=(
            ("train_data_batch_1", OfficialFile("27846dcaa50de8e21a7d1a35f30f0e91")),
            ("train_data_batch_2", OfficialFile("c7254a054e0e795c69120a5727050e3f")),
            ("train_data_batch_3", OfficialFile("4333d3df2e5ffb114b05d2ffc19b1e87")),
            ("train_data_batch_4", OfficialFile("1620cdf193304f4a92677b695d70d10f")),
            ("train_data_batch_5", OfficialFile("348b3c2fdbb3940c4e9e834affd3b18d")),
            ("train_data_batch_6", OfficialFile("6e765307c242a1b3d7d5ef9139b48945")),
            ("train_data_batch_7", OfficialFile("564926d8cbf8fc4818ba23d2faac7564")),
            ("train_data_batch_8", OfficialFile("f4755871f718ccb653440b9dd0ebac66")),
            ("train_data_batch_9", OfficialFile("bb6dd660c38c58552125b1a92f86b5d4")),
            ("train_data_batch_10", OfficialFile("8f03f34ac4b42271a294f91bf480f29b")),
            ("val_data", OfficialFile("3410e3017fdaefba8d5073aaa65e4bd6", 50_000)),
        ),
    ),
}
ALIASES = {"cifar-10": "cifar10", "cifar-100": "cifar100", "imagenet16": "imagenet16-120"}


def builtin_path(name: str) -> Path:
    """Path of a dataset file shipped inside the package."""
    return Path(str(resources.files("lemo_nade") / "data" / f"{name}.npz"))


def canonical(name: str) -> str:
    return ALIASES.get(name.lower(), name.lower()) if not name.startswith("npz:") else name


def dataset_folder(info: DatasetInfo, data_dir: str | None) -> Path:
    """The directory that holds ``info``'s files: ``DIR/<folder>`` or ``DIR`` itself.

    Raises DatasetError naming the first missing file and where to get the dataset.
    """
    if not data_dir:
        raise DatasetError(
            f"data_dir: dataset {info.name!r} is read from a local directory; pass --data-dir "
            f"DIR ({info.where_to_get})"
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data_dir: {root} is not a directory; pass --data-dir DIR")
    first = info.expected_files[0]
    folder = root / info.folder
    if not (folder / first).is_file() and (root / first).is_file():
        folder = root  # DIR is the extracted folder itself
    missing = [f for f in info.expected_files if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"data_dir: {folder / missing[0]} is missing for dataset {info.name!r} "
            f"(expected {info.folder}/{{{', '.join(info.expected_files)}}} under {root}); "
            f"{info.where_to_get} into {root}"
        )
    return folder


def resolve_dataset(name: str, data_dir: str | None) -> TaskSpec:
    """Validate a dataset choice without loading it; raise DatasetError with the fix.

    ``npz:PATH`` names a file with ``x_train``, ``y_train``, ``x_test``, ``y_test``
    (uint8 images NCHW or NHWC with 1 or 3 channels; integer labels from 0).
    """
    if name.startswith("npz:"):
        return _npz_spec(name)
    info = DATASETS.get(canonical(name))
    if info is None:
        allowed = ", ".join([*DATASETS, "npz:PATH"])
        raise DatasetError(f"dataset: unknown dataset {name!r}; allowed: {allowed}")
    if info.needs_data_dir:
        dataset_folder(info, data_dir)
    return TaskSpec(dataset=info.name, input_shape=info.input_shape, num_classes=info.num_classes)


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: Path, keys: tuple[str, ...] = NPZ_KEYS) -> dict[str, Any]:
    """``keys`` of an npz dataset file as numpy arrays (no pickles); DatasetError naming
    the file and the fix when it is not an archive holding all of :data:`NPZ_KEYS`."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single array (.npy), not an archive of arrays")
        with loaded as npz:
            missing = [k for k in NPZ_KEYS if k not in npz]
            if missing:
                raise DatasetError(
                    f"dataset: {path} lacks array {missing[0]!r}; an npz dataset holds "
                    "x_train, y_train, x_test, y_test (np.savez)"
                )
            return {k: npz[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        why = str(exc) or type(exc).__name__  # an empty file's EOFError says little
        raise DatasetError(
            f"dataset: cannot read {path} as .npz ({why}); write one with np.savez"
        ) from None


def _npz_spec(name: str) -> TaskSpec:
    path = Path(name[4:])
    if path.is_dir():
        raise DatasetError(
            f"dataset: {path} is a directory; pass the .npz file itself: --dataset npz:FILE.npz"
        )
    if not path.is_file():
        raise DatasetError(f"dataset: npz file {path} not found; pass --dataset npz:PATH")
    arrays = read_npz(path, ("x_train", "y_train"))
    shape = _nchw(arrays["x_train"].shape, path)
    y = arrays["y_train"]
    num_classes = int(y.max()) + 1 if y.size else 0
    if num_classes < 2:
        raise DatasetError(f"dataset: {path} y_train needs at least 2 classes")
    return TaskSpec(dataset=name, input_shape=shape, num_classes=num_classes)


def _nchw(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    if len(shape) == 3:  # N, H, W: one channel
        return (1, shape[1], shape[2])
    if len(shape) == 4 and shape[1] in (1, 3):
        return (shape[1], shape[2], shape[3])
    if len(shape) == 4 and shape[3] in (1, 3):
        return (shape[3], shape[1], shape[2])
    raise DatasetError(
        f"dataset: {path} x_train has shape {shape}; expected [N,H,W], [N,C,H,W] or [N,H,W,C] "
        "with C 1 or 3"
    )
