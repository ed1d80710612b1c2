"""A chat that fits the model's context window: fewer earlier exchanges, not a stopped run.

Each repair turn carries the model's previous answer, and an answer cut off at
``llm_max_tokens`` is thousands of tokens. On the local 0.5B model (llama.cpp, an
8,192-token context) the third attempt of an iteration was refused with HTTP 400
("request (8291 tokens) exceeds the available context size (8192 tokens)"), and the
run stopped as if the endpoint were down. Refused for its length, the request is sent
again with only the last exchange, then with none (the iteration's own prompt still
carries the parent, its metrics, the instructions and the last error); only a prompt
too long on its own stops the run, saying so.

Pure: no network.
"""

from __future__ import annotations

import re
from dataclasses import replace

from lemo_nade.records import ProposalRequest

# OpenAI and vLLM: "maximum context length is ..." (code context_length_exceeded);
# llama.cpp: "exceeds the available context size" (type exceed_context_size_error);
# Ollama and others: "context window", "prompt is too long".
_TOO_LONG = re.compile(
    r"context[ _](?:length|size|window)|exceed_context|prompt is too long", re.IGNORECASE
)


def too_long(message: str) -> bool:
    """Whether an endpoint's refusal (HTTP 400) says the chat is longer than its context."""
    return bool(_TOO_LONG.search(message))


def shorter(request: ProposalRequest) -> list[ProposalRequest]:
    """``request`` with fewer earlier exchanges, longest first: only the last one, then
    none; empty when it has none to drop."""
    keep = [k for k in (1, 0) if k < len(request.history)]
    return [replace(request, history=request.history[len(request.history) - k :]) for k in keep]
