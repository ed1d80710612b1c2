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

from lemo_nade import hints, repairs, rules
from lemo_nade.records import Metrics, ProposalRequest, Status, TaskSpec
from lemo_nade.text import fence

SYSTEM = """\
You are an expert in designing neural network architectures for image classification.
You write complete, runnable PyTorch model code and nothing else.
Reply with exactly one ```python code block holding the whole file: imports, constants and
`class Net`. No test code, no `if __name__ == "__main__":` block, no prints; keep prose short."""

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
        Status.DUPLICATE,
    }
)


def contract(task: TaskSpec, weight_decay: bool = True) -> str:
    """The task specification and the rules every candidate must follow. The first prompt
    leaves out ``WEIGHT_DECAY``: a 0.5B model given it there made it a constructor argument
    and initialised every weight with ``normal_(0, sqrt(WEIGHT_DECAY))``, i.e. to zero."""
    c, h, w = task.input_shape
    decay = (
        "\n- optionally set a module-level constant `WEIGHT_DECAY = <float>` above the class "
        "(Adam weight decay, default 0; not a constructor argument)."
        if weight_decay
        else ""
    )
    return f"""\
Task: image classification on {task.dataset}: inputs are float tensors of shape
[batch, {c}, {h}, {w}] (normalised per channel), {task.num_classes} classes.
The code must:
- define exactly one `class Net(nn.Module)` whose constructor takes no required arguments;
- return raw logits of shape [batch, {task.num_classes}] from `forward` (no softmax) for any
  batch size: flatten with `x.flatten(1)`, never a fixed batch number;
- import only what it uses: `import torch`, `from torch import nn`,
  `import torch.nn.functional as F` and `import math` are all a model needs (the
  standard modules {repairs.allowed_imports()} are allowed, nothing else);
- not read or write files, open network connections, start processes, or train anything:
  the framework trains it (Adam, cross-entropy) and measures accuracy, energy and speed.{decay}"""


def skeleton(task: TaskSpec) -> str:
    """The contract as code: a minimal valid model for ``task`` (the first prompt's
    example). An adaptive pool before the classifier makes the ``Linear`` input size
    independent of the image size, the mistake small models make most."""
    c, h, w = task.input_shape
    return f"""\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d({c}, 16, kernel_size=3, padding=1),  # input [batch, {c}, {h}, {w}]
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # halves height and width
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)  # [batch, 32, H, W] -> [batch, 32, 1, 1]
        self.classifier = nn.Linear(32, {task.num_classes})  # 32 = channels of the last conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x).flatten(1)  # [batch, 32]
        return self.classifier(x)  # [batch, {task.num_classes}] raw logits
"""


def metrics_text(m: Metrics) -> str:
    return (
        f"training accuracy A1 = {m.A1:.4f}, validation accuracy A2 = {m.A2:.4f}, "
        f"training energy E1 = {m.E1:.3e} kWh, validation energy E2 = {m.E2:.3e} kWh, "
        f"inference speed F = {m.F:,.0f} images/s, parameters P = {m.P:,}"
    )


# How to carry out each instruction of Table 2, in words a small model can follow (the
# paper names the instruction only; the name stays first, then the concrete edit).
HOW_TO: dict[str, str] = {
    "ACL": "add one more conv block (nn.Conv2d + nn.BatchNorm2d + nn.ReLU) to the features",
    "ASC": "add a residual connection in forward: `x = block(x) + x` around a block whose "
    "input and output shapes match",
    "ADL": "add one more hidden nn.Linear layer (followed by nn.ReLU) before the classifier",
    "RCL": "remove one conv block (its nn.Conv2d and the layers that go with it)",
    "RSC": "remove one residual connection (a `+ x` in forward)",
    "RDL": "remove one hidden nn.Linear layer (keep the final classifier)",
    "AD": "add an nn.Dropout layer (p between 0.2 and 0.5) before a nn.Linear layer",
    "AMK": "give the convolutions more channels (e.g. double out_channels) and update the "
    "next layers' input sizes",
    "AWI": "initialise the weights explicitly in __init__, e.g. nn.init.kaiming_normal_ on "
    "every nn.Conv2d weight",
    "AR": "add regularization: set the module constant WEIGHT_DECAY = 1e-4 (or raise it)",
    "RK": "give the convolutions fewer channels (e.g. halve out_channels) and update the "
    "next layers' input sizes",
    "RD": "remove an nn.Dropout layer or lower its p",
    "AMN": "give the hidden nn.Linear layers more units (out_features)",
    "RN": "give the hidden nn.Linear layers fewer units (out_features)",
    "RR": "reduce regularization: lower WEIGHT_DECAY (or a dropout p)",
}


