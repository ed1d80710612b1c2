"""The search protocol's three child processes: prepare, train, measure.

A candidate's process produces weights, never numbers:

- ``prepare`` (trusted, once per run and data split): writes the prepared data files
  (:mod:`lemo_nade.engine.prepared`).
- ``train`` (the candidate): runs the candidate's code, trains it on ``train.pt`` (the
  training split less the plateau slice; no validation or test labels exist in this
  process), and hands over the trained model as a ``torch.export`` archive, ``model.pt2``
  in its working directory. Whatever else it writes is ignored by the run process.
- ``measure`` (trusted: forked from the fork server, it never executes candidate code):
  loads the archive without running anything it could smuggle in
  (:mod:`lemo_nade.engine.artifact`) and computes A1, A2, E2, P, FLOPs, FPS and latency.

E1 and the training time are measured by the parent from outside the candidate's process
(its rusage and the machine's counters over its lifetime), so they are not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lemo_nade.engine import artifact
from lemo_nade.engine.data import Split
from lemo_nade.engine.prepared import prepare
from lemo_nade.engine.protocol import ARTIFACT_FILE
from lemo_nade.files import atomic_write
from lemo_nade.records import EvalJob


class Graph(nn.Module):
    """An exported program as a module the measuring code can call: its train/eval mode
    is fixed at export (eval), so switching modes is a no-op."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.graph_module = program.module()

    def train(self, mode: bool = True) -> Graph:
        return self

    def forward(self, x: torch.Tensor) -> Any:
        return self.graph_module(x)


def run_prepare(job: EvalJob) -> None:
    prepare(job, Path(job.prepared))


def hand_over(model: nn.Module, split: Split) -> None:
    """Export the trained model (eval mode) to ``model.pt2`` in the working directory:
    the candidate process's one product. Raises what the exporter raises."""
    example = split.normalize(split.x_train[:2])
    data = artifact.export_bytes(model, example)
    atomic_write(Path.cwd() / ARTIFACT_FILE, data, fsync=False)


def load_graph(path: Path, device: torch.device) -> tuple[torch.export.ExportedProgram, Graph]:
    """The handed-over graph (raises ArtifactError for one that is not acceptable)."""
    program = artifact.load(path.read_bytes())
    return program, Graph(program).to(device)


def graph_sizes(program: torch.export.ExportedProgram) -> dict[str, Any]:
    """P counts every number the graph holds (parameters, buffers, constants), so weights
    cannot hide outside ``parameters()``; the trainable count and the size in MB too."""
    tensors = artifact.held_tensors(program)
    return {
        "P": artifact.tensor_elements(program),
        "params_trainable": sum(
            program.state_dict[name].numel() for name in program.graph_signature.parameters
        ),
        "model_mb": sum(t.numel() * t.element_size() for t in tensors) / 1e6,
    }


class _CommonOps(nn.Module):
    """The operators most candidates use, each once, at the smallest sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.norm1d = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        x = x + F.gelu(x) + torch.sigmoid(x) + F.silu(x)
        x = F.max_pool2d(x, 2) + F.avg_pool2d(x, 2)
        x = F.adaptive_avg_pool2d(torch.cat([x, x], dim=1), 1).flatten(1)
        return self.fc(self.drop(F.leaky_relu(self.norm1d(x))))


def warm_up() -> None:
    """Export, save, load, unlift and call a small model once (the fork server does, at
    start): the exporter's and the loader's lazy state, including each common
    operator's fake-tensor and decomposition tables, is then built before any child
    forks, so a hand-over and a measurement pay only for what is new in their model."""
    with torch.no_grad():
        example = torch.zeros(2, 1, 8, 8)
        data = artifact.export_bytes(_CommonOps().eval(), example)
        graph = Graph(artifact.load(data))
        for batch in (2, 1):
            graph(example[:batch])
