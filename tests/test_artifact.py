"""The hand-over archive itself (engine/artifact.py): a dynamic batch size, a clear
refusal for a forward that fixes it, and a loader whose memoised schema hints change
nothing but its speed."""

from __future__ import annotations

import sys
import typing

import pytest
import torch
from torch import nn

from candidates import SMALL_CNN
from lemo_nade.engine import artifact, loadguard, phases
from lemo_nade.records import Status
from lemo_nade.sandbox import Sandbox
from sandboxes import job

pytest_plugins = ["sandbox_fixtures"]

FIXED_BATCH_CNN = SMALL_CNN.replace("x.flatten(1)", "x.view(int(x.shape[0]), -1)")


class _FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(2, -1))


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 3))


def test_the_archive_runs_at_any_batch_size_with_the_eager_models_outputs() -> None:
    model = _small().eval()
    program = artifact.load(artifact.export_bytes(model, torch.zeros(2, 1, 8, 8)))
    graph = phases.Graph(program)
    for batch in (1, 2, 3, 257):
        x = torch.randn(batch, 1, 8, 8)
        with torch.no_grad():
            assert torch.allclose(graph(x), model(x), atol=1e-5)


def test_a_forward_that_fixes_the_batch_size_is_refused_with_the_fix() -> None:
    with pytest.raises(artifact.ArtifactError) as refused:
        artifact.export_bytes(_FixedBatch(), torch.zeros(2, 1, 8, 8))
    message = str(refused.value)
    assert "batch of exactly 2" in message and "x.flatten(1)" in message


def test_memoised_schema_hints_answer_like_typing() -> None:
    from torch._export.serde import schema, serialize

    artifact.load(artifact.export_bytes(_small(), torch.zeros(2, 1, 8, 8)))
    memo = serialize.typing
    assert isinstance(memo, loadguard._HintsMemo)
    for cls in (schema.Node, schema.TensorMeta, schema.Argument):
        expected = typing.get_type_hints(cls, globalns=vars(schema))
        assert memo.get_type_hints(cls, globalns=vars(schema)) == expected
        assert memo.get_type_hints(cls, globalns=vars(schema)) is memo.get_type_hints(
            cls, globalns=vars(schema)
        )
    assert memo.get_origin is typing.get_origin  # everything else is the real module
    loadguard.memoise_schema_hints()
    assert serialize.typing is memo  # installed once


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")
def test_a_fixed_batch_candidate_gets_failed_export_with_the_fix(box: Sandbox) -> None:
    evaluation = box.evaluate(job(FIXED_BATCH_CNN, epochs=1), timeout_s=120)
    assert evaluation.status is Status.FAILED_EXPORT, (evaluation.status, evaluation.error)
    assert "batch of exactly 2" in evaluation.error and evaluation.metrics is None
