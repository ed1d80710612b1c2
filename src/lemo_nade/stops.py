"""Why a search stops: the reasons and their one-line form (re-exported by ``search``).

Pure: no torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lemo_nade import runs


class StopReason(str, enum.Enum):
    """Why a search stopped: its length or a budget ran out (Algorithm 1, line 21), or it
    cannot go on until something outside it is fixed (the LLM, the data)."""

    ITERATIONS = "iterations"
    MAX_HOURS = "max_hours"
    MAX_ENERGY_KWH = "max_energy_kwh"
    MAX_TOKENS = "max_tokens"
    MAX_COST_USD = "max_cost_usd"
    LLM_UNAVAILABLE = "llm_unavailable"
    DATA_ERROR = "data_error"


_WITH_DETAIL = (StopReason.LLM_UNAVAILABLE, StopReason.DATA_ERROR)


@dataclass(frozen=True)
class Stop:
    """A stop reason and, for the LLM and the data, their one-line message."""

    reason: StopReason
    detail: str = ""

    def __str__(self) -> str:
        """The run's stored reason and what the CLI prints: ``iterations``, ``max_hours``,
        ``llm_unavailable: MESSAGE``, ``data_error: MESSAGE``."""
        if self.reason in _WITH_DETAIL:
            return f"{self.reason.value}: {self.detail}"
        return self.reason.value

    @property
    def budget(self) -> bool:
        """Whether a budget (one of ``runs.BUDGETS``) ended the run: resume can raise it."""
        return self.reason.value in runs.BUDGETS

    @property
    def external(self) -> bool:
        """Whether the run stopped for something outside its candidates (LLM, data)."""
        return self.reason in _WITH_DETAIL


def data_error(error: str) -> str:
    """The DatasetError's own message from the child's error text, as one line (a
    library's message inside it may span lines: pickle's "...was encountered,\nbut no
    persistent_load..." once left only its last line, without the file's name)."""
    text = error.strip()
    if "DatasetError: " in text:
        text = text.rsplit("DatasetError: ", 1)[1]
    elif text:
        text = text.splitlines()[-1]
    return " ".join(text.split()) or "the dataset could not be loaded"
