"""engine.data, .loaders and .augment: the digits and npz loaders, the stratified split
and search subset, normalisation and the batched affine augmentation. The
original-format loaders (CIFAR, ImageNet16) are tested in test_datasets.py."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lemo_nade.datasets import DatasetError
from lemo_nade.engine.augment import (
    PAPER_AUGMENT,
    Augment,
    affine_from_params,
    affine_matrices,
    augment,
    sample_affine,
    warp,
)
from lemo_nade.engine.data import (
    channel_stats,
    class_subset,
    make_split,
    split_for_job,
    stratified_split,
)
from lemo_nade.engine.loaders import load
from lemo_nade.records import EvalJob

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


def test_class_subset_per_class_and_fraction() -> None:
    y = torch.tensor([0] * 100 + [1] * 50 + [2] * 3)
    capped = class_subset(y, per_class=10, seed=1)
    assert Counter(y[capped].tolist()) == {0: 10, 1: 10, 2: 3}  # a small class keeps all
    assert torch.equal(capped, torch.sort(capped).values)
    assert torch.equal(capped, class_subset(y, per_class=10, seed=1))
    assert not torch.equal(capped, class_subset(y, per_class=10, seed=2))
    tenth = class_subset(y, fraction=0.1, seed=1)
    assert Counter(y[tenth].tolist()) == {0: 10, 1: 5, 2: 1}  # at least one per class
    assert torch.equal(class_subset(y), torch.arange(len(y)))


def test_subset_reduces_training_only_and_is_the_same_for_every_candidate() -> None:
    raw = load("digits", None)
    full = make_split(raw, 0.1, seed=5)
    small = make_split(raw, 0.1, seed=5, subset_per_class=20)
    assert Counter(small.y_train.tolist()) == dict.fromkeys(range(10), 20)
    assert torch.equal(small.x_val, full.x_val) and torch.equal(small.y_val, full.y_val)
    assert torch.equal(small.mean, full.mean) and torch.equal(small.std, full.std)
    again = make_split(raw, 0.1, seed=5, subset_per_class=20)
    assert torch.equal(again.x_train, small.x_train)
    # the subset is drawn from the training split: no validation image leaks into it
    train_rows = {bytes(r) for r in small.x_train.flatten(1).numpy()}
    assert not train_rows & {bytes(r) for r in full.x_val.flatten(1).numpy()}
    half = make_split(raw, 0.1, seed=5, subset_fraction=0.5)
    assert abs(len(half.x_train) - len(full.x_train) / 2) <= 10


def test_split_for_job_uses_the_jobs_split_and_subset() -> None:
    job = EvalJob(code="", dataset="digits", data_dir=None, epochs=1, split_seed=2)
    split = split_for_job(job)
    direct = make_split(load("digits", None), 0.1, seed=2)
    assert torch.equal(split.y_train, direct.y_train) and torch.equal(split.y_val, direct.y_val)
    lines: list[str] = []
    small = split_for_job(EvalJob(**{**job.to_dict(), "subset_per_class": 7}), "cpu", lines.append)
    assert len(small.x_train) == 70 and torch.equal(small.y_val, direct.y_val)
    assert lines == []  # the built-in dataset has no checksum notes


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


def test_shift_moves_pixels_exactly() -> None:
    x = _images(6, 8)
    theta = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]).expand(len(x), 2, 3)
    out = warp(x, theta)  # tx 0.5 in normalised units = 2 of 8 pixels: content moves left
    assert torch.allclose(out[..., :6], x[..., 2:], atol=1e-5)
    assert torch.allclose(out[..., 6:], x[..., 7:8].expand(-1, -1, -1, 2), atol=1e-5)  # edges


def test_rotation_by_90_degrees_matches_rot90() -> None:
    x = _images(8, 8)
    params = sample_affine(len(x), torch.Generator().manual_seed(0), Augment().scaled(0.0))
    params = type(params)(**{**params.__dict__, "angle": torch.full((len(x),), math.pi / 2)})
    out = warp(x, affine_from_params(params, 8, 8))
    # a positive angle turns the content counter-clockwise as displayed (numpy's rot90)
    assert torch.allclose(out, x.rot90(1, dims=(2, 3)), atol=1e-4)


def _ks_uniform(values: torch.Tensor, low: float, high: float) -> float:
    """Kolmogorov-Smirnov distance of ``values`` from uniform(low, high)."""
    v = torch.sort(values.double()).values
    n = len(v)
    cdf = ((v - low) / (high - low)).clamp(0, 1)
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - cdf
    below = cdf - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(above, below).max())


def test_parameter_distributions_are_the_papers() -> None:
    n = 20_000
    p = sample_affine(n, torch.Generator().manual_seed(11), PAPER_AUGMENT)
    bound = 1.63 / math.sqrt(n)  # KS critical value at the 1% level
    ranges = {
        "angle": (p.angle, math.radians(20)),
        "shear": (p.shear, 0.1),
        "zoom_x": (p.zoom_x - 1, 0.1),
        "zoom_y": (p.zoom_y - 1, 0.1),
        "shift_x": (p.shift_x, 0.1),
        "shift_y": (p.shift_y, 0.1),
    }
    for name, (values, limit) in ranges.items():
        assert values.abs().max() <= limit + 1e-6, name
        assert values.abs().max() > 0.99 * limit, name  # the whole range is used
        assert _ks_uniform(values, -limit, limit) < bound, name
    assert abs(p.flip.float().mean().item() - 0.5) < 0.02
    # independent draws: no two parameters are correlated
    stacked = torch.stack([v for v, _ in ranges.values()] + [p.flip.double()])
    corr = torch.corrcoef(stacked.double()) - torch.eye(len(stacked), dtype=torch.float64)
    assert corr.abs().max() < 0.05


def test_the_matrix_is_built_from_the_sampled_parameters() -> None:
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    theta = affine_matrices(64, 8, 8, g1, PAPER_AUGMENT)
    p = sample_affine(64, g2, PAPER_AUGMENT)
    assert torch.equal(theta, affine_from_params(p, 8, 8))
    # on a square image, det A = zoom_x * zoom_y * (±1 for a flip); translation = 2 * shift
    det = torch.linalg.det(theta[:, :, :2].double())
    sign = torch.where(p.flip, -1.0, 1.0).double()
    assert torch.allclose(det, sign * p.zoom_x.double() * p.zoom_y.double(), atol=1e-5)
    assert torch.allclose(theta[:, 0, 2], 2 * p.shift_x) and torch.allclose(
        theta[:, 1, 2], 2 * p.shift_y
    )
