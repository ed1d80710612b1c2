"""What a repair prompt says besides the error: the line it points at, and the fix.

A small model repeats a mistake when it is only shown the error (the local 0.5B model
re-imported a name that does not exist after three repair prompts). So each repair
quotes the failing line from the code that was checked, and adds the specific fix for
the kind of error: the allowed imports for an import error, the got and expected shapes
and where a ``Linear`` input size comes from for a shape error, and so on. Unknown kinds
get the quoted line only.

Pure: no torch, no network. The advice is built from untrusted text (an error written
by the candidate's process, an LLM's code) and goes only into a prompt.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lemo_nade import answers
from lemo_nade.imports_fix import KNOWN
from lemo_nade.sandbox.policy import DEFAULT_POLICY
from lemo_nade.text import fence

# The imports a model needs (the ones added when forgotten); the policy allows a few
# more standard modules.
IMPORTS = "\n".join(KNOWN.values())
LAYERS = (
    "nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, "
    "nn.Dropout, nn.Flatten, nn.Linear, nn.Sequential"
)

_CANDIDATE_LINE = re.compile(r'File "candidate\.py", line (\d+)')
_FRAME = re.compile(r'File "candidate\.py", line (\d+)[^\n]*\n[ \t]+(\S[^\n]*)')
_POLICY_LINE = re.compile(r"^\w+: line (\d+):", re.MULTILINE)
_SYNTAX_LINE = re.compile(r"\bline (\d+)\b")
MATMUL = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")
# the shape check's batch is 2: more rows mean the Linear got a feature map, not a vector
MAP_MATMUL = re.compile(
    r"forward on a dummy batch failed:.*?mat1 and mat2 shapes cannot be multiplied "
    r"\((?!2x)(\d+)x(\d+) and (\d+)x(\d+)\)",
    re.DOTALL,
)
CHANNELS = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels")
_OUTPUT = re.compile(
    r"Net output for an input of shape (\[[^\]]*\]) is (.+?); expected (\[[^\]]*\])"
)
_NAME = re.compile(r"NameError: name '(\w+)' is not defined")
_CANNOT_IMPORT = re.compile(r"cannot import name '(\w+)' from '([\w.]+)'")
BATCHNORM = re.compile(r"running_mean should contain (\d+) elements not (\d+)")
_FLAT_INPUT = re.compile(r"expected (\d)D input \(got (\d)D input\)")
_CONV_INPUT = re.compile(r"or 4D \(batched\) input to \w+, but got input of size: \[([^\]]*)\]")
_NN_ATTR = re.compile(r"module '(torch(?:\.\w+)*)' has no attribute '(\w+)'")
MAX_QUOTED_CHARS = 300


def allowed_imports() -> str:
    """The policy's allowed module roots, for a prompt."""
    return ", ".join(sorted(r for r in DEFAULT_POLICY.allowed_import_roots if r[0] != "_"))


def code_of(answer: str, parent: str = "") -> str:
    """The code an answer to a request with ``parent`` held, read as it was checked and
    built (so that line numbers in its error match), or "" when it held none."""
    if not answer:
        return ""
    try:
        return answers.read_answer(answer, parent=parent).code
    except answers.ExtractionError:
        return ""


def advice(error: str, code: str) -> list[str]:
    """Paragraphs for a repair prompt: the failing line, then the fix for its kind."""
    parts = []
    line = failing_line(error, code)
    if line is not None:
        number, text = line
        parts.append(f"The failing line (line {number}):\n" + fence(text))
        if error.startswith("syntax:") and text.startswith(("import ", "from ")):
            parts.append(_imports(None).replace("Delete that import line", "Fix that import"))
            return parts
    for matches, fix in _FIXES:
        found = matches(error)
        if found is not None:
            parts.append(fix(found))
            break
    return parts


def failing_line(error: str, code: str) -> tuple[int, str] | None:
    """The line the error points at: the innermost candidate frame of a traceback, with
    the source line the traceback itself quotes (the code the model sees again is read
    from its answer, where a mend made from the parent may not be); else that line of
    ``code``, the policy's ``rule: line N:``, or a syntax error's line."""
    frames = list(_FRAME.finditer(error))
    if frames and not frames[-1].group(2).startswith(("File ", "^", "~")):
        return int(frames[-1].group(1)), frames[-1].group(2).strip()[:MAX_QUOTED_CHARS]
    numbers = [int(n) for n in _CANDIDATE_LINE.findall(error)]
    if not numbers:
        numbers = [int(n) for n in _POLICY_LINE.findall(error)]
    if not numbers and "SyntaxError" in error:
        numbers = [int(n) for n in _SYNTAX_LINE.findall(error)]
    lines = code.splitlines()
    if not numbers or not 1 <= numbers[-1] <= len(lines):
        return None
    text = lines[numbers[-1] - 1].strip()
    return (numbers[-1], text[:MAX_QUOTED_CHARS]) if text else None


def _search(pattern: re.Pattern[str]) -> Callable[[str], re.Match[str] | None]:
    return pattern.search


def _contains(*needles: str) -> Callable[[str], str | None]:
    def matches(error: str) -> str | None:
        return next((n for n in needles if n in error), None)

    return matches


def _imports(_: object) -> str:
    return (
        "Delete that import line and keep the rest of the file. A model needs no imports "
        "but these: " + ", ".join(f"`{line}`" for line in IMPORTS.splitlines()) + "."
    )


