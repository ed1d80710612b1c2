"""The baselines as architects: ``random`` (the offline edit space, edits chosen at
random) and ``reference:FILE`` (a fixed hand-written model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from candidates import SMALL_CNN
from lemo_nade.architects import ArchitectError, create_architect
from lemo_nade.datasets import resolve_dataset
from lemo_nade.records import ProposalRequest

TASK = resolve_dataset("digits", None)


def lineage(spec: str, seed: int, steps: int = 6) -> list[tuple[str, str]]:
    """(code, notes) of ``steps`` proposals, each the parent of the next, all asked ACL."""
    architect = create_architect(spec, seed=seed)
    first = architect.propose(ProposalRequest(0, TASK, None, None, ()))
    out = [(first.code, first.notes)]
    parent = first
    for i in range(1, steps):
        request = ProposalRequest(i, TASK, parent.code, None, (("ACL", 1.0),),
                                  parent_state=parent.state, seed=seed)  # fmt: skip
        parent = architect.propose(request)
        out.append((parent.code, parent.notes))
    return out


def test_random_edits_are_seeded_varied_and_ignore_the_instructions() -> None:
    rand, offline = lineage("random", 0), lineage("offline", 0)
    assert rand[0][0] == offline[0][0]  # the same first model
    assert rand == lineage("random", 0)  # deterministic for a seed
    assert rand != lineage("random", 1)
    chosen = [notes.split(";")[0] for _, notes in rand[1:]]
    assert all(c.startswith("random edits: ") for c in chosen), chosen
    sizes = {len(c.removeprefix("random edits: ").split()) for c in chosen}
    assert sizes <= {1, 2, 3, 4} and len(set(chosen)) > 2, chosen
    assert any("ACL" not in c for c in chosen)  # not what was asked
    assert len({code for code, _ in rand}) >= len(rand) - 1  # edits may undo each other


def test_reference_proposes_its_file(tmp_path: Path) -> None:
    model = tmp_path / "vgg.py"
    model.write_text(SMALL_CNN)
    architect = create_architect(f"reference:{model}")
    for request in (ProposalRequest(0, TASK, None, None, ()),
                    ProposalRequest(3, TASK, "x", None, (("ACL", 1.0),))):  # fmt: skip
        assert architect.propose(request).code == SMALL_CNN


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("reference:", "name the model file"),
        ("reference:/no/such.py", "is not a file"),
        ("random:x", "random takes no argument"),
    ],
)
def test_bad_baseline_specs_are_one_line(spec: str, needle: str, tmp_path: Path) -> None:
    with pytest.raises(ArchitectError, match=needle):
        create_architect(spec)
    binary = tmp_path / "weights.py"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ArchitectError, match="cannot read reference model"):
        create_architect(f"reference:{binary}")
    done = subprocess.run([sys.executable, "-m", "lemo_nade", "run", "--llm", spec,
                           "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr
