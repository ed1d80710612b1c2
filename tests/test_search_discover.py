"""The ``search`` presets: "paper" is Algorithm 1 as written (the default); "discover"
chooses the best parent, asks two instructions at a time and never trains a model twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from lemo_nade.config import build_config
from lemo_nade.records import ProposalRequest, Status
from lemo_nade.runs import create_run
from lemo_nade.search import run_search

pytest_plugins = ["sandbox_fixtures"]


def test_the_presets_and_explicit_keys() -> None:
    paper = build_config({}, {"search": "paper"})
    assert (paper.search, paper.parent, paper.max_instructions, paper.retrain_duplicates) == (
        "paper",
        "last",
        0,
        True,
    )
    found = build_config({}, {"search": "discover"})
    assert build_config({}, {}) == found  # the default
    assert (found.parent, found.max_instructions, found.retrain_duplicates) == ("best", 2, False)
    assert (found.promote, paper.promote) == (2, 0)
    mixed = build_config({"search": "discover"}, {"parent": "last"})
    assert (mixed.parent, mixed.max_instructions) == ("last", 2)


class Repeats:
    """An architect that proposes the same model until told it is a duplicate."""

    name = "repeats"

    def __init__(self, first: str, second: str) -> None:
        self.first, self.second, self.requests = first, second, []

    def propose(self, request: ProposalRequest):  # type: ignore[no-untyped-def]
        from lemo_nade.records import Proposal

        self.requests.append(request)
        code = self.second if request.failed_code == self.first else self.first
        return Proposal(code=code)


@pytest.mark.usefixtures("shared_sandbox")
def test_a_model_already_trained_is_not_trained_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from candidates import SMALL_CNN
    from lemo_nade import runs

    wider = SMALL_CNN.replace("nn.Conv2d(1, 8,", "nn.Conv2d(1, 16,").replace("(8 *", "(16 *")
    architect = Repeats(SMALL_CNN, wider)
    monkeypatch.setattr(runs, "architect_for", lambda *a, **k: architect)
    cfg = build_config({}, {"iterations": 2, "epochs": 1, "dataset": "digits", "promote": 0})
    run_dir = create_run(cfg, tmp_path / "runs")
    first, second = run_search(run_dir).records
    assert [a.status for a in second.attempts] == [Status.DUPLICATE, Status.OK]
    assert "already trained (iteration 0" in second.attempts[0].error
    assert second.code == wider and first.code == SMALL_CNN
    architect.requests.clear()
    paper = create_run(
        build_config({}, {"iterations": 2, "epochs": 1, "dataset": "digits", "search": "paper"}),
        tmp_path / "paper",
    )
    again = run_search(paper).records
    assert again[0].code == again[1].code == SMALL_CNN  # the paper retrains it
    assert [a.status for a in again[1].attempts] == [Status.OK]
