"""Architects propose the next candidate's code. One protocol, registered by name.

``--llm offline`` (the default) applies the expert system's instructions to a
structured architecture; LLM-backed architects register themselves the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from lemo_nade.records import Proposal, ProposalRequest


class Architect(Protocol):
    name: str

    def propose(self, request: ProposalRequest) -> Proposal: ...


class ArchitectError(ValueError):
    """Bad architect spec (unknown name, missing key, unreachable endpoint); the message
    says the fix. Raised before any training starts: bad input, exit code 2."""


class ArchitectUnavailable(RuntimeError):
    """The architect cannot answer now (endpoint down after retries, key rejected,
    recording exhausted). The loop stops cleanly; ``lemo-nade resume`` continues later."""


_REGISTRY: dict[str, Callable[..., Architect]] = {}


def register(name: str) -> Callable[[Callable[..., Architect]], Callable[..., Architect]]:
    def deco(factory: Callable[..., Architect]) -> Callable[..., Architect]:
        _REGISTRY[name] = factory
        return factory

    return deco


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def create_architect(spec: str, **options: Any) -> Architect:
    """Build an architect from ``NAME`` or ``NAME:ARG`` (e.g. ``offline``, ``openai:gpt-4o``).

    Options: ``seed``, ``max_params`` and ``config`` (the whole RunConfig, for LLM
    settings); ``check=True`` also checks an endpoint is reachable."""
    _load_builtins()
    name, _, arg = spec.partition(":")
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ArchitectError(f"llm: unknown architect {name!r}; allowed: {', '.join(available())}")
    return factory(arg, **options)


def _load_builtins() -> None:
    # Each module registers itself; llm imports the openai SDK only when used.
    from lemo_nade.architects import llm, offline, replay  # noqa: F401
