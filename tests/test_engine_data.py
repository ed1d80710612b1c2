"""engine.data: loaders (digits, npz, real CIFAR-10, CIFAR-100 layout), the stratified
split, normalisation and the batched affine augmentation."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lemo_nade.datasets import DatasetError
from lemo_nade.engine.data import (
    Augment,
    affine_matrices,
    augment,
    channel_stats,
    load,
    make_split,
    stratified_split,
)

CIFAR_SUBSET = Path(__file__).parents[2] / "shared/data/cifar-10-subset"
needs_cifar = pytest.mark.skipif(not CIFAR_SUBSET.is_dir(), reason="CIFAR-10 subset not present")


# ---- loaders ---------------------------------------------------------------------------


def test_digits_loads_as_uint8_nchw() -> None:
    raw = load("digits", None)
    assert raw.x_train.dtype == torch.uint8 and raw.y_train.dtype == torch.int64
    assert raw.x_train.shape == (1438, 1, 8, 8) and raw.x_test.shape == (359, 1, 8, 8)
    assert raw.input_shape == (1, 8, 8) and raw.num_classes == 10
    assert int(raw.x_train.max()) == 255 and set(raw.y_train.tolist()) == set(range(10))


def _write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(path, x_train=x, y_train=y, x_test=x[:3], y_test=y[:3])
    return f"npz:{path}"


@pytest.mark.parametrize("layout", ["NHW", "NCHW", "NHWC"])
def test_npz_layouts_all_become_nchw(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, size=(6, 3 if layout != "NHW" else 1, 5, 4), dtype=np.uint8)
    stored = {"NHW": nchw[:, 0], "NCHW": nchw, "NHWC": nchw.transpose(0, 2, 3, 1)}[layout]
    y = np.array([0, 1, 2, 0, 1, 2])
    raw = load(_write_npz(tmp_path / "d.npz", stored, y), None)
    assert torch.equal(raw.x_train, torch.from_numpy(nchw))
    assert raw.num_classes == 3 and raw.y_train.dtype == torch.int64


def test_npz_float_pixels_are_a_clear_error(tmp_path: Path) -> None:
    name = _write_npz(tmp_path / "f.npz", np.zeros((4, 8, 8), np.float32), np.arange(4))
    with pytest.raises(DatasetError, match=r"f\.npz x_train is float32; expected uint8"):
        load(name, None)


@needs_cifar
def test_cifar10_real_subset() -> None:
    raw = load("cifar10", str(CIFAR_SUBSET))
    assert raw.x_train.shape == (5085, 3, 32, 32) and raw.x_test.shape == (1017, 3, 32, 32)
    assert raw.num_classes == 10 and raw.x_train.dtype == torch.uint8
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


def _cifar_dir(tmp_path: Path, batch: object, name: str = "data_batch_1") -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    with (folder / name).open("wb") as f:
        pickle.dump(batch, f)
    return folder / name


def test_cifar10_missing_file_names_it(tmp_path: Path) -> None:
    _cifar_dir(tmp_path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetError, match=r"data_batch_2 is missing"):
        load("cifar10", str(tmp_path))


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, r"needs keys b'data' and b'labels'"),
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, r"uint8 \[N, 3072\]"),
        (
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
            r"labels 0\.\.10; expected 0\.\.9",
        ),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"2 images but 1 labels"),
        ([1, 2, 3], r"needs keys"),
    ],
)
def test_cifar10_malformed_batch_is_a_clear_error(
    tmp_path: Path, batch: object, message: str
) -> None:
    path = _cifar_dir(tmp_path, batch)
    with pytest.raises(DatasetError, match=message) as info:
        load("cifar10", str(tmp_path))
    assert str(path) in str(info.value)


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickle ran code",))


def test_cifar_pickle_cannot_run_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cifar_dir(tmp_path, {b"data": _Boom(), b"labels": [0]})
    with pytest.raises(DatasetError, match=r"builtins\.print is not allowed"):
        load("cifar10", str(tmp_path))
    assert "pickle ran code" not in capsys.readouterr().out


def test_cifar100_layout_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 2)):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": list(range(95, 95 + n)) if n < 6 else [0, 99, 5, 5, 7, 8],
            b"coarse_labels": [0] * n,
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
    raw = load("cifar100", str(tmp_path))
    assert raw.num_classes == 100 and raw.x_train.shape == (6, 3, 32, 32)
    assert raw.y_train.tolist() == [0, 99, 5, 5, 7, 8] and raw.y_test.tolist() == [95, 96]


def test_unknown_dataset_and_missing_dir_are_errors() -> None:
    with pytest.raises(DatasetError, match="cannot load 'mnist'"):
        load("mnist", None)
    with pytest.raises(DatasetError, match="needs --data-dir"):
        load("cifar10", None)


# ---- split and normalisation -------------------------------------------------------------


def test_stratified_split_is_proportional_and_deterministic() -> None:
    y = torch.tensor([0] * 100 + [1] * 50 + [2] * 30 + [3] * 7)
    train, val = stratified_split(y, 0.1, seed=3)
    assert Counter(y[val].tolist()) == {0: 10, 1: 5, 2: 3, 3: 1}
    assert Counter(y[train].tolist()) == {0: 90, 1: 45, 2: 27, 3: 6}
    again = stratified_split(y, 0.1, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    other = stratified_split(y, 0.1, seed=4)
    assert not torch.equal(val, other[1])


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    fraction=st.sampled_from([0.1, 0.2, 0.5]),
    seed=st.integers(0, 2**31),
)
def test_split_partitions_every_class(counts: list[int], fraction: float, seed: int) -> None:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]
    train, val = stratified_split(y, fraction, seed)
    assert sorted(train.tolist() + val.tolist()) == list(range(len(y)))
    for c, n in enumerate(counts):
        assert int((y[val] == c).sum()) == round(n * fraction)


def test_normalisation_uses_train_split_stats() -> None:
    raw = load("digits", None)
    split = make_split(raw, 0.1, seed=0)
    assert len(split.x_train) + len(split.x_val) == len(raw.x_train)
    z = split.normalize(split.x_train)
    assert z.dtype == torch.float32 and split.x_train.dtype == torch.uint8
    assert z.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert z.std().item() == pytest.approx(1.0, abs=1e-3)


def test_channel_stats_match_a_direct_computation() -> None:
    x = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    mean, std = channel_stats(x, chunk=7)
    ref = x.double()
    assert torch.allclose(mean.double(), ref.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(std.double(), ref.std(dim=(0, 2, 3), unbiased=False), atol=1e-3)


# ---- augmentation ----------------------------------------------------------------------------


def _images(height: int = 8, width: int = 8) -> torch.Tensor:
    return torch.randn(16, 3, height, width, generator=torch.Generator().manual_seed(0))


def test_zero_strength_augmentation_is_identity() -> None:
    x = _images(8, 12)
    out = augment(x, torch.Generator().manual_seed(1), Augment().scaled(0.0))
    assert torch.allclose(out, x, atol=1e-5)


def test_flip_only_is_an_exact_horizontal_flip() -> None:
    x = _images(6, 10)
    out = augment(x, torch.Generator().manual_seed(1), Augment(0, 1.0, 0, 0, 0))
    assert torch.allclose(out, x.flip(-1), atol=1e-5)


def test_paper_augmentation_changes_images_and_is_seeded() -> None:
    x = _images()
    first = augment(x, torch.Generator().manual_seed(5))
    again = augment(x, torch.Generator().manual_seed(5))
    other = augment(x, torch.Generator().manual_seed(6))
    assert first.shape == x.shape and torch.equal(first, again)
    assert not torch.allclose(first, x, atol=1e-2) and not torch.equal(first, other)


def test_affine_ranges_follow_the_spec() -> None:
    g = torch.Generator().manual_seed(0)
    shift = affine_matrices(500, 8, 8, g, Augment(0, 0, 0.1, 0, 0))
    assert torch.equal(shift[:, :, :2], torch.eye(2).expand(500, 2, 2))
    assert shift[:, :, 2].abs().max() <= 0.2 and shift[:, :, 2].abs().max() > 0.15
    zoom = affine_matrices(500, 8, 8, g, Augment(0, 0, 0, 0, 0.1))
    diag = torch.stack([zoom[:, 0, 0], zoom[:, 1, 1]])
    assert diag.min() >= 0.9 and diag.max() <= 1.1 and zoom[:, 0, 1].abs().max() == 0
    rotation = affine_matrices(500, 8, 8, g, Augment(20, 0, 0, 0, 0))
    angles = torch.atan2(rotation[:, 1, 0], rotation[:, 0, 0]).rad2deg()
    assert angles.abs().max() <= 20 and angles.abs().max() > 18
