"""Combined model effectiveness CM (paper Eq. 1) and energy accounting (Eq. 2-3).

Pure: no torch.

Eq. 1:  CM = AW·(Ta + Va) + FW·NF − EW·(TNE + VNE)

The paper does not say how FPS and energies are normalised. We use a saturating
ratio to the user's own threshold, ``x / (x + T)``:

- NF  = F  / (F  + TF)   — 0 for a model that cannot run, 0.5 exactly at the FPS
  target TF, approaching 1 for much faster models;
- TNE = E1 / (E1 + TE1) and VNE = E2 / (E2 + TE2) — 0.5 at the energy threshold.

It is bounded in [0, 1) like the accuracies, monotonic (so it never reorders
models on a single metric), scale-free (the threshold sets the scale, so kWh vs
Wh does not matter), and a huge outlier cannot swamp the accuracy terms, which a
plain ratio ``F / TF`` would allow (the paper's own FPS values span 7k-187k).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

PAPER_PUE = 1.58  # Eq. 2, from Strubell et al. (the paper's [38])
PAPER_CO2_LBS_PER_KWH = 0.954  # Eq. 3, US average carbon intensity used by the paper


def saturating(value: float, threshold: float) -> float:
    """``value / (value + threshold)``; 0 for value <= 0."""
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if not value > 0:  # also catches NaN
        return 0.0
    if math.isinf(value):
        return 1.0
    return value / (value + threshold)


def combined_effectiveness(
    metrics: Mapping[str, float], thresholds: Mapping[str, float], weights: Mapping[str, float]
) -> float:
    """Eq. 1. ``metrics`` needs A1, A2, F, E1, E2; ``thresholds`` TF, TE1, TE2;
    ``weights`` AW, FW, EW."""
    nf = saturating(metrics["F"], thresholds["TF"])
    tne = saturating(metrics["E1"], thresholds["TE1"])
    vne = saturating(metrics["E2"], thresholds["TE2"])
    return (
        weights["AW"] * (metrics["A1"] + metrics["A2"])
        + weights["FW"] * nf
        - weights["EW"] * (tne + vne)
    )


def kwh_pue(
    hours: float,
    cpu_power_w: float,
    ram_power_w: float,
    gpu_power_w: float = 0.0,
    gpus: int = 0,
    pue: float = PAPER_PUE,
) -> float:
    """Eq. 2: pt = PUE · t · (pc + pr + g·pg) / 1000, in kWh-PUE. Powers in watts."""
    return pue * hours * (cpu_power_w + ram_power_w + gpus * gpu_power_w) / 1000.0


def energy_to_kwh_pue(energy_kwh: float, pue: float = PAPER_PUE) -> float:
    """Eq. 2 for a measured energy: the device energy times PUE (t·p is already energy)."""
    return pue * energy_kwh


def co2_lbs(kwh_pue_value: float, lbs_per_kwh: float = PAPER_CO2_LBS_PER_KWH) -> float:
    """Eq. 3: CO2e (lbs) = 0.954 · pt."""
    return lbs_per_kwh * kwh_pue_value
