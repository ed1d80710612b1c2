"""What an LLM's answer means: the candidate's code taken out of the answer's text.

Answers are read for what they mean, not refused for their form (:func:`read_answer`):

1. reasoning blocks (``<think>``, ``<thinking>``, ``<reasoning>``; an unclosed one at the
   start; a lone closing tag whose opening was in the chat template) are dropped;
2. the code is the one fenced block defining ``class Net`` (backtick or tilde fences,
   info string ``python``/``py``/``python3`` in any case, or none); a block whose closing
   fence is missing runs to the end of the answer; prose around it is ignored; an answer
   without fences counts when it holds parseable code defining ``Net``;
3. slips whose meaning is plain are mended (:mod:`lemo_nade.mends`: channel sizes that
   disagree inside an ``nn.Sequential``, assignments pasted into a call, a parent's line
   dropped while still needed), a prompt's ``# TODO: add here:`` mark that completes a
   half-written edit is written as code (:func:`lemo_nade.hints.write_kept_marks`), and
   the other marks are removed;
4. the code is tidied (:func:`lemo_nade.tidy.tidy`): top-level statements that are not
   definitions (test blocks, prints, instantiations) and unused imports are removed, and
   the :class:`Candidate`'s ``note`` says what went.

An answer cut off at ``max_tokens`` (``finish == "length"``) is used when its code is
complete (a closed fence, or more top-level code after ``class Net``); otherwise the
rejection asks for a shorter complete version instead of a blind repair.

Pure: no torch, no network.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from lemo_nade.hints import unmarked, write_kept_marks
from lemo_nade.imports_fix import add_missing
from lemo_nade.mends import MENDED, mend, restore
from lemo_nade.tidy import parses, tidy

_NET = re.compile(r"^class\s+Net\s*[(:]", re.MULTILINE)
_REASONING_TAGS = r"(?:think|thinking|reasoning)"
_REASONING = re.compile(rf"<({_REASONING_TAGS})>.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
_UNCLOSED_AT_START = re.compile(rf"\A\s*<{_REASONING_TAGS}>", re.IGNORECASE)
_LONE_CLOSE = re.compile(rf"</{_REASONING_TAGS}\s*>", re.IGNORECASE)
_OPEN_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})[ \t]*\{?\.?([\w+-]*)")
_PYTHON = frozenset({"", "python", "py", "python3", "py3"})
# Where unfenced code may start, and which lines begin a definition at top level.
_CODE_START = re.compile(
    r"^(import\s|from\s+\S+\s+import\s|class\s|def\s|async\s+def\s|@|#|\"\"\"|''')"
)
_DEFINITION = re.compile(r"^(import\s|from\s|class\s|def\s|async\s+def\s|@)")
_SHORTER = (
    "reply with a shorter complete version: only the code, in one ```python block, "
    "with no explanations, no comments and no test code"
)
CUT_BEFORE_CODE = (
    "the answer was cut off at the token limit (llm_max_tokens) before its code was "
    f"complete; {_SHORTER}"
)
CUT_IN_NET = (
    "the answer was cut off at the token limit (llm_max_tokens) inside `class Net`; " + _SHORTER
)
_NO_NET = "the code defines no `class Net(nn.Module)`; define exactly one"
NO_BLOCK = (
    "the answer has no ```python code block; reply with the complete code in one ```python block"
)


class ExtractionError(ValueError):
    """The answer holds no single usable code block; the message says what was wrong."""


@dataclass(frozen=True)
class Candidate:
    """The code an answer means, and what was done to it ('' when nothing)."""

    code: str
    note: str = ""


@dataclass(frozen=True)
class _Block:
    code: str
    closed: bool  # False: no closing fence (or no fences at all); may run to a cut


def read_answer(
    answer: str, finish: str | None = None, previous: str = "", parent: str = ""
) -> Candidate:
    """The candidate in an LLM answer, tidied; :class:`ExtractionError` when none.

    ``finish`` is the completion's ``finish_reason``: ``"length"`` means the answer was
    cut off at ``max_tokens``. ``previous``: the code of the attempt this answer repairs;
    a repair answer that holds only import lines (a small model answers an import error
    with the fixed imports alone) means that code with its imports replaced. ``parent``:
    the code the answer edits, whose layers an answer that still calls them gets back
    (:func:`lemo_nade.mends.restore`).
    """
    try:
        code, notes = _extracted(answer, finish == "length")
    except ExtractionError as exc:
        imports = _imports_only(answer) if str(exc) == _NO_NET and previous else None
        if imports is None:
            raise
        code, notes = _with_imports(previous, imports), [SPLICED]
    code, mended = mend(code)
    code, restored = restore(code, parent)
    mended += restored
    code, written = write_kept_marks(code)
    notes += mended + [
        f"{MENDED}wrote the kept comment `# TODO: add here: {statement}` as code: {why}"
        for statement, why in written
    ]
    code, marks = unmarked(code)
    if marks:
        notes.append(f"removed the prompt's {marks} TODO comment{'s' if marks > 1 else ''}")
    tidied, removed = tidy(code)
    completed, added = add_missing(tidied)
    return Candidate(completed, "; ".join(notes + removed + added))


SPLICED = "the answer held only import lines: used with the repaired attempt's code"


def _imports_only(answer: str) -> list[str] | None:
    """The answer's code lines when every one is an import, else None."""
    blocks = _fenced(strip_reasoning(answer))
    lines = [line for b in blocks for line in b.code.splitlines() if line.strip()]
    if lines and all(line.startswith(("import ", "from ")) for line in lines):
        return lines
    return None


