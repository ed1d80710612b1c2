"""The data a candidate may see, prepared by a trusted child before any candidate runs.

The search protocol keeps the validation labels away from the candidate's process: a
``prepare`` child (forked from the fork server, never running candidate code) reads the
dataset once per run and writes two files into a directory the sandbox owns:

- ``train.pt``, the only data file a candidate's process may read (Landlock read path):
  the training split (after the search subset) minus a *plateau slice*, and that slice,
  on which the learning-rate plateau and early stopping watch the loss. The slice is
  ``PLATEAU_FRACTION`` of the training split, stratified and seeded. (The paper reduces
  the LR on "validation loss"; here that role is played by a slice carved from the
  training split, so that the validation labels stay in the measuring process.)
- ``eval.pt``, read by the measuring child only: the same fitting part (for A1) and the
  validation split (for A2 and E2); for ``retrain`` (``job.mode == "retrain"``) also the
  held-out test set (``x_test``/``y_test``), which the measuring child uses once.

Both files carry the normalisation statistics of the whole training split, so the two
sides normalise identically. Tensors are saved with ``torch.save`` and read back with
``weights_only=True``.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from lemo_nade.engine.data import Split, split_for_job, stratified_split
from lemo_nade.engine.loaders import load
from lemo_nade.engine.protocol import EVAL_FILE, TRAIN_FILE
from lemo_nade.files import atomic_write
from lemo_nade.records import EvalJob

PLATEAU_FRACTION = 0.1
_PLATEAU_SEED_MIX = 104_729  # the slice's draw is independent of the split's and subset's


def prepare(job: EvalJob, out_dir: Path) -> tuple[Path, Path]:
    """Write ``train.pt`` and ``eval.pt`` for ``job``'s dataset and split into ``out_dir``."""
    split = split_for_job(job)
    fit, plateau = stratified_split(
        split.y_train, PLATEAU_FRACTION, job.split_seed * _PLATEAU_SEED_MIX + 3
    )
    common = {"mean": split.mean, "std": split.std, "num_classes": split.num_classes}
    fitting = {"x_fit": split.x_train[fit], "y_fit": split.y_train[fit]}
    train = {
        **common,
        **fitting,
        "x_held": split.x_train[plateau],
        "y_held": split.y_train[plateau],
    }
    evaluation = {**common, **fitting, "x_held": split.x_val, "y_held": split.y_val}
    if job.mode == "retrain":  # the test set, for the measuring child only
        raw = load(job.dataset, job.data_dir)
        evaluation |= {"x_test": raw.x_test, "y_test": raw.y_test}
    paths = out_dir / TRAIN_FILE, out_dir / EVAL_FILE
    for path, tensors in zip(paths, (train, evaluation), strict=True):
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        atomic_write(path, buffer.getvalue(), fsync=False)
    return paths


def load_prepared(path: Path, device: torch.device | str | None = None) -> Split:
    """A prepared file as a :class:`Split`: ``x_val``/``y_val`` are the held-out part
    (the plateau slice in ``train.pt``, the validation split in ``eval.pt``)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    split = Split(
        x_train=data["x_fit"],
        y_train=data["y_fit"],
        x_val=data["x_held"],
        y_val=data["y_held"],
        mean=data["mean"],
        std=data["std"],
        num_classes=int(data["num_classes"]),
    )
    return split.to(device) if device is not None else split


def load_test(path: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out test set of a retrain's ``eval.pt`` (images not normalised); raises
    KeyError where the file holds none."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["x_test"].to(device), data["y_test"].to(device)
