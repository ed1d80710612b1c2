"""A layer's size mended from the shape check's error (lemo_nade.resize): on the local
0.5B model's real attempts, on what must be left alone, and in a run against the
scripted server (the candidate trains on its first answer, with no repair prompt)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fake_llm import serve
from lemo_nade.config import build_config
from lemo_nade.engine.worker import load_candidate, short_error
from lemo_nade.records import Evaluation, Proposal, Status
from lemo_nade.resize import MAX_ROUNDS, resize, resized
from lemo_nade.runs import create_run
from lemo_nade.search import run_search

pytest_plugins = ["sandbox_fixtures"]
ANSWERS = Path(__file__).parent / "answers"
SHAPE = "forward on a dummy batch failed:\n"


def shape_check(code: str, shape: tuple[int, ...]) -> str | None:
    """The worker's shape check, in this process (the fixtures are the tests' own code),
    loading the code as the worker does: None when ``Net()`` gives [2, 10], else the
    error as the worker writes it."""
    try:
        net = load_candidate(code)["Net"]()
        out = net.eval()(torch.zeros(2, *shape))
    except Exception as exc:
        return SHAPE + short_error(exc)
    return None if tuple(out.shape) == (2, 10) else f"output {tuple(out.shape)}"


def test_the_skip_connection_after_widened_features_is_widened_then_the_dense_layers_read_it() -> (
    None
):
    code = (ANSWERS / "qwen_digits_skip_after_wider.py").read_text()
    error = shape_check(code, (1, 16, 16))
    assert error is not None and "to have 32 channels, but got 64 channels" in error
    notes = []
    for _ in range(MAX_ROUNDS):
        code, new = resize(code, error)
        assert new, error
        notes += new
        error = shape_check(code, (1, 16, 16))
        if error is None:
            break
    assert error is None
    assert notes == [
        "mended: made the skip connection `self.res` 64 wide throughout (it was 32; forward "
        "gives it 64 and adds its output back)",
        "mended: made `self.hidden` read 64 (it said 32; forward gives it 64)",
        "mended: made `self.classifier` read 32 (it said 64; forward gives it 32)",
    ]
    assert (
        "self.res = nn.Sequential(nn.Conv2d(64, 64, kernel_size=3, padding=1), "
        "nn.BatchNorm2d(64), nn.ReLU())  # skip connection" in code
    )
    assert "nn.Sequential(nn.Linear(64, 32), nn.ReLU())  # New hidden layer" in code


def test_a_classifier_behind_a_wider_dense_layer_reads_its_width() -> None:
    code = (ANSWERS / "qwen_digits_hidden_wider.py").read_text()
    error = shape_check(code, (1, 16, 16))
    assert error is not None and "(2x64 and 32x10)" in error
    mended, notes = resize(code, error)
    assert notes == ["mended: made `self.classifier` read 64 (it said 32; forward gives it 64)"]
    assert shape_check(mended, (1, 16, 16)) is None
    assert mended == code.replace("nn.Linear(32, 10)", "nn.Linear(64, 10)").rstrip() + "\n"


def test_a_dense_layer_above_the_flatten_line_is_moved_below_it() -> None:
    code = (ANSWERS / "qwen_digits_dense_above_flatten.py").read_text()
    error = shape_check(code, (1, 16, 16))
    assert error is not None and "(512x8 and 32x32)" in error
    mended, notes = resize(code, error)
    assert notes == [
        "mended: moved `x = self.hidden(x)` below `x = self.pool(x).flatten(1)`: a Linear "
        "takes the flat [batch, features] tensor, and there it got a feature map"
    ]
    assert shape_check(mended, (1, 16, 16)) is None
    forward = mended.split("def forward")[1].splitlines()
    assert [line.strip() for line in forward[-3:]] == [
        "x = self.pool(x).flatten(1)  # [batch, 32]",
        "x = self.hidden(x)  # right before self.classifier(x) add self.hidden(x)",
        "return self.classifier(x)  # [batch, 10] raw logits",
    ]
    # with no line below it that flattens, nothing is moved
    unflat = code.replace("x = self.pool(x).flatten(1)", "x = self.pool(x)")
    assert resize(unflat, shape_check(unflat, (1, 16, 16)) or "") == (unflat, [])


NET = """import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        {layers}

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x))).flatten(1)
        {forward}
"""


def vector_error(code: str, line: str, declared: int = 8, out: int = 10) -> str:
    """The worker's error for a Linear declaring ``declared`` features that got 16, at
    forward's ``line``."""
    at = [n for n, text in enumerate(code.splitlines(), 1) if text.strip() == line]
    return (
        f'{SHAPE}  File "candidate.py", line {at[-1]}, in forward\n    {line}\n'
        f"RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x16 and {declared}x{out})"
    )


def test_the_error_and_the_code_agree_on_what_the_worker_says() -> None:
    code = NET.format(layers="self.head = nn.Linear(8, 10)", forward="return self.head(x)")
    error = vector_error(code, "return self.head(x)")
    assert shape_check(code, (1, 8, 8)) == error.replace(
        "    return self.head(x)\n", "    return self.head(x)\n           ^^^^^^^^^^^^\n"
    )
    assert resize(code, error)[0] == code.replace("Linear(8, 10)", "Linear(16, 10)")