def _cannot_import(m: re.Match[str]) -> str:
    name, module = m.group(1), m.group(2)
    if name == "F":
        return "`F` is not a name inside a module: write `import torch.nn.functional as F`."
    return (
        f"`{module}` has no `{name}`: remove `{name}` from that import (the whole line if "
        "nothing else is imported there) and keep the rest of the file."
    )


def _matmul(m: re.Match[str]) -> str:
    got, expected = m.group(2), m.group(3)
    return (
        f"A `Linear` layer expects {expected} input features but receives {got}. The first "
        "Linear after `flatten(1)` must take channels x height x width of the tensor that "
        f"reaches it: make it `nn.Linear({got}, ...)`, or put `nn.AdaptiveAvgPool2d(1)` "
        "before `flatten(1)` so that the size is just the channel count of the last conv."
    )


def _map_matmul(m: re.Match[str]) -> str:
    rows, got = m.group(1), m.group(2)
    return (
        f"A `Linear` layer got a feature map [batch, channels, height, width], not a flat "
        f"vector: it multiplied the last dimension ({got} wide, {rows} rows for a batch of "
        "2). Dense layers run after `x = self.pool(x).flatten(1)`: move that call below "
        "it, where x is [batch, features], and give the Linear that many in_features."
    )


def _channels(m: re.Match[str]) -> str:
    declared, got = m.group(1), m.group(2)
    return (
        f"A `Conv2d` declares in_channels={declared} but receives {got} channels: each "
        "conv's in_channels must equal the out_channels of the layer before it (the "
        "first one: the image's channels)."
    )


def _batchnorm(m: re.Match[str]) -> str:
    declared, got = m.group(1), m.group(2)
    return (
        f"A `BatchNorm2d({declared})` receives {got} channels: a BatchNorm2d's number must "
        f"equal the out_channels of the conv right before it. Make it `nn.BatchNorm2d({got})`"
        f", or make that conv's out_channels {declared} (and the next conv's in_channels)."
    )


def _output(m: re.Match[str]) -> str:
    return (
        f"For an input {m.group(1)} the model returned {m.group(2)}; it must return "
        f"{m.group(3)}: batch first, then one raw logit per class. End `forward` with the "
        "classifier `nn.Linear(features, classes)` on `x.flatten(1)`, with no softmax, "
        "squeeze or reshape after it."
    )


def _flat_input(m: re.Match[str]) -> str:
    return _after_flatten(m.group(1), m.group(2))


def _conv_input(m: re.Match[str]) -> str:
    return _after_flatten("4", str(len(m.group(1).split(","))))


def _after_flatten(needed: str, got: str) -> str:
    return (
        f"A layer that needs a {needed}-D input [batch, channels, height, width] "
        f"(a Conv2d, BatchNorm2d or pooling) gets a {got}-D one: it runs after "
        "`flatten(1)` or the global pooling. Delete that line from `forward` (and the "
        "layer from `__init__`), or apply it before the pooling, where x is still 4-D."
    )


def _name(m: re.Match[str]) -> str:
    name = m.group(1)
    hint = " (usually from `import torch.nn.functional as F`)" if name == "F" else ""
    return f"`{name}` is used but never defined or imported{hint}; define or import it."


def _nn_attr(m: re.Match[str]) -> str:
    return f"`{m.group(1)}.{m.group(2)}` does not exist. Layers that do: {LAYERS}."


def _too_small(_: object) -> str:
    return (
        "The image became smaller than a kernel: each `MaxPool2d(2)` or stride-2 conv "
        "halves height and width. Pool fewer times, or pad the convolutions "
        "(`padding=1` for a 3x3 kernel)."
    )


def _constructor(_: object) -> str:
    return "The framework calls `Net()` with no arguments: give every parameter a default."


def _no_forward(_: object) -> str:
    return (
        "`Net` has no `forward` method: the class needs `__init__` and "
        "`def forward(self, x: torch.Tensor) -> torch.Tensor:` returning the logits."
    )


def _policy_line(_: object) -> str:
    return (
        "Remove that line: a model needs none of it. Only imports, constants and "
        "`class Net` (with helper classes or functions if needed) belong in the file."
    )


_FIXES: tuple[tuple[Callable[[str], Any], Callable[[Any], str]], ...] = (
    (_search(_CANNOT_IMPORT), _cannot_import),
    (_contains("ImportError", "ModuleNotFoundError", "import of "), _imports),
    (_search(MAP_MATMUL), _map_matmul),
    (_search(MATMUL), _matmul),
    (_search(CHANNELS), _channels),
    (_search(BATCHNORM), _batchnorm),
    (_search(_OUTPUT), _output),
    (_search(_FLAT_INPUT), _flat_input),
    (_search(_CONV_INPUT), _conv_input),
    (_search(_NAME), _name),
    (_search(_NN_ATTR), _nn_attr),
    (
        _contains("Output size is too small", "Kernel size can't be greater", "non-positive"),
        _too_small,
    ),
    (_contains("missing 1 required positional", "required positional argument"), _constructor),
    (_contains('missing the required "forward" function'), _no_forward),
    (_contains("dunder: ", "name: ", "private: ", "attribute: ", "qualname: "), _policy_line),
)
