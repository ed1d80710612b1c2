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
    """Bad architect spec (unknown name, missing option); the message says the fix."""


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
    """Build an architect from ``NAME`` or ``NAME:ARG`` (e.g. ``offline``, ``openai:gpt-4o``)."""
    _load_builtins()
    name, _, arg = spec.partition(":")
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ArchitectError(f"llm: unknown architect {name!r}; allowed: {', '.join(available())}")
    return factory(arg, **options)


def _load_builtins() -> None:
    from lemo_nade.architects import offline  # noqa: F401  (registers itself)