def instructions_text(instructions: tuple[tuple[str, float], ...], parent_code: str = "") -> str:
    """Table 2's instructions in priority order, each with how to carry it out in
    ``parent_code`` (:func:`lemo_nade.hints.hint`) or, failing that, in general."""
    if not instructions:
        return (
            "Every target is met. Make one small change you expect to improve validation "
            "accuracy or efficiency without breaking the contract."
        )
    if len(instructions) == 1:  # numbered "(priority 1)", a 0.5B model went on to 2, 3, ... 10
        code = instructions[0][0]
        return f"Make this one change: {rules.DESCRIPTIONS[code]}{_how(code, parent_code)}"
    lines = [
        f"{n}. {rules.DESCRIPTIONS[code]} (priority {value:g}){_how(code, parent_code)}"
        for n, (code, value) in enumerate(instructions, start=1)
    ]
    return "Modify the model as follows, most important first:\n" + "\n".join(lines)


UNCHANGED = "the code is the current model, unchanged"
REPEATED = "the code is the same as an earlier attempt"
DUPLICATE = "the code is a model this run already trained"


def duplicate_text(idx: int, a2: float | None) -> str:
    """Why a proposal that repeats a trained candidate is not trained again."""
    score = f", validation accuracy {a2:.4f}" if a2 is not None else ""
    return f"{DUPLICATE} (iteration {idx}{score}); propose a different change"


LOOPED = "the answer repeated itself"


def looped_text(answer: str) -> str:
    """Why an answer stopped mid-loop (:mod:`lemo_nade.architects.stream`) is sent back,
    quoting the line it kept writing."""
    tail = [line.strip() for line in answer[-400:].splitlines()[1:] if line.strip()]
    line = max(tail, key=tail.count) if tail else ""
    quoted = f" (`{line[:80]}` again and again)" if line else ""
    return (
        f"{LOOPED}{quoted} and was stopped; reply with the complete code once, in one "
        "```python block, each line written once"
    )


UNUSED = "the code creates layers that forward never uses"


def unused_text(names: list[str], answer: str = "") -> str:
    """Why an answer that adds layers to ``__init__`` only is sent back: the model would
    train as its parent with dead weights (a 0.5B model's most common way to 'add' a
    layer). The fix names each layer and the two ways forward can apply it; where the
    answer kept a ``# TODO:`` mark of the prompt as a comment (the 0.5B model wrote the
    ``__init__`` mark as code and left the ``forward`` one), it quotes that mark's code."""
    listed = ", ".join(f"`self.{n}`" for n in names)
    first = names[0]
    text = (
        f"{UNUSED}: {listed} {'is' if len(names) == 1 else 'are'} created in __init__ but "
        f"forward never calls {'it' if len(names) == 1 else 'them'}, so the model did not "
        f"change. In forward, apply each where its input size fits, for example "
        f"`x = self.{first}(x)`, or for a skip connection `x = x + self.{first}(x)`; "
        f"or remove {'it' if len(names) == 1 else 'them'}."
    )
    calls = [c for c in hints.left_as_comments(answer) if any(f"self.{n}(" in c for n in names)]
    if calls:
        text += (
            f" Your answer kept the comment `# TODO: add here: {calls[0]}`: write "
            f"`{calls[0]}` there as code."
        )
    return text


def repeated_text(attempt: int, error: str) -> str:
    """Why an answer that repeats an attempt of this iteration is sent back unbuilt."""
    return f"{REPEATED} (attempt {attempt}), which failed with:\n{error}"