def _with_imports(previous: str, imports: list[str]) -> str:
    """``previous`` with its top-level import lines replaced by ``imports``."""
    body = [line for line in previous.splitlines() if not line.startswith(("import ", "from "))]
    return "\n".join([*imports, *body]).strip("\n") + "\n"


def extract_code(answer: str) -> str:
    """The Python code in an LLM answer, untidied: the one block that defines ``Net``.

    Rejects prose without code, answers with no ``Net`` and answers with several blocks
    or several definitions of ``Net``.
    """
    return _extracted(answer, cut=False)[0]


def strip_reasoning(answer: str) -> str:
    """The answer without its reasoning blocks ('' when it is all reasoning)."""
    text = _REASONING.sub("", answer)
    closes = list(_LONE_CLOSE.finditer(text))
    if closes:  # the opening tag was part of the prompt template
        text = text[closes[-1].end() :]
    if _UNCLOSED_AT_START.match(text):  # still thinking when the answer ended
        return ""
    return text


def _extracted(answer: str, cut: bool) -> tuple[str, list[str]]:
    """The code and notes on what was dropped around it; raises ExtractionError."""
    text = strip_reasoning(answer)
    try:
        block = _net_block(text, cut)
    except ExtractionError as exc:
        if cut and str(exc) in (NO_BLOCK, _NO_NET):
            raise ExtractionError(CUT_BEFORE_CODE) from None
        if not text.strip() and answer.strip():
            raise ExtractionError(
                "the answer holds only reasoning (a <think> block) and no code; "
                "reply with the complete code in one ```python block"
            ) from None
        raise
    count = len(_NET.findall(block.code))
    if count > 1:
        raise ExtractionError(f"the code defines `class Net` {count} times; define it once")
    code = block.code.strip("\n") + "\n"
    if block.closed:
        return code, []
    return _finish_open(code, cut)


def _net_block(text: str, cut: bool) -> _Block:
    """The one block defining ``Net``; in a cut-off answer, an unfinished last block
    after a complete one is a repeat that the cut ended (small models loop)."""
    blocks = _fenced(text)
    if not blocks:
        return _unfenced(text, cut)
    with_net = [b for b in blocks if _NET.search(b.code)]
    if not with_net:
        raise ExtractionError(_NO_NET)
    if cut and len(with_net) > 1 and not with_net[-1].closed:
        with_net.pop()
    if len(with_net) > 1:
        raise ExtractionError(
            f"the answer has {len(with_net)} code blocks defining `class Net`; "
            "reply with exactly one complete version"
        )
    return with_net[0]


