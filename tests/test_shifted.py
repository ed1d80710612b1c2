"""The built-in ``shifted-digits`` task: each shipped digit at a random place on a 16x16
canvas with pixel noise; fixed (the same task for every run), labels untouched, and a task
where the search has something to find."""

from __future__ import annotations

import numpy as np
import torch

from lemo_nade.datasets import DATASETS, SHIFTED
from lemo_nade.engine.loaders import load
from lemo_nade.engine.shifted import CANVAS, NOISE_STD, shift


def test_registered_as_built_in_with_its_shape() -> None:
    info = DATASETS[SHIFTED]
    assert info.input_shape == (1, CANVAS, CANVAS)
    assert info.num_classes == 10
    assert not info.needs_data_dir


def test_loads_as_uint8_16x16_with_the_digits_labels_unchanged() -> None:
    digits, shifted = load("digits", None), load(SHIFTED, None)
    assert shifted.x_train.dtype == torch.uint8
    assert tuple(shifted.x_train.shape) == (len(digits.x_train), 1, 16, 16)
    assert tuple(shifted.x_test.shape) == (len(digits.x_test), 1, 16, 16)
    assert torch.equal(shifted.y_train, digits.y_train)
    assert torch.equal(shifted.y_test, digits.y_test)


def test_the_same_task_every_time_and_different_per_split() -> None:
    first, again = load(SHIFTED, None), load(SHIFTED, None)
    assert torch.equal(first.x_train, again.x_train)
    assert torch.equal(first.x_test, again.x_test)
    one = np.full((1, 1, 8, 8), 128, np.uint8)
    assert not np.array_equal(shift(one, "train"), shift(one, "test"))


def test_each_digit_sits_whole_somewhere_under_the_noise() -> None:
    """Without noise the canvas holds the digit exactly once, at an offset that keeps it
    whole; the offsets vary (the task is about where, not only what)."""
    images = load("digits", None).x_test.numpy()[:200]
    noisy = shift(images, "test").astype(np.float32)
    offsets = set()
    for image, placed in zip(images, noisy, strict=True):
        best = min(
            ((r, c) for r in range(CANVAS - 7) for c in range(CANVAS - 7)),
            key=lambda rc: np.abs(
                placed[0, rc[0] : rc[0] + 8, rc[1] : rc[1] + 8] - image[0]
            ).mean(),
        )
        window = placed[0, best[0] : best[0] + 8, best[1] : best[1] + 8]
        assert np.abs(window - image[0]).mean() < NOISE_STD  # the digit under N(0, 30) noise
        offsets.add(best)
    assert len(offsets) > 30


def test_noise_has_the_stated_spread() -> None:
    """On blank images every pixel is N(0, 30) noise clipped at 0: about half are 0 and the
    mean is 30 / sqrt(2 pi)."""
    placed = shift(np.zeros((400, 1, 8, 8), np.uint8), "train").astype(np.float64)
    assert abs(placed.mean() - NOISE_STD / np.sqrt(2 * np.pi)) < 0.5
    assert abs((placed == 0).mean() - 0.5) < 0.02