def unchanged_text(request: ProposalRequest) -> str:
    """Why an answer that repeats the current model is sent back: the change to make."""
    if not request.instructions:
        return f"{UNCHANGED}; make one small change to it"
    code = request.instructions[0][0]
    return (
        f"{UNCHANGED}; change it as asked, at least this: "
        f"{rules.DESCRIPTIONS[code]}{_how(code, request.parent_code or '')}"
    )


def _how(code: str, parent_code: str = "") -> str:
    """``": <how to do it>"`` for an instruction: the edit in the parent's own lines where
    one can be written, else the general how-to, else "" (the paper's bare name)."""
    if not HOW_TO.get(code):
        return ""
    return f": {hints.hint(parent_code, code) or HOW_TO[code]}"


def first_prompt(task: TaskSpec, initial_command: str) -> str:
    return (
        f"{initial_command.strip()}\n\n{contract(task, weight_decay=False)}\n\n"
        "A minimal valid file, to start from and improve:\n" + fence(skeleton(task))
    )


def iteration_prompt(request: ProposalRequest) -> str:
    """Algorithm 1, line 8's command for a request with a parent. The instructions come
    last, right before the model answers: with the task's rules last, a 0.5B model
    answered about the rules ("the forward now flattens with x.flatten(1)") and returned
    its parent unchanged. The parent is shown with a ``# TODO:`` comment where each edit
    goes (:func:`lemo_nade.hints.marked`): a small model copies what it is shown."""
    assert request.parent_code is not None
    shown = hints.marked(request.parent_code, [code for code, _ in request.instructions])
    parts = [contract(request.task), "Here is the current model:", fence(shown)]
    if request.parent_metrics is not None:
        parts.append("Measured after training: " + metrics_text(request.parent_metrics) + ".")
    if request.last_error:
        parts.append(
            "The previous attempt to change this model failed with this error; "
            "do not repeat the mistake:\n" + fence(request.last_error, "text")
        )
    parts.append(instructions_text(request.instructions, request.parent_code))
    done = "Return the complete new code, with the change made."
    if shown != request.parent_code:  # the 0.5B model copied the marks as comments
        done += " Each `# TODO:` comment says what to write there: write it as code."
    parts.append(done)
    return "\n\n".join(parts)


def repair_prompt(error: str, code: str = "") -> str:
    """The error, the line it points at in ``code`` (the code that was checked), and the
    specific fix for its kind (:mod:`lemo_nade.repairs`)."""
    parts = ["That code could not be used:", fence(error, "text")]
    parts += repairs.advice(error, code)
    parts.append(
        "Return the whole file again in one ```python block, with that fixed: the "
        "imports, any constants and the complete `class Net`."
    )
    return "\n\n".join(parts)


def messages(
    request: ProposalRequest, initial_command: str, resample: bool = False
) -> list[dict[str, str]]:
    """The chat for ``request``: system, the iteration's prompt, then any repair turns;
    with ``resample``, none: after a failure the same question is asked afresh (sampled
    warmer, :func:`lemo_nade.architects.sampling.temperature`). Sent back a failed
    answer with its error, the 0.5B model mostly repeated it (24 of 37 real repairs); asked
    afresh, 20 of 37 answers built a model, against 2 of 37 repairs (README, "Resample,
    not repair")."""
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
        if resample or stuck(error):  # stuck: shown its own copy, the model copied it again
            continue
        chat.append({"role": "assistant", "content": answer})
        code = repairs.code_of(answer, request.parent_code or "")
        chat.append({"role": "user", "content": repair_prompt(error, code)})
    if request.history and stuck(request.history[-1][1]):
        chat[-1] = {**chat[-1], "content": chat[-1]["content"] + "\n\n" + STUCK_NOTE}
    return chat


STUCK_NOTE = (
    "Your last answer returned the code without the change. This time, make the change: "
    "the new code must differ from the code above."
)


def stuck(error: str) -> bool:
    """Whether an attempt was sent back for changing nothing (its parent or an earlier
    attempt, repeated). Such an exchange is not replayed to the model: a 0.5B model shown
    its own unchanged answer answered with it again, word for word, even at 0.7."""
    return error.startswith((UNCHANGED, REPEATED, DUPLICATE, LOOPED))
