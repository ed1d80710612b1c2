"""``--llm replay:RUN_DIR``: answer with the LLM calls recorded in an earlier run.

Every call an LLM architect makes is stored in the run store (request messages,
parameters, the answer text, usage; never the key). Replaying returns, for iteration i
and repair attempt k, exactly the answer recorded for (i, k), so the same candidates
are built and evaluated again without the model, offline and for free. ``lemo-nade
run --llm replay:RUN_DIR`` also starts from the recorded run's config (dataset, seeds,
thresholds), so only what you override changes.

Prompts are not required to match the recording: they embed measured metrics, which
differ slightly between machines (FPS, energy). Whether each prompt matched is noted
in the call record (``prompt_matches``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lemo_nade import prompts
from lemo_nade.architects import Architect, ArchitectError, ArchitectUnavailable, Check, register
from lemo_nade.architects.proposals import proposal_from_answer
from lemo_nade.records import Proposal, ProposalRequest
from lemo_nade.usage import LLMCall, Usage

if TYPE_CHECKING:
    from lemo_nade.config import RunConfig


class ReplayArchitect:
    def __init__(
        self, run_dir: Path, calls: list[LLMCall], initial_command: str, resample: bool = False
    ) -> None:
        self.name = f"replay:{run_dir}"
        self.run_dir = run_dir
        self.initial_command = initial_command
        self.resample = resample
        self._calls = {(c.iteration, c.attempt): c for c in calls}
        self._last = max(c.iteration for c in calls)

    def propose(self, request: ProposalRequest) -> Proposal:
        recorded = self._calls.get((request.iteration, request.attempt))
        if recorded is None:
            raise ArchitectUnavailable(
                f"{self.name}: the recording has no answer for iteration {request.iteration} "
                f"attempt {request.attempt} (it ends at iteration {self._last}); "
                "the replay stops here"
            )
        messages = prompts.messages(request, self.initial_command, self.resample)
        usage = replace(recorded.usage or Usage(), cost_usd=0.0, latency_s=0.0, replayed=True)
        payload = {
            **recorded.payload,
            "architect": self.name,
            "replayed_from": recorded.payload.get("architect"),
            "prompt_matches": messages == recorded.request.get("messages"),
            "at": time.time(),
        }
        call = replace(recorded, usage=usage, payload=payload)
        if recorded.error:
            return Proposal(code="", rejected=recorded.error, usage=usage, calls=(call,))
        response = recorded.response
        finish = response.get("finish_reason")
        return proposal_from_answer(response["text"], finish, usage, call, request)


def replay_checks(config: RunConfig) -> list[Check]:
    """The recording opens and holds calls; nothing is reached over the network."""
    try:
        create_replay(config.llm.partition(":")[2], config=config)
    except ArchitectError as exc:
        return [Check("architect", "fail", str(exc))]
    where = config.llm.partition(":")[2]
    return [Check("architect", "ok", f"replaying the LLM calls recorded in {where}")]


@register("replay", checks=replay_checks, deterministic=True)
def create_replay(arg: str, **options: Any) -> Architect:
    from lemo_nade.config import build_config
    from lemo_nade.store import RunStore, StoreError

    if not arg:
        raise ArchitectError("llm: name the recorded run, e.g. 'replay:runs/20261125-101500-ab12'")
    run_dir = Path(arg)
    try:
        with RunStore.open(run_dir) as store:
            calls = store.llm_calls()
    except StoreError as exc:
        raise ArchitectError(f"llm: replay: {exc}") from None
    if not calls:
        raise ArchitectError(
            f"llm: replay: {run_dir} has no recorded LLM calls (the offline architect is "
            "deterministic: rerun it with the same config instead)"
        )
    config: RunConfig = options.get("config") or build_config({})
    return ReplayArchitect(run_dir, calls, config.initial_command, config.resamples)
