"""Architects propose the next candidate's code. One protocol, registered by name.

``--llm offline`` (the default) applies the expert system's instructions to a
structured architecture; LLM-backed architects register themselves the same way.
Each registration carries the architect's own set-up checks (what ``lemo-nade doctor``
prints for it), so nothing outside an architect's module knows its endpoints or keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from lemo_nade.records import Proposal, ProposalRequest

if TYPE_CHECKING:
    from lemo_nade.config import RunConfig


class Architect(Protocol):
    name: str

    def propose(self, request: ProposalRequest) -> Proposal: ...


class ArchitectError(ValueError):
    """Bad architect spec (unknown name, missing key, unreachable endpoint); the message
    says the fix. Raised before any training starts: bad input, exit code 2."""


class ArchitectUnavailable(RuntimeError):
    """The architect cannot answer now (endpoint down after retries, key rejected,
    recording exhausted). The loop stops cleanly; ``lemo-nade resume`` continues later."""


STATUSES = ("ok", "warn", "fail", "info")  # a "fail" makes `lemo-nade doctor` exit 1


@dataclass(frozen=True)
class Check:
    """One row of ``lemo-nade doctor``. ``status`` is one of :data:`STATUSES`; ``detail``
    is one line and, for a failure, says the fix. Secrets are reported as set or not set."""

    name: str
    status: str
    detail: str

    def row(self) -> dict[str, str]:
        """The JSON shape ``lemo-nade doctor --json`` prints (its keys are a public format)."""
        return {"check": self.name, "status": self.status, "detail": self.detail}


Factory = Callable[..., Architect]
Checks = Callable[["RunConfig"], list[Check]]


@dataclass(frozen=True)
class Registration:
    """What the registry knows of one architect. ``deterministic``: the same request and
    seed give the same proposal (a claim the contract tests hold the architect to)."""

    name: str
    create: Factory
    checks: Checks
    deterministic: bool


_REGISTRY: dict[str, Registration] = {}


def register(
    name: str, *, checks: Checks | None = None, deterministic: bool = False
) -> Callable[[Factory], Factory]:
    """Register a factory ``(arg, **options) -> Architect`` under ``name``. Without
    ``checks``, doctor builds it and, for an endpoint, checks it answers."""

    def deco(factory: Factory) -> Factory:
        _REGISTRY[name] = Registration(name, factory, checks or generic_checks, deterministic)
        return factory

    return deco


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def registration(name: str) -> Registration:
    """The registered architect ``name`` (without ``:ARG``); unknown names are bad input."""
    _load_builtins()
    found = _REGISTRY.get(name)
    if found is None:
        raise ArchitectError(f"llm: unknown architect {name!r}; allowed: {', '.join(available())}")
    return found


def create_architect(spec: str, **options: Any) -> Architect:
    """Build an architect from ``NAME`` or ``NAME:ARG`` (e.g. ``offline``, ``openai:gpt-4o``).

    Options: ``seed``, ``max_params`` and ``config`` (the whole RunConfig, for LLM
    settings); ``check=True`` also checks an endpoint is reachable."""
    name, _, arg = spec.partition(":")
    return registration(name).create(arg, **options)


def architect_checks(config: RunConfig) -> list[Check]:
    """The checks of the architect ``config.llm`` names, as that architect defines them;
    an unknown name is one failed row (doctor reports it, it does not raise)."""
    try:
        found = registration(config.llm.partition(":")[0])
    except ArchitectError as exc:
        return [Check("architect", "fail", str(exc))]
    return found.checks(config)


def generic_checks(config: RunConfig) -> list[Check]:
    """For an architect without its own checks: it can be built, and answers if remote."""
    try:
        create_architect(config.llm, config=config)
    except ArchitectError as exc:
        return [Check("architect", "fail", str(exc))]
    return [llm_settings(config), reachable(config)]


def llm_settings(config: RunConfig) -> Check:
    return Check("architect", "info", f"{config.llm} (temperature {config.temperature:g})")


def reachable(config: RunConfig) -> Check:
    """Build the architect with ``check=True`` (an endpoint's model list) and time it."""
    start = time.perf_counter()
    try:
        create_architect(config.llm, config=config, check=True)
    except ArchitectError as exc:
        return Check("reachable", "fail", str(exc))
    ms = (time.perf_counter() - start) * 1000
    return Check("reachable", "ok", f"model list answered in {ms:.0f} ms")


def _load_builtins() -> None:
    # Each module registers itself; llm imports the openai SDK only when used.
    from lemo_nade.architects import baselines, llm, offline, replay  # noqa: F401
