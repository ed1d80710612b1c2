"""An answer read as it streams, and stopped when the model is repeating itself.

A 0.5B model at temperature 0 sometimes repeats one line or one block until
``max_tokens``: on the 2-core development machine that was 400 s of generation for
nothing, and with one request, the SDK's timeout (``llm_timeout_s``) cut it off and its
retry asked the same deterministic question again, to loop the same way. Streamed, the
timeout is the wait between two pieces of the answer, not the whole answer, and a
repeat is seen after a few hundred characters: the stream is closed (the server stops
generating) and the answer is recorded with ``finish_reason = "loop"``.

Pure but for the SDK's stream object, which is only iterated and closed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

LOOP = "loop"  # the finish_reason recorded for an answer stopped here
LOOP_WINDOW = 200  # characters: the answer's tail looked for earlier in the answer
LOOP_TIMES = 4  # a tail found this many times (not overlapping) is a loop
_CHECK_EVERY = 16  # pieces between two checks
_NUMBER = re.compile(r"\d+")


class Broken(RuntimeError):
    """The stream ended in an error after it began (the server went away mid-answer)."""


@dataclass(frozen=True)
class Answer:
    text: str
    finish: str | None
    prompt_tokens: int
    completion_tokens: int
    reported: bool  # whether the endpoint reported the token counts


def looping(text: str) -> bool:
    """Whether the last :data:`LOOP_WINDOW` characters occur :data:`LOOP_TIMES` times: one
    line repeated (period under the window) is seen after about ``LOOP_TIMES`` windows,
    a repeated block after ``LOOP_TIMES`` copies of it. Code written once does not repeat
    200 characters four times (nine identical conv lines in a row would)."""
    if len(text) < LOOP_WINDOW * LOOP_TIMES:
        return False
    if text.count(text[-LOOP_WINDOW:]) >= LOOP_TIMES:
        return True
    # a counting loop (`self.res4 = ...`, `self.res5 = ...`, ... up to `self.res84`, the
    # 0.5B model on CIFAR-10): the same tail once numbers are set aside, twice as often
    counted = _NUMBER.sub("0", text)
    return counted.count(counted[-LOOP_WINDOW:]) >= 2 * LOOP_TIMES


def read(stream: Any, chat: Sequence[dict[str, str]]) -> Answer:
    """The answer of a ``stream=True`` chat completion (with ``include_usage``). Stopped
    at a loop, the counts are estimates (``reported`` False): the usage chunk never came."""
    parts: list[str] = []
    finish: str | None = None
    usage = None
    pieces = 0
    with stream:
        try:
            for chunk in stream:
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                for choice in (chunk.choices or [])[:1]:
                    if choice.delta is not None and choice.delta.content:
                        parts.append(choice.delta.content)
                        pieces += 1
                    finish = choice.finish_reason or finish
                if pieces % _CHECK_EVERY == 0 and parts and looping("".join(parts)):
                    return Answer("".join(parts), LOOP, _estimate(chat), pieces, False)
        except ValueError:
            raise  # a piece that is not JSON: an invalid completion, as when not streamed
        except Exception as exc:  # the SDK's HTTP client's errors are its own (httpx2)
            raise Broken(f"{type(exc).__name__}: {exc}") from exc
    text = "".join(parts)
    if usage is None:
        return Answer(text, finish, _estimate(chat), pieces, False)
    return Answer(text, finish, usage.prompt_tokens, usage.completion_tokens, True)


def from_response(response: Any) -> Answer:
    """The same from a whole (not streamed) chat completion (``llm_stream = false``)."""
    choice = response.choices[0] if response.choices else None
    text = (choice.message.content if choice else None) or ""
    finish = choice.finish_reason if choice else None
    usage = response.usage
    if usage is None:
        return Answer(text, finish, 0, 0, False)
    return Answer(text, finish, usage.prompt_tokens, usage.completion_tokens, True)


def _estimate(chat: Iterable[dict[str, str]]) -> int:
    """Prompt tokens at about 4 characters each, for budgets when none were reported."""
    return sum(len(m.get("content", "")) for m in chat) // 4
