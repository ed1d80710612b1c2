"""Datasets from local files in their original formats: the registry's up-front checks,
the loaders (small synthetic files written in each real format, plus the real CIFAR-10
subset), checksum handling, and the errors that name the file and the fix."""

from __future__ import annotations

import hashlib
import pickle
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lemo_nade import datasets
from lemo_nade.datasets import DATASETS, DatasetError, OfficialFile, resolve_dataset
from lemo_nade.engine.data import split_for_job
from lemo_nade.engine.loaders import load
from lemo_nade.records import EvalJob

CIFAR_SUBSET = Path(__file__).parents[2] / "shared/data/cifar-10-subset"
needs_cifar = pytest.mark.skipif(not CIFAR_SUBSET.is_dir(), reason="CIFAR-10 subset not present")
CIFAR_URL = "cs.toronto.edu/~kriz/cifar.html"


def _dump(path: Path, obj: Any, protocol: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def _cifar10(root: Path, n: int = 4, str_keys: bool = False, seed: int = 0) -> Path:
    """A complete CIFAR-10 python-version tree with ``n`` images per batch.

    ``str_keys``: keys as ``'data'`` (what the python-2 originals give under latin1);
    otherwise ``b'data'`` (python 3 pickles, like the shared subset).
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"

    def key(k: str) -> str | bytes:
        return k if str_keys else k.encode()

    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        batch = {
            key("batch_label"): key(f"batch {i}"),
            key("labels"): [int(v) for v in (np.arange(n) + i) % 10],
            key("data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        _dump(folder / name, batch, protocol=2 if str_keys else 4)
    meta = {key("label_names"): [key(f"class{c}") for c in range(10)], key("num_vis"): 3072}
    _dump(folder / "batches.meta", meta)
    return folder


def _cifar100(root: Path, n_train: int = 6, n_test: int = 3) -> Path:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            "coarse_labels": [0] * n,
        }
        _dump(folder / name, batch, protocol=2)
    _dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2)
    return folder


def _imagenet16(root: Path, labels: dict[str, list[int]] | None = None) -> Path:
    """ImageNet16 (Downsampled ImageNet 16x16) pickles: 1-based labels 1..1000."""
    rng = np.random.default_rng(2)
    folder = root / "ImageNet16"
    names = [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]
    labels = labels or {}
    for i, name in enumerate(names):
        ys = labels.get(name, [1, 120, 121, 1000, 5 + i])
        data = rng.integers(0, 256, (len(ys), 768), dtype=np.uint8)
        batch: dict[str, Any] = {"data": data, "labels": ys}
        if name != "val_data":
            batch["mean"] = data.mean(axis=0)  # the originals carry a float 'mean' row
        _dump(folder / name, batch, protocol=2)
    return folder


# ---- registry ---------------------------------------------------------------------------


def test_registry_shapes_and_classes() -> None:
    shapes = {name: (i.input_shape, i.num_classes) for name, i in DATASETS.items()}
    assert shapes == {
        "digits": ((1, 8, 8), 10),
        "shifted-digits": ((1, 16, 16), 10),
        "cifar10": ((3, 32, 32), 10),
        "cifar100": ((3, 32, 32), 100),
        "imagenet16-120": ((3, 16, 16), 120),
    }


@pytest.mark.parametrize(
    ("name", "make"),
    [("cifar10", _cifar10), ("cifar100", _cifar100), ("imagenet16-120", _imagenet16)],
)
def test_resolve_accepts_the_parent_dir_or_the_folder_itself(
    tmp_path: Path, name: str, make: Any
) -> None:
    folder = make(tmp_path)
    info = DATASETS[name]
    for data_dir in (tmp_path, folder):
        spec = resolve_dataset(name, str(data_dir))
        assert (spec.dataset, spec.input_shape, spec.num_classes) == (
            name,
            info.input_shape,
            info.num_classes,
        )


def test_aliases_resolve_to_the_registered_name(tmp_path: Path) -> None:
    _imagenet16(tmp_path)
    assert resolve_dataset("ImageNet16", str(tmp_path)).dataset == "imagenet16-120"
    assert load("imagenet16", str(tmp_path)).num_classes == 120


@pytest.mark.parametrize(
    ("name", "make", "remove", "fix"),
    [
        ("cifar10", _cifar10, "data_batch_3", "cifar-10-python.tar.gz"),
        ("cifar10", _cifar10, "batches.meta", "cifar-10-python.tar.gz"),
        ("cifar100", _cifar100, "test", "cifar-100-python.tar.gz"),
        ("imagenet16-120", _imagenet16, "val_data", "Imagenet16_val.zip"),
    ],
)
def test_a_missing_file_is_named_with_the_fix(
    tmp_path: Path, name: str, make: Any, remove: str, fix: str
) -> None:
    folder = make(tmp_path)
    (folder / remove).unlink()
    for check in (lambda: resolve_dataset(name, str(tmp_path)), lambda: load(name, str(tmp_path))):
        with pytest.raises(DatasetError) as info:
            check()
        text = str(info.value)
        assert str(folder / remove) in text and "is missing" in text and fix in text


def test_no_data_dir_or_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data_dir: dataset 'cifar100' is read from a local"):
        resolve_dataset("cifar100", None)
    with pytest.raises(DatasetError, match="is not a directory"):
        resolve_dataset("cifar10", str(tmp_path / "nope"))
    allowed = "allowed: digits, shifted-digits, cifar10"
    with pytest.raises(DatasetError, match=f"unknown dataset 'mnist'; {allowed}"):
        resolve_dataset("mnist", None)


# ---- loaders, synthetic files in the real formats --------------------------------------------


@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar10_format_loads_exactly(tmp_path: Path, str_keys: bool) -> None:
    folder = _cifar10(tmp_path, n=4, str_keys=str_keys)
    raw = load("cifar10", str(tmp_path))
    assert raw.x_train.shape == (20, 3, 32, 32) and raw.x_test.shape == (4, 3, 32, 32)
    assert raw.x_train.dtype == torch.uint8 and raw.y_train.dtype == torch.int64
    assert raw.class_names == tuple(f"class{c}" for c in range(10))
    with (folder / "data_batch_2").open("rb") as f:
        second = pickle.load(f, encoding="latin1")
    rows = second["data" if str_keys else b"data"]
    # image 4 is the first of batch 2: R, G, B planes of 32x32 in row order
    assert torch.equal(raw.x_train[4], torch.from_numpy(rows[0].reshape(3, 32, 32)))
    assert raw.y_train[4:8].tolist() == [1, 2, 3, 4]
    # no official md5 matches these files, and their size is not the official one
    assert len(raw.notes) == 6 and all("not the official file" in n for n in raw.notes)


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = _cifar100(tmp_path)
    raw = load("cifar100", str(folder))  # the folder itself works too
    with (folder / "train").open("rb") as f:
        fine = pickle.load(f, encoding="latin1")["fine_labels"]
    assert raw.num_classes == 100 and raw.y_train.tolist() == fine
    assert raw.x_train.shape == (6, 3, 32, 32) and len(raw.class_names) == 100


def test_imagenet16_keeps_labels_1_to_120_as_0_to_119(tmp_path: Path) -> None:
    folder = _imagenet16(tmp_path)
    raw = load("imagenet16-120", str(tmp_path))
    # each file has labels [1, 120, 121, 1000, 5 + i]: 1, 120 and 5 + i (< 120) are kept
    assert raw.num_classes == 120 and raw.input_shape == (3, 16, 16)
    assert raw.x_train.shape == (30, 3, 16, 16) and raw.x_test.shape == (3, 3, 16, 16)
    assert raw.y_train[:3].tolist() == [0, 119, 4] and raw.y_test.tolist() == [0, 119, 14]
    with (folder / "val_data").open("rb") as f:
        val = pickle.load(f, encoding="latin1")["data"]
    kept = val[[0, 1, 4]].reshape(3, 3, 16, 16)
    assert torch.equal(raw.x_test, torch.from_numpy(kept))


def test_builtin_default_loads() -> None:
    raw = load("digits", None)
    assert raw.input_shape == (1, 8, 8) and raw.num_classes == 10 and len(raw.x_train) == 1438


# ---- malformed files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, r"needs keys 'data' and 'labels'"),
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"uint8 \[N, 3072\]"),
        ({b"data": np.zeros((2, 3072), np.int16), b"labels": [0, 1]}, r"got int16"),
        (
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
            r"labels 0\.\.10; expected 0\.\.9",
        ),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, r"integer labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"2 images but 1 labels"),
        ([1, 2, 3], r"holds a list; expected a dict"),
    ],
)
def test_malformed_cifar_batch_names_file_and_expectation(
    tmp_path: Path, batch: object, message: str
) -> None:
    folder = _cifar10(tmp_path)
    path = _dump(folder / "data_batch_2", batch)
    with pytest.raises(DatasetError, match=message) as info:
        load("cifar10", str(tmp_path))
    assert str(path) in str(info.value)


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    folder = _cifar10(tmp_path)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match=r"cannot read .*test_batch as a cifar10 pickle") as info:
        load("cifar10", str(tmp_path))
    assert CIFAR_URL in str(info.value)


def test_meta_must_list_the_class_names(tmp_path: Path) -> None:
    folder = _cifar10(tmp_path)
    _dump(folder / "batches.meta", {b"label_names": [b"a", b"b"]})
    with pytest.raises(DatasetError, match=r"batches\.meta must list 10 class names"):
        load("cifar10", str(tmp_path))


def test_imagenet16_labels_must_be_1_based(tmp_path: Path) -> None:
    _imagenet16(tmp_path, labels={"train_data_batch_4": [0, 1, 2]})
    with pytest.raises(DatasetError, match=r"train_data_batch_4 'labels' has labels 0\.\.2; "):
        load("imagenet16-120", str(tmp_path))


def test_imagenet16_rows_must_be_16x16(tmp_path: Path) -> None:
    folder = _imagenet16(tmp_path)
    _dump(folder / "val_data", {"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]})
    with pytest.raises(DatasetError, match=r"val_data 'data' must be uint8 \[N, 768\]"):
        load("imagenet16-120", str(tmp_path))


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickle ran code",))


def test_a_data_file_cannot_run_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _cifar10(tmp_path)
    _dump(folder / "data_batch_1", {b"data": _Boom(), b"labels": [0]})
    with pytest.raises(DatasetError, match=r"builtins\.print is not allowed"):
        load("cifar10", str(tmp_path))
    assert "pickle ran code" not in capsys.readouterr().out


# ---- checksums ---------------------------------------------------------------------------------


def _with_official(
    monkeypatch: pytest.MonkeyPatch, name: str, file: str, off: OfficialFile
) -> None:
    info = DATASETS[name]
    table = tuple((f, off if f == file else o) for f, o in info.official)
    monkeypatch.setitem(datasets.DATASETS, name, replace(info, official=table))


def test_checksum_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _cifar10(tmp_path, n=4)
    digest = hashlib.md5((folder / "data_batch_1").read_bytes()).hexdigest()
    # the file's own md5 as the official one: verified
    _with_official(monkeypatch, "cifar10", "data_batch_1", OfficialFile(digest, 4))
    raw = load("cifar10", str(tmp_path))
    assert "cifar-10-batches-py/data_batch_1: md5 matches the official file" in raw.notes
    # official size (4 images) but another md5: corrupt or modified -> error
    _with_official(monkeypatch, "cifar10", "data_batch_1", OfficialFile("0" * 32, 4))
    with pytest.raises(DatasetError, match=r"data_batch_1 has the official size \(4 images\)"):
        load("cifar10", str(tmp_path))
    # another size: a subset, checked for structure only, and said so
    _with_official(monkeypatch, "cifar10", "data_batch_1", OfficialFile("0" * 32, 10_000))
    notes = load("cifar10", str(tmp_path)).notes
    assert (
        "cifar-10-batches-py/data_batch_1: not the official file (4 images, the official file "
        "has 10000); md5 not checked, structure checked"
    ) in notes


def test_official_checksums_are_recorded() -> None:
    cifar10 = dict(DATASETS["cifar10"].official)
    assert cifar10["data_batch_1"] == OfficialFile("c99cafc152244af753f735de768cd75f", 10_000)
    assert cifar10["test_batch"].md5 == "40351d587109b95175f43aff81a1287e"
    assert dict(DATASETS["cifar100"].official)["train"].images == 50_000
    assert len(DATASETS["imagenet16-120"].official) == 11


# ---- the real CIFAR-10 subset -------------------------------------------------------------------


@needs_cifar
def test_real_cifar10_subset() -> None:
    raw = load("cifar10", str(CIFAR_SUBSET))
    assert raw.x_train.shape == (5085, 3, 32, 32) and raw.x_test.shape == (1017, 3, 32, 32)
    assert raw.num_classes == 10 and raw.x_train.dtype == torch.uint8
    assert raw.class_names[0] == "airplane" and raw.class_names[9] == "truck"
    # class counts as documented in the subset's SOURCE.md
    train_counts = Counter(raw.y_train.tolist())
    assert [train_counts[c] for c in range(10)] == [
        517,
        524,
        490,
        493,
        537,
        475,
        503,
        516,
        529,
        501,
    ]
    test_counts = Counter(raw.y_test.tolist())
    assert [test_counts[c] for c in range(10)] == [105, 93, 100, 104, 92, 87, 114, 102, 110, 110]
    # rows are R, G, B planes of 32x32: the first row's first 1024 bytes are the red plane
    with (CIFAR_SUBSET / "cifar-10-batches-py/data_batch_1").open("rb") as f:
        first = pickle.load(f, encoding="bytes")[b"data"][0]
    assert torch.equal(raw.x_train[0, 0], torch.from_numpy(first[:1024].reshape(32, 32)))
    # 1,017-row batches are not the official 10,000-row files: structure checked, md5 not
    assert len(raw.notes) == 6
    assert all("(1017 images, the official file has 10000)" in n for n in raw.notes)
    assert resolve_dataset("cifar10", str(CIFAR_SUBSET / "cifar-10-batches-py")).num_classes == 10


@needs_cifar
def test_the_worker_logs_what_was_verified() -> None:
    job = EvalJob(code="", dataset="cifar10", data_dir=str(CIFAR_SUBSET), epochs=1)
    lines: list[str] = []
    split = split_for_job(job, log=lines.append)
    assert len(split.x_train) + len(split.x_val) == 5085 and len(split.x_val) == 509
    assert len(lines) == 6 and lines[0].startswith("data: cifar-10-batches-py/data_batch_1: not")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "No data left in file"),  # an empty file
        (None, "a single array (.npy), not an archive"),  # np.save, not np.savez
    ],
)
def test_a_file_that_is_not_an_npz_dataset_is_one_clear_error(
    tmp_path: Path, content: bytes | None, why: str
) -> None:
    path = tmp_path / "data.npz"
    if content is None:
        with path.open("wb") as f:
            np.save(f, np.zeros(3))
    else:
        path.write_bytes(content)
    for read in (lambda: resolve_dataset(f"npz:{path}", None), lambda: load(f"npz:{path}", None)):
        with pytest.raises(DatasetError, match=f"cannot read {path} as .npz .*{re.escape(why)}"):
            read()
    np.savez(path, x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.array([0, 1]))
    with pytest.raises(DatasetError, match="lacks array 'x_test'"):
        resolve_dataset(f"npz:{path}", None)
