"""The baselines a search is measured against, as architects any run can use.

- ``random``: the offline architect's edit space (the 15 edits of Table 2 on the same
  structured architecture, under the same ``max_params`` cap) with the edits chosen at
  random, 1 to 4 per step, seeded: the ablation "does the expert system matter?". It
  ignores the instructions (their verdicts say so: ``not_followed``).
- ``reference:FILE``: always proposes the model in FILE (a hand-written anchor: what a
  known architecture scores under the same protocol, data split and seed).

Both cost nothing and need no network; both are deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lemo_nade.architects import Architect, ArchitectError, Check, register
from lemo_nade.architects.offline import DEFAULT_MAX_PARAMS, OfflineArchitect
from lemo_nade.records import Proposal, ProposalRequest
from lemo_nade.rules import INSTRUCTIONS
from lemo_nade.text import plain

if TYPE_CHECKING:
    from lemo_nade.config import RunConfig

MAX_EDITS = 4
MAX_REFERENCE_BYTES = 1_000_000


class RandomArchitect(OfflineArchitect):
    """The offline architect with random instructions instead of the expert system's."""

    name = "random"

    def propose(self, request: ProposalRequest) -> Proposal:
        if request.parent_code is None and request.parent_state is None:
            return super().propose(replace(request, instructions=()))  # the same first model
        rng = random.Random(f"random-edits:{self.seed}:{request.iteration}:{request.attempt}")
        codes = rng.sample(list(INSTRUCTIONS), rng.randint(1, MAX_EDITS))
        proposal = super().propose(replace(request, instructions=tuple((c, 1.0) for c in codes)))
        notes = f"random edits: {' '.join(codes)}; {proposal.notes}".rstrip("; ")
        return replace(proposal, notes=notes)


class ReferenceArchitect:
    """Proposes the same hand-written model every time."""

    def __init__(self, path: Path, code: str) -> None:
        self.name = f"reference:{path}"
        self.code = code

    def propose(self, request: ProposalRequest) -> Proposal:
        return Proposal(code=self.code, notes=f"reference model {plain(self.name)}")


def read_reference(arg: str) -> tuple[Path, str]:
    """The model file ``arg`` names; :class:`ArchitectError` with the fix otherwise."""
    if not arg:
        raise ArchitectError("llm: name the model file, e.g. 'reference:models/vgg_small.py'")
    path = Path(arg)
    try:
        if not path.is_file():
            raise ArchitectError(f"llm: reference model {plain(arg)!r} is not a file")
        if path.stat().st_size > MAX_REFERENCE_BYTES:
            raise ArchitectError(f"llm: reference model {plain(arg)!r} is over 1 MB")
        return path, path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchitectError(
            f"llm: cannot read reference model {plain(arg)!r} ({type(exc).__name__})"
        ) from None


def _free(name: str) -> Any:
    def checks(config: RunConfig) -> list[Check]:
        if name == "reference":
            try:
                path, _ = read_reference(config.llm.partition(":")[2])
            except ArchitectError as exc:
                return [Check("architect", "fail", str(exc))]
            return [Check("architect", "ok", f"reference model {plain(str(path))}")]
        return [Check("architect", "ok", "random edits (no LLM, no network)")]

    return checks


@register("random", checks=_free("random"), deterministic=True)
def create_random(arg: str, **options: Any) -> Architect:
    """``random`` takes no argument. Options used: ``seed``, ``max_params``."""
    if arg:
        raise ArchitectError(f"llm: random takes no argument, got 'random:{plain(arg)}'")
    max_params = int(options.get("max_params") or DEFAULT_MAX_PARAMS)
    return RandomArchitect(seed=int(options.get("seed") or 0), max_params=max_params)


@register("reference", checks=_free("reference"), deterministic=True)
def create_reference(arg: str, **options: Any) -> Architect:
    return ReferenceArchitect(*read_reference(arg))
