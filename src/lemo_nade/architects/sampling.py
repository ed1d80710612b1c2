"""How one LLM call is sampled: its temperature and its seed.

Pure: no SDK, no torch.
"""

from __future__ import annotations

from lemo_nade import prompts
from lemo_nade.records import ProposalRequest


def temperature(
    request: ProposalRequest, base: float, retry: float, resample: bool = False
) -> float:
    """``base``, or at least ``retry`` after an answer that changed nothing (the parent
    unchanged, or an earlier attempt repeated): at temperature 0 a 0.5B model sent such an
    answer back repeated it word for word until the iteration failed. The same for the
    first answer of an iteration that follows a failed one (``last_error``): from the same
    parent with the same instructions and the same error, the prompt is the one that
    failed before, and at 0 the model failed four iterations in a row the same way. And
    for the first answer to a question an earlier iteration asked (``asked_before``: the
    same parent and instructions, the window having come round again): at 0 it was that
    iteration's answer, a duplicate, on 4 of 10 CIFAR-10 iterations. With ``resample``
    every attempt after the first: it asks the first attempt's question again
    (:func:`lemo_nade.prompts.messages`), which at ``base`` 0 gets the same answer."""
    last_error = request.history[-1][1] if request.history else ""
    first = request.attempt == 0 and (request.last_error or request.asked_before)
    if prompts.stuck(last_error) or first or (resample and request.attempt > 0):
        return max(base, retry)
    return base


def call_seed(request: ProposalRequest) -> int:
    """The sampling seed of one call: the run's seed, moved by iteration and attempt, so
    warmer samples of the same prompt differ (one seed for every call drew the same one)."""
    return request.seed + 1000 * request.iteration + request.attempt
