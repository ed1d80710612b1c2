"""The named presets a run starts from: the paper's Table 4 priority settings, its
appendix thresholds per dataset, and the two searches (the paper's literal loop and the
default). Pure data; :mod:`lemo_nade.config` validates and merges them.
"""

from __future__ import annotations

from typing import Any, Literal

# Paper, Table 4: user-defined priorities for the five experiment settings.
SETTINGS: dict[int, dict[str, float]] = {
    1: {"PA1": 0.4, "PA2": 0.6, "PE1": 0.0, "PE2": 0.0, "PF": 0.0},
    2: {"PA1": 0.3, "PA2": 0.3, "PE1": 0.2, "PE2": 0.2, "PF": 0.0},
    3: {"PA1": 0.0, "PA2": 1.0, "PE1": 0.0, "PE2": 0.0, "PF": 0.0},
    4: {"PA1": 0.0, "PA2": 0.0, "PE1": 0.5, "PE2": 0.5, "PF": 0.0},
    5: {"PA1": 0.3, "PA2": 0.4, "PE1": 0.0, "PE2": 0.0, "PF": 0.3},
}
DEFAULT_SETTING = 1

# Paper appendix: the thresholds of the configurations behind Figs. 3-5, one per dataset
# (TA1, TA2 fractions; TE1, TE2 kWh; TF FPS). A dataset not listed gets CIFAR-10's.
PAPER_THRESHOLDS: dict[str, dict[str, float]] = {
    "cifar10": {"TA1": 0.95, "TA2": 0.92, "TE1": 1e-3, "TE2": 1e-5, "TF": 20000.0},
    "cifar100": {"TA1": 0.90, "TA2": 0.85, "TE1": 1e-2, "TE2": 1e-4, "TF": 20000.0},
    "imagenet16-120": {"TA1": 0.70, "TA2": 0.65, "TE1": 1e-3, "TE2": 1e-5, "TF": 22000.0},
}

DEFAULT_SEARCH: Literal["discover"] = "discover"
SEARCHES: dict[str, dict[str, Any]] = {
    "paper": {"parent": "last", "max_instructions": 0, "retrain_duplicates": True}
    | {"lineage_memory": False, "pass_spent": False, "retry_with": "repair", "promote": 0}
    | {"pursue": False, "parent_patience": 0},
    "discover": {"parent": "best", "max_instructions": 2, "retrain_duplicates": False}
    | {"lineage_memory": False, "pass_spent": False, "retry_with": "resample", "promote": 2}
    | {"pursue": True, "parent_patience": 0},
}
# The keys a search preset sets (every preset sets the same ones: tests/test_config.py).
PRESET_KEYS = frozenset(SEARCHES[DEFAULT_SEARCH])
