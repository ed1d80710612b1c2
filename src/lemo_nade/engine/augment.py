"""The paper's augmentation (Sec. 4.1) as one batched affine warp per batch: no
per-image Python loop, on whatever device the batch is on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
