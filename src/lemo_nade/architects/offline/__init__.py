"""The offline architect: the expert system's instructions applied directly to a
structured architecture (``lemo_nade.architects.offline.arch``) and rendered to PyTorch source.

No LLM, no network, no torch: the default for ``--llm offline`` and the ablation
baseline that shows what the rule book alone achieves. Deterministic: the same request
and seed give byte-identical code. Its ``Proposal.state`` is the architecture as JSON,
which the loop hands back as the next request's ``parent_state``.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from lemo_nade.architects import Architect, ArchitectError, Check, register
from lemo_nade.architects.offline.arch import (
    ArchError,
    Architecture,
    apply,
    explore,
    initial,
)
from lemo_nade.architects.offline.render import param_count, render
from lemo_nade.records import Proposal, ProposalRequest, TaskSpec

_SEED_MIX = 1_000_003  # (seed, iteration) pairs map to distinct rng seeds while iteration < this
DEFAULT_MAX_PARAMS = 25_000_000  # about ResNet-50; the paper's best CIFAR-10 models are <= 2.5M


class OfflineArchitect:
    """Edits the parent's architecture, one concrete edit per resolved instruction.

    ``max_params`` caps growth: an edit that would take the model past it (and make it
    bigger than it was) is skipped with a note. Without a cap, repeated ACL/AMK/AMN
    instructions reach 10^8 parameters within ~15 iterations on CIFAR-sized inputs,
    which then fail as timeouts or OOM instead of telling the search anything.
    """

    name = "offline"

    def __init__(self, seed: int = 0, max_params: int = DEFAULT_MAX_PARAMS) -> None:
        self.seed = seed
        self.max_params = max_params

    def propose(self, request: ProposalRequest) -> Proposal:
        """The very first candidate (no parent, no instructions) is the paper's first model
        as is, so it gets evaluated; otherwise the instructions are applied in order, and
        when none applies (or there are none: all thresholds met) one random applicable
        edit is made so the search keeps moving.

        A parent without readable state (none, or another architect's) restarts from the
        initial model. If the result is exactly the code that just failed (the loop
        retries the same parent with the same instructions), one more random edit is
        made, so a failure is never proposed twice in a row. Costs nothing: usage empty."""
        rng = random.Random(self.seed * _SEED_MIX + request.iteration)
        task = request.task
        arch, notes = self._parent(request)
        first = request.parent_code is None and request.parent_state is None
        if not (first and not request.instructions):
            codes = [code for code, _value in request.instructions]
            arch = self._edit(arch, codes, task, rng, notes)
        if request.failed_code is not None and render(arch, task) == request.failed_code:
            notes.append("same as the candidate that just failed")
            arch = self._explore(arch, task, rng, notes)
        if (count := param_count(arch, task)) > self.max_params:
            notes.append(f"{count:,} parameters, over max_params {self.max_params:,}")
        return Proposal(code=render(arch, task), state=arch.to_dict(), notes="; ".join(notes))

    @staticmethod
    def _parent(request: ProposalRequest) -> tuple[Architecture, list[str]]:
        if request.parent_state is None:
            if request.parent_code is None:
                return initial(request.task), ["initial model (paper Sec. 5.1, Case 1)"]
            note = "parent has no architecture state; started from the initial model"
            return initial(request.task), [note]
        try:
            return Architecture.from_dict(request.parent_state), []
        except ArchError as exc:
            note = f"parent state unreadable ({exc}); started from the initial model"
            return initial(request.task), [note]

    def _edit(
        self,
        arch: Architecture,
        codes: list[str],
        task: TaskSpec,
        rng: random.Random,
        notes: list[str],
    ) -> Architecture:
        """Apply ``codes`` in order (Algorithm 3 already removed conflicts); explore when
        none changed anything."""
        changed = False
        for code in codes:
            new, note = apply(arch, code, rng)
            if new != arch and not self._fits(arch, new, task):
                note = f"{code}: skipped, {self._too_big(new, task)}"
            elif new != arch:
                changed, arch = True, new
            notes.append(note)
        return arch if changed else self._explore(arch, task, rng, notes)

    def _explore(
        self, arch: Architecture, task: TaskSpec, rng: random.Random, notes: list[str]
    ) -> Architecture:
        new, note = explore(arch, rng, accept=lambda new: self._fits(arch, new, task))
        notes.append(note)
        return new

    def _fits(self, old: Architecture, new: Architecture, task: TaskSpec) -> bool:
        """Under the cap, or at least not bigger: shrinking edits are always allowed."""
        count = param_count(new, task)
        return count <= self.max_params or count <= param_count(old, task)

    def _too_big(self, new: Architecture, task: TaskSpec) -> str:
        return f"would make {param_count(new, task):,} parameters (cap {self.max_params:,})"


if TYPE_CHECKING:
    from lemo_nade.config import RunConfig


def offline_checks(config: RunConfig) -> list[Check]:
    """Nothing to reach or configure: the rule book runs here, without torch."""
    return [Check("architect", "ok", "offline (no LLM, no network)")]


@register("offline", checks=offline_checks, deterministic=True)
def create_offline(arg: str, **options: Any) -> Architect:
    """``offline`` takes no argument. Options used: ``seed``, ``max_params``; others ignored."""
    if arg:
        raise ArchitectError(f"llm: offline takes no argument, got 'offline:{arg}'; use 'offline'")
    max_params = int(options.get("max_params") or DEFAULT_MAX_PARAMS)
    return OfflineArchitect(seed=int(options.get("seed") or 0), max_params=max_params)
