"""Issue 16, points 1 and 3: `retrain` and `export` on the same path as a search
candidate. The retrain child (the candidate's code) trains on a prepared file without
validation or test labels and hands over an archive; a trusted measuring child computes
the test accuracy; `export` writes formats from the measured archive and runs no
candidate code.

The policy is switched off (``check_policy=False``) where a candidate attacks: these
test the process boundary itself.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from candidates import SMALL_CNN
from lemo_nade.engine import artifact, worker
from lemo_nade.engine.prepared import load_test, prepare
from lemo_nade.records import EvalJob, Evaluation, Status
from lemo_nade.sandbox import Sandbox
from sandboxes import job

pytest_plugins = ["sandbox_fixtures"]

FORGING = (
    "import torch\n"
    "torch.Tensor.eq = lambda self, other: torch.ones(self.shape, dtype=torch.bool)\n"
    "torch.Tensor.__eq__ = torch.Tensor.eq\n"
    "torch.Tensor.argmax = lambda self, *a, **k: torch.zeros(self.shape[0], dtype=torch.long)\n"
)


def test_the_retrain_training_file_holds_no_validation_or_test_labels(tmp_path: Path) -> None:
    retrain_job = replace(job(SMALL_CNN), mode="retrain")
    train_pt, eval_pt = prepare(retrain_job, tmp_path)
    train = torch.load(train_pt, weights_only=True)
    held = torch.load(eval_pt, weights_only=True)
    assert "x_test" not in train and "y_test" not in train
    # the plateau slice is carved from the training split, not the validation split
    assert torch.equal(train["y_fit"], held["y_fit"])  # the same fitting part on both sides
    assert len(train["y_held"]) < len(held["y_held"])  # 10% of the training split
    x_test, y_test = load_test(eval_pt, torch.device("cpu"))
    assert len(x_test) == len(y_test) == 359  # digits' test set, for the measuring child
    search_eval = torch.load(prepare(job(SMALL_CNN), tmp_path / "s")[1], weights_only=True)
    assert "x_test" not in search_eval  # a search never prepares the test set


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")
def test_retrain_test_accuracy_is_measured_outside_the_candidate(
    box: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate that patches torch's comparison ops (which forged the retrained test
    accuracy 0.777 -> 1.000 before) gets its honest test accuracy; the training child
    reads only ``train.pt``."""
    seen: list[tuple[str, tuple[str, ...] | None]] = []
    original = Sandbox.run_phase

    def spy(self: Sandbox, where: Path, phase_job: EvalJob, *args: Any, **kw: Any) -> Any:
        seen.append((phase_job.phase, args[1] if len(args) > 1 else kw.get("read_paths")))
        return original(self, where, phase_job, *args, **kw)

    monkeypatch.setattr(Sandbox, "run_phase", spy)

    def retrain(code: str, name: str) -> Evaluation:
        retrain_job = replace(job(code, epochs=2), mode="retrain")
        work = tmp_path / name
        work.mkdir()
        return box.evaluate(retrain_job, timeout_s=180, check_policy=False, workdir=work)

    honest = retrain(SMALL_CNN, "honest")
    assert honest.status is Status.OK and honest.metrics is not None, honest.error
    assert honest.artifact and (tmp_path / "honest" / "checkpoint.pt").is_file()
    forged = retrain(FORGING + SMALL_CNN, "forged")
    assert forged.status is Status.OK and forged.metrics is not None, forged.error
    honest_acc, forged_acc = honest.metrics.test_accuracy, forged.metrics.test_accuracy
    assert honest_acc is not None and forged_acc is not None
    assert forged_acc == pytest.approx(honest_acc, abs=0.05) and forged_acc < 0.99
    assert forged.metrics.test_images == 359 and forged.metrics.E1 > 0
    reads = {phase: paths for phase, paths in seen if phase != "prepare"}
    assert reads["train"] is not None and [Path(p).name for p in reads["train"]] == ["train.pt"]
    assert reads["measure"] is not None and [Path(p).name for p in reads["measure"]] == ["eval.pt"]


def test_export_runs_no_candidate_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export child loads the measured archive only: a candidate whose module-level
    code leaves a marker file is never executed, in any format."""
    marker = tmp_path / "candidate-ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\n" + SMALL_CNN
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    (tmp_path / "model.pt2").write_bytes(artifact.export_bytes(model, torch.randn(2, 1, 8, 8)))
    monkeypatch.chdir(tmp_path)
    for fmt in ("state_dict", "torchscript", "pt2"):
        export_job = replace(
            job(code), mode="export", export_format=fmt, artifact=str(tmp_path / "model.pt2")
        )
        evaluation = worker.run_job(export_job)
        assert evaluation.status is Status.OK, evaluation.error
        assert (tmp_path / f"export-{fmt}" / "export.json").is_file()
    assert not marker.exists()
    worker.load_candidate(code)  # the marker works: running the code makes it
    assert marker.exists()
