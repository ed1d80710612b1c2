"""Dataset registry (pure side): names, shapes and class counts, and the checks that
can be done before any child process starts. Loading pixels lives in ``engine.data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lemo_nade.records import TaskSpec


class DatasetError(ValueError):
    """A dataset name, directory or file is wrong; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    needs_data_dir: bool
    expected_files: tuple[str, ...] = ()  # relative to data_dir
    where_to_get: str = ""


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10, needs_data_dir=False),
    "cifar10": DatasetInfo(
        "cifar10",
        (3, 32, 32),
        10,
        needs_data_dir=True,
        expected_files=(
            "cifar-10-batches-py/data_batch_1",
            "cifar-10-batches-py/test_batch",
            "cifar-10-batches-py/batches.meta",
        ),
        where_to_get="extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        (3, 32, 32),
        100,
        needs_data_dir=True,
        expected_files=("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        where_to_get="extract cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
}


def builtin_path(name: str) -> Path:
    """Path of a dataset file shipped inside the package."""
    return Path(str(resources.files("lemo_nade") / "data" / f"{name}.npz"))


def resolve_dataset(name: str, data_dir: str | None) -> TaskSpec:
    """Validate a dataset choice without loading it; raise DatasetError with the fix.

    ``npz:PATH`` names a file with ``x_train``, ``y_train``, ``x_test``, ``y_test``
    (uint8 images NCHW or NHWC with 1 or 3 channels; integer labels from 0).
    """
    if name.startswith("npz:"):
        return _npz_spec(name)
    info = DATASETS.get(name)
    if info is None:
        allowed = ", ".join([*DATASETS, "npz:PATH"])
        raise DatasetError(f"dataset: unknown dataset {name!r}; allowed: {allowed}")
    if info.needs_data_dir:
        if not data_dir:
            raise DatasetError(
                f"data_dir: dataset {name!r} is read from a local directory; pass --data-dir DIR "
                f"({info.where_to_get})"
            )
        root = Path(data_dir)
        if not root.is_dir():
            raise DatasetError(f"data_dir: {root} is not a directory; pass --data-dir DIR")
        missing = [f for f in info.expected_files if not (root / f).is_file()]
        if missing:
            raise DatasetError(
                f"data_dir: {root} lacks {missing[0]} for dataset {name!r}; {info.where_to_get} "
                f"into {root}"
            )
    return TaskSpec(dataset=name, input_shape=info.input_shape, num_classes=info.num_classes)


def _npz_spec(name: str) -> TaskSpec:
    import numpy as np

    path = Path(name[4:])
    if not path.is_file():
        raise DatasetError(f"dataset: npz file {path} not found; pass --dataset npz:PATH")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
            if missing:
                raise DatasetError(f"dataset: {path} lacks array {missing[0]!r}")
            x = data["x_train"]
            y = data["y_train"]
            shape = _nchw(x.shape, path)
            num_classes = int(y.max()) + 1 if y.size else 0
    except (OSError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"dataset: cannot read {path} as .npz ({exc})") from None
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
