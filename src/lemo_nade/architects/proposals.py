"""What an LLM's answer to a request proposes: the candidate's code, or why it goes back.

Shared by the live architects (:mod:`.llm`) and replay (:mod:`.replay`), so a replayed
answer is judged exactly as it was when it came.

Pure: no network, no torch.
"""

from __future__ import annotations

from dataclasses import replace

from lemo_nade import answers, hints, mends, prompts, repairs
from lemo_nade.architects import stream
from lemo_nade.programs import same_program
from lemo_nade.records import Proposal, ProposalRequest
from lemo_nade.usage import LLMCall, Usage


def proposal_from_answer(
    text: str, finish: str | None, usage: Usage, call: LLMCall, request: ProposalRequest
) -> Proposal:
    """The candidate an answer to ``request`` means (:func:`lemo_nade.answers.read_answer`):
    its code, tidied, with ``notes`` saying what was removed; or a rejection carrying the
    reason for the repair. An answer that repeats the current model unchanged is sent
    back with the first instruction spelled out (a 0.5B model at temperature 0 answered
    four iterations in a row with its parent's code); so is one that creates layers forward
    never applies, naming them, unless they are new and the rest of it still changes the
    model (then they are removed), and one stopped mid-loop (:mod:`.stream`). An answer
    that repeats an earlier attempt is not built again. Replayed answers come through
    here too, so a replay decides the same way."""
    if finish == stream.LOOP:
        rejected = prompts.looped_text(text)
        return Proposal(code="", answer=text, rejected=rejected, usage=usage, calls=(call,))
    previous = request.history[-1][0] if request.history else ""
    parent = request.parent_code or ""
    try:
        candidate = answers.read_answer(text, finish, repairs.code_of(previous, parent), parent)
    except answers.ExtractionError as exc:
        return Proposal(code="", answer=text, rejected=str(exc), usage=usage, calls=(call,))
    if parent and same_program(candidate.code, parent):
        return Proposal(
            code="", answer=text, rejected=prompts.unchanged_text(request), usage=usage,
            calls=(call,),
        )  # fmt: skip
    for attempt, (earlier, error) in enumerate(request.history):
        if not error.startswith(prompts.REPEATED) and same_program(
            candidate.code, repairs.code_of(earlier, parent)
        ):  # it would fail the same way: not built again
            return Proposal(
                code="", answer=text, rejected=prompts.repeated_text(attempt, error),
                usage=usage, calls=(call,),
            )  # fmt: skip
    candidate = _without_new_unused(candidate, parent)
    unused = _new_unused(candidate.code, parent)
    if unused:
        return Proposal(
            code="", answer=text, rejected=prompts.unused_text(unused, text), usage=usage,
            calls=(call,),
        )  # fmt: skip
    return Proposal(
        code=candidate.code, notes=candidate.note, answer=text, usage=usage, calls=(call,)
    )


def _new_unused(code: str, parent_code: str) -> list[str]:
    """The layers ``code`` creates and never applies, less those its parent already left
    unused (an inherited dead layer is not this answer's fault)."""
    inherited = set(hints.unused_layers(parent_code)) if parent_code else set()
    return [name for name in hints.unused_layers(code) if name not in inherited]


def _without_new_unused(candidate: answers.Candidate, parent_code: str) -> answers.Candidate:
    """``candidate`` without the layers it adds and never applies (:func:`mends.drop_unused`),
    when what remains is not its parent: the answer's other edits are taken, and the
    compliance check then says which instructions it did not follow. Unchanged when a
    parent's layer went unused (forward was rewritten) or nothing else would remain."""
    unused = _new_unused(candidate.code, parent_code)
    if not unused or not parent_code or set(unused) & mends.created(parent_code):
        return candidate
    code, notes = mends.drop_unused(candidate.code, unused)
    if not notes or same_program(code, parent_code) or _new_unused(code, parent_code):
        return candidate
    return replace(candidate, code=code, note="; ".join(filter(None, [candidate.note, *notes])))