def _fenced(text: str) -> list[_Block]:
    """Every Python (or bare) fenced block; the last may lack its closing fence."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    blocks: list[_Block] = []
    i = 0
    while i < len(lines):
        opening = _OPEN_FENCE.match(lines[i])
        if opening is None or (opening.group(2)[0] == "`" and "`" in lines[i][opening.end() :]):
            i += 1
            continue
        indent, fence, lang = len(opening.group(1)), opening.group(2), opening.group(3)
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
        body = lines[i + 1 : end]
        if lang.lower() in _PYTHON:
            code = "\n".join(_unindent(line, indent) for line in body)
            blocks.append(_Block(code, closed=end is not None))
        i = len(lines) if end is None else end + 1
    return blocks


def _unindent(line: str, indent: int) -> str:
    """A fenced line without the fence's own indentation (a fence in a list item)."""
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(spaces, indent) :]


def _unfenced(text: str, cut: bool) -> _Block:
    """Code written without fences: from the first line where what follows is code
    (prose before it is skipped) to the end."""
    if not _NET.search(text):
        raise ExtractionError(NO_BLOCK)
    lines = _lines(text)
    starts = [i for i, line in enumerate(lines) if _CODE_START.match(line)]
    for start in starts:
        code = "".join(lines[start:])
        if parses(code) is not None or _trim_tail(code) is not None:
            return _Block(code, closed=False)
    if cut and starts:  # it may be code that the cut left unparseable
        return _Block("".join(lines[starts[0] :]), closed=False)
    raise ExtractionError(NO_BLOCK)  # prose that mentions `class Net`, not code


def _finish_open(code: str, cut: bool) -> tuple[str, list[str]]:
    """Code that ran to the end of the answer: drop prose or a cut-off end after ``Net``.

    When the answer was cut off, the code is complete only if top-level code follows
    ``class Net``; a cut inside ``Net`` is refused (:data:`CUT_IN_NET`).
    """
    tree = parses(code)
    if tree is not None:
        if cut and not _after_net(tree):
            raise ExtractionError(CUT_IN_NET)
        return code, []
    trimmed = _trim_tail(code)
    if trimmed is None:
        if cut:
            raise ExtractionError(CUT_IN_NET)
        return code, []  # a syntax error, sent back to the model as it is
    prefix, line = trimmed
    what = "the unfinished end of the cut-off answer" if cut else "the text after the code"
    return prefix, [f"dropped {what} (line {line} on)"]


def _after_net(tree: ast.Module) -> bool:
    """Whether a top-level statement follows ``class Net`` (so ``Net`` is complete)."""
    index = next(
        (i for i, n in enumerate(tree.body) if isinstance(n, ast.ClassDef) and n.name == "Net"),
        None,
    )
    return index is not None and index < len(tree.body) - 1


def _trim_tail(code: str) -> tuple[str, int] | None:
    """The longest prefix that parses and ends at a top-level line after ``class Net``,
    dropping a tail with no definition in it (prose, test code); with the tail's first
    line number. None when there is none: ``Net`` itself is always kept whole."""
    lines = _lines(code)
    net = next((i for i, line in enumerate(lines) if _NET.match(line)), None)
    if net is None:
        return None
    for k in range(len(lines) - 1, net, -1):
        line = lines[k]
        if not line[:1].strip() or line[0] in "#)]}":
            continue  # not the start of a top-level statement
        if _DEFINITION.match(line):
            return None  # the tail would take a definition with it
        prefix = "".join(lines[:k])
        if parses(prefix) is not None:
            return prefix.rstrip("\n") + "\n", k + 1
    return None


def _lines(text: str) -> list[str]:
    """Lines with their ends, split at newlines only (``str.splitlines`` also splits
    at form feeds and Unicode separators, which may sit inside a string literal)."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)