@pytest.mark.parametrize(
    ("layers", "line"),
    [
        (  # two layers on the line read 8: which one is meant is not plain
            "self.a = nn.Linear(8, 10)\n        self.b = nn.Linear(8, 10)",
            "return self.a(x) + self.b(x)",
        ),
        ("self.head = nn.Linear(9, 10)", "return self.head(x)"),  # declares another size
        ("self.head = nn.Linear(WIDTH, 10)", "return self.head(x)"),  # not a literal
        (  # a layer this module does not size comes first
            "self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 10))",
            "return self.head(x)",
        ),
        (  # a skip connection with sizes neither the declared one nor the one got
            "self.res = nn.Sequential(nn.Linear(8, 12), nn.Linear(12, 8))",
            "x = x + self.res(x)",
        ),
        ("self.head = nn.Linear(8, 10)", "return torch.relu(x)"),  # no layer on the line
    ],
)
def test_what_is_not_plainly_one_layers_size_is_left_alone(layers: str, line: str) -> None:
    forward = line if line.startswith("return") else line + "\n        return x"
    code = NET.format(layers=layers, forward=forward)
    assert resize(code, vector_error(code, line)) == (code, [])


def test_a_layer_called_twice_on_the_line_is_one_layer() -> None:
    code = NET.format(
        layers="self.head = nn.Linear(8, 10)", forward="return self.head(x) + self.head(x)"
    )
    mended, notes = resize(code, vector_error(code, "return self.head(x) + self.head(x)"))
    assert notes == ["mended: made `self.head` read 16 (it said 8; forward gives it 16)"]
    assert shape_check(mended, (1, 8, 8)) is None


@pytest.mark.parametrize(
    "error",
    [
        "forward on a dummy batch failed:\nRuntimeError: mat1 and mat2 shapes cannot be "
        "multiplied (2x16 and 8x10)",  # no line: which layer is not known
        'forward on a dummy batch failed:\n  File "candidate.py", line 14, in forward\n'
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (32x16 and 8x10)",  # a map
        'forward on a dummy batch failed:\n  File "candidate.py", line 14, in forward\n'
        "RuntimeError: The size of tensor a (8) must match the size of tensor b (32)",
        'forward on a dummy batch failed:\n  File "candidate.py", line 9, in __init__\n'
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x16 and 8x10)",
    ],
)
def test_errors_that_do_not_name_a_vector_size_at_a_forward_line_change_nothing(
    error: str,
) -> None:
    code = NET.format(layers="self.head = nn.Linear(8, 10)", forward="return self.head(x)")
    assert code.splitlines()[13].strip() == "return self.head(x)"
    assert resize(code, error) == (code, [])


def test_a_resize_is_kept_only_when_it_gets_past_the_shape_check() -> None:
    code = NET.format(layers="self.head = nn.Linear(8, 10)", forward="return self.head(x)")
    proposal = Proposal(code=code, notes="tidied")
    failed = Evaluation(
        Status.FAILED_SHAPE, error=shape_check(code, (1, 8, 8)) or "", wall_time_s=1
    )
    seen: list[str] = []

    def trains(p: Proposal) -> Evaluation:
        seen.append(p.code)
        error = shape_check(p.code, (1, 8, 8))
        if error is not None:
            return Evaluation(Status.FAILED_SHAPE, error=error, wall_time_s=1)
        return Evaluation(Status.FAILED_TRAIN, error="diverged", wall_time_s=2)

    kept, evaluation = resized(proposal, failed, trains)
    assert seen == [kept.code] and "nn.Linear(16, 10)" in kept.code
    assert kept.notes.startswith("tidied; mended: made `self.head` read 16")
    assert evaluation.status is Status.FAILED_TRAIN and evaluation.wall_time_s == 3
    # a resize that ends as a duplicate of a trained candidate is not the model's answer
    duplicate = Evaluation(Status.DUPLICATE, error="the same as iteration 0")
    assert resized(proposal, failed, lambda p: duplicate) == (proposal, failed)
    # one that fails the shape check after every round: as many rounds, then the answer
    rounds: list[str] = []

    def never(p: Proposal) -> Evaluation:  # each time the head reads one more than it got
        rounds.append(p.code)
        reads = int(p.code.split("nn.Linear(")[1].split(",")[0])
        error = failed.error.replace("(2x16 and 8x10)", f"(2x{reads + 1} and {reads}x10)")
        return Evaluation(Status.FAILED_SHAPE, error=error)

    assert resized(proposal, failed, never) == (proposal, failed)
    assert len(rounds) == MAX_ROUNDS


@pytest.mark.usefixtures("shared_sandbox")
def test_a_run_trains_the_resized_answer_without_a_repair_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = NET.format(
        layers="self.hidden = nn.Linear(16, 32)\n        self.head = nn.Linear(16, 10)",
        forward="x = torch.relu(self.hidden(x))\n        return self.head(x)",
    )
    monkeypatch.setenv("OLLAMA_API_KEY", "unused")
    with serve() as fake:
        fake.script = [("answer", f"```python\n{code}```")]
        flags = {"llm": "ollama:fake-model", "base_url": fake.base_url, "iterations": 1,
                 "epochs": 1, "dataset": "digits", "promote": 0}  # fmt: skip
        run_dir = create_run(build_config({}, flags), tmp_path / "runs")
        (record,) = run_search(run_dir).records
        asked = len(fake.chat_requests())
    assert asked == 1
    assert record.status is Status.OK, record.evaluation.error
    assert len(record.attempts) == 1
    assert "mended: made `self.head` read 32 (it said 16; forward gives it 32)" in record.notes
    assert "nn.Linear(32, 10)" in record.code
