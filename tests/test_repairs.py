"""Prompts a small model can follow (issue 17, point 2): the skeleton in the first
prompt is a valid model for the task, every instruction says how to carry it out, and
each repair prompt quotes the failing line and gives the fix for its kind of error."""

from __future__ import annotations

import pytest
import torch

from lemo_nade import prompts, repairs, rules
from lemo_nade.records import TaskSpec
from lemo_nade.sandbox import policy

CODE = """import torch
from torch import nn
from operator import divmod


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))
"""

TRACEBACK = """building the model (running the code, then Net()) failed:
  File "candidate.py", line 12, in forward
    return self.fc(x.flatten(1))
RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x64 and 100x10)"""


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32), (3, 16, 16)])
def test_the_skeleton_is_a_valid_model_for_the_task(shape: tuple[int, int, int]) -> None:
    task = TaskSpec("x", shape, 7)
    code = prompts.skeleton(task)
    assert policy.check(code) is None
    namespace: dict[str, object] = {}
    exec(compile(code, "skeleton.py", "exec"), namespace)
    model = namespace["Net"]()  # type: ignore[operator]
    assert model(torch.zeros(3, *shape)).shape == (3, 7)
    assert prompts.skeleton(task) in prompts.first_prompt(task, "Write a model.")


def test_every_instruction_says_how() -> None:
    assert set(prompts.HOW_TO) == set(rules.INSTRUCTIONS)
    text = prompts.instructions_text((("ASC", 0.9), ("AR", 0.3)))
    assert "1. Add skip connection (priority 0.9): add a residual connection" in text
    assert "2. Add regularization (priority 0.3): " in text and "WEIGHT_DECAY" in text


@pytest.mark.parametrize(
    ("error", "number", "line"),
    [
        (TRACEBACK, 12, "return self.fc(x.flatten(1))"),
        ("import: line 3: import of 'os' is not allowed", 3, "from operator import divmod"),
        ("SyntaxError: invalid syntax (candidate.py, line 9)", 9, "self.fc = nn.Linear(100, 10)"),
        ('File "candidate.py", line 99, in forward', None, None),  # past the end
        ("training loss became NaN at epoch 2", None, None),
    ],
)
def test_the_failing_line_is_found(error: str, number: int | None, line: str | None) -> None:
    found = repairs.failing_line(error, CODE)
    assert found == ((number, line) if number is not None else None)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TRACEBACK, ["expects 100 input features but receives 64", "nn.Linear(64, ...)"]),
        (  # the local model called its dense layer before the pooling (CIFAR-10)
            'forward on a dummy batch failed:\n  File "candidate.py", line 24, in forward\n'
            "    x = x + self.hidden(x)\n"
            "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1024x16 and 32x32)",
            ["got a feature map", "16 wide, 1024 rows", "move that call below"],
        ),
        (
            "ImportError: cannot import name 'divmod' from 'operator'",
            ["`operator` has no `divmod`: remove `divmod` from that import"],
        ),
        (
            "ImportError: cannot import name 'F' from 'torch.nn.functional'",
            ["write `import torch.nn.functional as F`"],
        ),
        (
            "import: line 4: import of 'torchvision' is not allowed",
            ["Delete that import line", "`from torch import nn`"],
        ),
        (
            "RuntimeError: Given groups=1, weight of size [16, 3, 3, 3], expected "
            "input[2, 1, 8, 8] to have 3 channels, but got 1 channels instead",
            ["in_channels=3 but receives 1 channels"],
        ),
        (
            "Net output for an input of shape [2, 1, 8, 8] is [2, 5]; expected [2, 10] "
            "(batch, classes: raw logits)",
            ["returned [2, 5]; it must return [2, 10]"],
        ),
        ("NameError: name 'F' is not defined", ["import torch.nn.functional as F"]),
        (  # the local model added a conv of 16 channels before BatchNorm2d(32), twice
            "RuntimeError: running_mean should contain 32 elements not 16",
            ["`BatchNorm2d(32)` receives 16 channels", "`nn.BatchNorm2d(16)`"],
        ),
        (  # the local model applied a BatchNorm2d after flatten(1)
            "ValueError: expected 4D input (got 2D input)",
            ["needs a 4-D input", "gets a 2-D one", "runs after `flatten(1)`"],
        ),
        (  # ... and a Conv2d (shifted-digits)
            "RuntimeError: Expected 3D (unbatched) or 4D (batched) input to conv2d, but got "
            "input of size: [2, 32]",
            ["needs a 4-D input", "gets a 2-D one", "runs after `flatten(1)`"],
        ),
        (
            "AttributeError: module 'torch.nn' has no attribute 'Conv2D'",
            ["`torch.nn.Conv2D` does not exist", "nn.Conv2d"],
        ),
        (
            "RuntimeError: Given input size: (32x1x1). Calculated output size: (32x0x0). "
            "Output size is too small",
            ["halves height and width"],
        ),
        (
            "TypeError: Net.__init__() missing 1 required positional argument: 'n'",
            ["with no arguments"],
        ),
        ("dunder: line 3: string mentions '__main__'", ["Remove that line"]),
        ("syntax: line 3: invalid syntax", ["Fix that import", "`import torch`"]),
        (
            'NotImplementedError: Module [Net] is missing the required "forward" function',
            ["`Net` has no `forward` method"],
        ),
    ],
)
def test_each_kind_of_error_gets_its_fix(error: str, expected: list[str]) -> None:
    text = "\n".join(repairs.advice(error, CODE))
    for fragment in expected:
        assert fragment in text, text


def test_the_repair_prompt_quotes_the_line_and_the_fix() -> None:
    """Line numbers are those of the tidied code (the unused import gone), as built."""
    answer = prompts.fence(CODE)
    error = TRACEBACK.replace("line 12", "line 11")
    text = prompts.repair_prompt(error, repairs.code_of(answer))
    assert "The failing line (line 11):" in text and "return self.fc(x.flatten(1))" in text
    assert "nn.Linear(64, ...)" in text and "the complete `class Net`" in text
    assert "failing line" not in prompts.repair_prompt("NaN", "")  # nothing to quote


def test_the_quoted_line_is_the_tracebacks_own() -> None:
    """The line the traceback quotes is the one that failed, even where the code the
    model is shown again (read from its answer) has the lines in other places: a line
    put back from the parent shifted them, and the prompt quoted the next line instead
    (shifted-digits, the local model)."""
    error = (
        "forward on a dummy batch failed:\n"
        '  File "candidate.py", line 26, in forward\n'
        "    x = self.hidden(x)\n"
        "        ^^^^^^^^^^^^^^\n"
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied (512x8 and 32x32)"
    )
    shifted = "\n".join(["pass"] * 25 + ["return self.classifier(x)"])
    assert repairs.failing_line(error, shifted) == (26, "x = self.hidden(x)")
    bare = error.replace("    x = self.hidden(x)\n        ^^^^^^^^^^^^^^\n", "")
    assert repairs.failing_line(bare, shifted) == (26, "return self.classifier(x)")
