"""Every text an LLM architect sends, in one place (snapshot-tested in tests/snapshots).

The paper's loop (Algorithm 1): the first prompt is the user's initial command plus the
task specification; every later prompt is the parent model's code, its measured
metrics and the expert system's resolved instructions (Algorithm 3 output) written out
in words (Table 2), in priority order. When the previous candidate failed, its error is
included so the model does not repeat it. Inside one iteration, a candidate that does
not build or has the wrong output shape is sent back with its error for a repair.

Pure: no torch, no network.
"""

from __future__ import annotations

import ast
import re

from lemo_nade import rules
from lemo_nade.records import Metrics, ProposalRequest, Status, TaskSpec
from lemo_nade.sandbox.policy import DEFAULT_POLICY

SYSTEM = """\
You are an expert in designing neural network architectures for image classification.
You write complete, runnable PyTorch model code and nothing else.
Reply with exactly one ```python code block holding the whole file; keep any prose short."""

DEFAULT_INITIAL_COMMAND = (
    "Write a small convolutional neural network as a starting point: a few convolutional "
    "layers with batch normalisation and ReLU, pooling, and a dense classifier."
)

# Statuses a repair inside the same iteration can fix: the code never trained.
REPAIRABLE = frozenset(
    {
        Status.FAILED_EXTRACT,
        Status.FAILED_SYNTAX,
        Status.FAILED_POLICY,
        Status.FAILED_BUILD,
        Status.FAILED_SHAPE,
        Status.FAILED_EXPORT,
    }
)


def contract(task: TaskSpec) -> str:
    """The task specification and the rules every candidate must follow."""
    c, h, w = task.input_shape
    allowed = ", ".join(sorted(r for r in DEFAULT_POLICY.allowed_import_roots if r[0] != "_"))
    return f"""\
Task: image classification on {task.dataset}: inputs are float tensors of shape
[batch, {c}, {h}, {w}] (normalised per channel), {task.num_classes} classes.
The code must:
- define exactly one `class Net(nn.Module)` whose constructor takes no required arguments;
- return raw logits of shape [batch, {task.num_classes}] from `forward` (no softmax);
- import only these modules (and their submodules): {allowed};
- not read or write files, open network connections, start processes, or train anything:
  the framework trains it (Adam, cross-entropy) and measures accuracy, energy and speed;
- optionally set a module constant `WEIGHT_DECAY = <float>` (Adam weight decay, default 0)."""


def metrics_text(m: Metrics) -> str:
    return (
        f"training accuracy A1 = {m.A1:.4f}, validation accuracy A2 = {m.A2:.4f}, "
        f"training energy E1 = {m.E1:.3e} kWh, validation energy E2 = {m.E2:.3e} kWh, "
        f"inference speed F = {m.F:,.0f} images/s, parameters P = {m.P:,}"
    )


def instructions_text(instructions: tuple[tuple[str, float], ...]) -> str:
    if not instructions:
        return (
            "Every target is met. Make one small change you expect to improve validation "
            "accuracy or efficiency without breaking the contract."
        )
    lines = [
        f"{n}. {rules.DESCRIPTIONS[code]} (priority {value:g})"
        for n, (code, value) in enumerate(instructions, start=1)
    ]
    return "Modify the model as follows, most important first:\n" + "\n".join(lines)


def first_prompt(task: TaskSpec, initial_command: str) -> str:
    return f"{initial_command.strip()}\n\n{contract(task)}"


def iteration_prompt(request: ProposalRequest) -> str:
    """Algorithm 1, line 8's command for a request with a parent."""
    assert request.parent_code is not None
    parts = [
        "Here is the current model:",
        fence(request.parent_code),
    ]
    if request.parent_metrics is not None:
        parts.append("Measured after training: " + metrics_text(request.parent_metrics) + ".")
    parts.append(instructions_text(request.instructions))
    if request.last_error:
        parts.append(
            "The previous attempt to change this model failed with this error; "
            "do not repeat the mistake:\n" + fence(request.last_error, "text")
        )
    parts.append("Return the complete new code.")
    parts.append(contract(request.task))
    return "\n\n".join(parts)


def repair_prompt(error: str) -> str:
    return (
        "That code could not be used:\n"
        + fence(error, "text")
        + "\n\nFix it and return the complete corrected code in one ```python block."
    )


def messages(request: ProposalRequest, initial_command: str) -> list[dict[str, str]]:
    """The chat for ``request``: system, the iteration's prompt, then any repair turns."""
    if request.parent_code is None:
        user = first_prompt(request.task, initial_command)
        if request.last_error:  # the first candidate failed in an earlier iteration
            user += "\n\nAn earlier attempt failed with this error; avoid it:\n" + fence(
                request.last_error, "text"
            )
    else:
        user = iteration_prompt(request)
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    for answer, error in request.history:
        chat.append({"role": "assistant", "content": answer})
        chat.append({"role": "user", "content": repair_prompt(error)})
    return chat


def fence(text: str, lang: str = "python") -> str:
    ticks = "```"
    while ticks in text:  # a fence the text cannot close early
        ticks += "`"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


# -- extraction ---------------------------------------------------------------------------

_BLOCK = re.compile(r"^(`{3,})[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1[ \t]*$", re.DOTALL | re.MULTILINE)
_NET = re.compile(r"^class\s+Net\s*[(:]", re.MULTILINE)


class ExtractionError(ValueError):
    """The answer holds no single usable code block; the message says what was wrong."""


def extract_code(answer: str) -> str:
    """The Python code in an LLM answer: the one fenced block that defines ``class Net``.

    Accepts an unfenced answer when the whole answer is code defining ``Net`` (some local
    models omit the fences). Rejects prose without code, answers with no ``Net`` and
    answers with several blocks or several definitions of ``Net``.
    """
    blocks = [
        m.group(3)
        for m in _BLOCK.finditer(answer)
        if m.group(2).lower() in ("", "python", "py", "python3")
    ]
    if not blocks:
        if _NET.search(answer) and _looks_like_code(answer):
            blocks = [answer]
        else:
            raise ExtractionError(
                "the answer has no ```python code block; reply with the complete code "
                "in one ```python block"
            )
    with_net = [b for b in blocks if _NET.search(b)]
    if not with_net:
        raise ExtractionError("the code defines no `class Net(nn.Module)`; define exactly one")
    if len(with_net) > 1:
        raise ExtractionError(
            f"the answer has {len(with_net)} code blocks defining `class Net`; "
            "reply with exactly one complete version"
        )
    code = with_net[0]
    count = len(_NET.findall(code))
    if count > 1:
        raise ExtractionError(f"the code defines `class Net` {count} times; define it once")
    return code.strip("\n") + "\n"


def _looks_like_code(text: str) -> bool:
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True
