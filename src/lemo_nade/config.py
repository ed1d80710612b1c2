"""Run configuration: frozen, validated (pydantic v2), loadable from TOML, with the
paper's Table 4 priority settings and its appendix thresholds as defaults
(:mod:`lemo_nade.presets`).

Files and ``--set`` pairs are read by :mod:`lemo_nade.config_files`.

Pure: no torch. Precedence: defaults < ``--setting`` < TOML file < command-line flags.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lemo_nade.datasets import canonical
from lemo_nade.presets import (
    DEFAULT_SEARCH,
    DEFAULT_SETTING,
    PAPER_THRESHOLDS,
    SEARCHES,
    SETTINGS,
)
from lemo_nade.prompts import DEFAULT_INITIAL_COMMAND


class ConfigError(ValueError):
    """Bad configuration. ``str()`` is one line naming the key and what is allowed."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads ``true`` as 1 for a number; ``iterations = true`` is a mistake."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            kinds = (annotation, *get_args(annotation))
            if bool not in kinds and (int in kinds or float in kinds):
                raise ValueError(f"expected a number, not {str(value).lower()}")
        return value  # other types: pydantic's own message (e.g. "a valid string")


class Priorities(_Frozen):
    """Table 1 priorities: how much each unmet target counts in Algorithm 2."""

    PA1: float = Field(ge=0, le=10, description="training accuracy")
    PA2: float = Field(ge=0, le=10, description="validation accuracy")
    PE1: float = Field(ge=0, le=10, description="training energy")
    PE2: float = Field(ge=0, le=10, description="validation (inference) energy")
    PF: float = Field(ge=0, le=10, description="FPS")


class Thresholds(_Frozen):
    """Table 1 thresholds. Defaults: the paper's appendix (Fig. 3 configuration, CIFAR-10);
    :func:`build_config` starts CIFAR-100 and ImageNet16-120 runs from their own
    (:data:`PAPER_THRESHOLDS`).

    OT and UT are not given in the paper; our defaults: overfitting when training
    accuracy exceeds validation accuracy by more than 5 points (OT 0.05),
    underfitting when validation exceeds training by more than 2 points (UT 0.02).
    """

    TA1: float = Field(0.95, gt=0, le=1, description="training accuracy (fraction)")
    TA2: float = Field(0.92, gt=0, le=1, description="validation accuracy (fraction)")
    TE1: float = Field(1e-3, gt=0, description="training energy (kWh)")
    TE2: float = Field(1e-5, gt=0, description="validation energy (kWh)")
    TF: float = Field(20000.0, gt=0, description="inference FPS")
    OT: float = Field(0.05, ge=0, le=1, description="overfitting gap A1 - A2")
    UT: float = Field(0.02, ge=0, le=1, description="underfitting gap A2 - A1")


class Weights(_Frozen):
    """Eq. 1 weights. The paper gives no values; accuracy dominates by default."""

    AW: float = Field(1.0, ge=0, description="accuracy weight")
    FW: float = Field(0.5, ge=0, description="normalised FPS weight")
    EW: float = Field(0.5, ge=0, description="normalised energy weight")


class FinalProtocol(_Frozen):
    """Retraining the chosen model (paper Sec. 4.2), always on the full training split.

    ``records.final_job(job, **config.final.model_dump())`` turns a search job into it.
    """

    epochs: int = Field(500, ge=1, le=100_000, description="at most this many epochs")
    batch_size: int = Field(1024, ge=1, le=65_536, description="paper: 1024")
    lr: float = Field(0.01, gt=0, le=10, description="Adam's initial learning rate (paper: 0.01)")
    plateau_patience: int = Field(
        20, ge=1, le=10_000, description="epochs without a lower val loss before LR x0.1"
    )
    early_stopping_patience: int = Field(
        40, ge=0, le=100_000, description="epochs without a lower val loss before stopping; 0 off"
    )
    augment: bool = Field(True, description="random crop + flip (paper Sec. 4.1: both phases)")


class RunConfig(_Frozen):
    """Everything that determines a run. Stored with the run; ``resume`` reuses it."""

    dataset: str = "shifted-digits"
    data_dir: str | None = None
    llm: str = "offline"
    iterations: int = Field(10, ge=1, le=100_000)
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(512, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0, le=10)
    plateau_patience: int = Field(5, ge=1, le=1000)
    augment: bool = False
    seed: int = Field(0, ge=0, le=2**31 - 1)
    setting: int | None = Field(DEFAULT_SETTING, ge=1, le=5)
    priorities: Priorities
    thresholds: Thresholds = Thresholds()
    weights: Weights = Weights()
    # `search` is a preset for `parent`, `retrain_duplicates`, `max_instructions`,
    # `lineage_memory`, `pass_spent`, `parent_patience`, `retry_with`, `promote` and
    # `pursue` (explicit keys override it): "paper" = Algorithm 1 as written; "discover"
    # (the default, measured better: README "Does the search discover?") = its departures.
    search: Literal["paper", "discover"] = DEFAULT_SEARCH
    parent: Literal["last", "best"] = SEARCHES[DEFAULT_SEARCH]["parent"]
    retrain_duplicates: bool = Field(
        SEARCHES[DEFAULT_SEARCH]["retrain_duplicates"],
        description="train a model the run already trained",
    )
    pass_spent: bool = Field(
        SEARCHES[DEFAULT_SEARCH]["pass_spent"],
        description="parent = best: pass over a candidate whose children were all duplicates",
    )
    parent_patience: int = Field(
        SEARCHES[DEFAULT_SEARCH]["parent_patience"],
        ge=0,
        le=100_000,
        description="parent = best: pass over a candidate that this many trained children "
        "did not beat by CM (0: never)",
    )
    lineage_memory: bool = Field(
        SEARCHES[DEFAULT_SEARCH]["lineage_memory"],
        description="ask last for instructions whose children in this run mostly lost",
    )
    pursue: bool = Field(
        SEARCHES[DEFAULT_SEARCH]["pursue"],
        description="energy and FPS rules fire while their priority is > 0, past a met "
        "threshold (rules.pursued)",
    )
    promote: int = Field(
        SEARCHES[DEFAULT_SEARCH]["promote"],
        ge=0,
        le=100,
        description="after the search, train this many of its best candidates again for "
        "promote_epochs; the run's best is chosen among all",
    )
    promote_epochs: int | None = Field(
        None, ge=1, le=100_000, description="a promotion's epochs; default twice epochs"
    )
    max_params: int = Field(25_000_000, ge=1000, description="offline architect's size cap")
    max_hours: float | None = Field(None, gt=0)
    candidate_timeout_s: float = Field(600.0, gt=0)
    memory_limit_mb: int | None = Field(None, ge=256)
    threads: int = Field(0, ge=0, le=1024)
    cpu_power_w_per_core: float = Field(10.0, gt=0, le=1000)
    pue: float = Field(1.58, ge=1, le=5)
    co2_lbs_per_kwh: float = Field(0.954, ge=0, le=10)
    search_subset: int | float | None = Field(
        None,
        description="train each candidate on a class-stratified subset of the training split: "
        "an integer is images per class, a number below 1 a fraction of each class; "
        "validation stays whole (fast CPU profile)",
    )
    early_stopping_patience: int = Field(
        0,
        ge=0,
        le=100_000,
        description="search: stop a candidate after this many epochs "
        "without a lower validation loss; 0 off (the paper trains 20 epochs flat)",
    )
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="mixed precision: auto is bf16 (fp16) on CUDA, off on CPU"
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="channels_last memory format: auto is on for CUDA only"
    )
    compile: bool = Field(False, description="torch.compile each candidate for training")
    deterministic: bool = Field(
        False, description="deterministic kernels on CUDA (slower); CPU runs are repeatable"
    )
    final: FinalProtocol = FinalProtocol()

    @field_validator("data_dir")
    @classmethod
    def _absolute_dir(cls, value: str | None) -> str | None:
        """Absolute, so the sandboxed child (another cwd) and a resume find the same files."""
        return os.path.abspath(os.path.expanduser(value)) if value else value

    @field_validator("dataset")
    @classmethod
    def _absolute_npz(cls, value: str) -> str:
        if value.startswith("npz:") and len(value) > 4:
            return "npz:" + os.path.abspath(os.path.expanduser(value[4:]))
        return value

    @field_validator("search_subset", mode="before")
    @classmethod
    def _subset(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected images per class (integer >= 1) or a fraction in (0, 1]")
        if isinstance(value, int):
            if value < 1:
                raise ValueError("images per class must be >= 1")
        elif not 0 < value <= 1:
            raise ValueError("a fraction must be in (0, 1]; use an integer for images per class")
        return value

    # LLM architects (`llm = "openai:MODEL"`, "gemini:", "ollama:", "vllm:", "llamacpp:",
    # "replay:RUN_DIR"). The key is read from the environment variable named here and is
    # never logged or stored.
    temperature: float = Field(0.0, ge=0, le=2, description="sampling temperature (paper: 0)")
    retry_temperature: float = Field(
        0.7, ge=0, le=2, description="at least this after an answer that changed nothing"
    )
    max_instructions: int = Field(
        SEARCHES[DEFAULT_SEARCH]["max_instructions"],
        ge=0,
        le=15,
        description="instructions per prompt, most important first; 0: all",
    )
    base_url: str | None = Field(None, description="endpoint; default: the provider preset's")
    api_key_env: str | None = Field(None, description="env var holding the API key")
    llm_max_tokens: int = Field(4096, ge=64, le=1_000_000, description="answer length cap")
    llm_timeout_s: float = Field(180.0, gt=0, le=3600, description="per request")
    llm_stream: bool = Field(
        True, description="stream answers: a long one never times out, a looping one is stopped"
    )
    llm_retries: int = Field(4, ge=0, le=20, description="on 429, 5xx, timeouts (backoff)")
    max_repairs: int = Field(2, ge=0, le=20, description="fix attempts inside an iteration")
    retry_with: Literal["resample", "repair"] = Field(
        SEARCHES[DEFAULT_SEARCH]["retry_with"],
        description="after a failed attempt: the same prompt answered afresh at "
        "retry_temperature (resample), or the error sent back to fix (repair)",
    )
    initial_command: str = Field(DEFAULT_INITIAL_COMMAND, min_length=1)
    prices: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="USD per 1M tokens (input, output), by model"
    )
    # Budgets: a run stops cleanly between iterations when one is spent.
    max_tokens: int | None = Field(None, ge=1, description="LLM tokens in + out, whole run")
    max_cost_usd: float | None = Field(None, gt=0, description="LLM cost, whole run")
    max_energy_kwh: float | None = Field(
        None, gt=0, description="device kWh of all candidates, whole run"
    )

    @property
    def promotion_epochs(self) -> int:
        """The epochs a promoted candidate trains for: ``promote_epochs``, else 2x ``epochs``."""
        return self.promote_epochs or 2 * self.epochs

    @property
    def resamples(self) -> bool:
        """Whether an attempt after a failed one asks the iteration's question afresh."""
        return self.retry_with == "resample"

    @model_validator(mode="after")
    def _promotion_trains_longer(self) -> RunConfig:
        if self.promote_epochs is not None and self.promote_epochs <= self.epochs:
            raise ValueError(
                f"promote_epochs must be more than epochs ({self.epochs}): a promotion "
                f"trains a candidate longer than the search did (got {self.promote_epochs})"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _from_search(cls, data: Any) -> Any:
        """``search`` supplies the keys of its :data:`SEARCHES` preset; explicitly given
        keys override it."""
        if not isinstance(data, dict) or data.get("search", DEFAULT_SEARCH) not in SEARCHES:
            return data
        return {**SEARCHES[data.get("search", DEFAULT_SEARCH)], **data}

    @model_validator(mode="before")
    @classmethod
    def _priorities_from_setting(cls, data: Any) -> Any:
        """``setting`` supplies the priorities; explicitly given keys override it."""
        if not isinstance(data, dict):
            return data
        setting = data.get("setting", DEFAULT_SETTING)
        explicit = data.get("priorities") or {}
        if not isinstance(explicit, dict):
            return data
        base = SETTINGS.get(setting, {}) if isinstance(setting, int) else {}
        return {**data, "priorities": {**base, **explicit}}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of plain dicts; ``None`` values in override are ignored (unset flags)."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(*layers: dict[str, Any]) -> RunConfig:
    """Validate the merged layers; raise ConfigError with one line on the first problem."""
    data: dict[str, Any] = {}
    for layer in layers:
        data = merge(data, layer)
    dataset = data.get("dataset", RunConfig.model_fields["dataset"].default)
    if isinstance(dataset, str):  # the paper's thresholds for it, under the user's own
        defaults = PAPER_THRESHOLDS.get(canonical(dataset), PAPER_THRESHOLDS["cifar10"])
        data = merge({"thresholds": defaults}, data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(one_line(exc)) from None


def one_line(exc: ValidationError, root: type[BaseModel] = RunConfig) -> str:
    """pydantic's first error as ``key.path: what is wrong (got VALUE)``; an unknown key
    lists the allowed ones."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    if err["type"] == "extra_forbidden":
        model = _model_at(err["loc"][:-1], root)
        allowed = ", ".join(model.model_fields)
        if root is RunConfig and loc in ("axes", "base", "resources"):
            return f"{loc}: unknown key; this looks like a sweep file: lemo-nade sweep FILE"
        return f"{loc}: unknown key; allowed: {allowed}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if "input" not in err or isinstance(err["input"], dict):
        return f"{loc}: {msg}"
    return f"{loc}: {msg} (got {err['input']!r})"


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel]:
    model: type[BaseModel] = root
    for part in loc:
        annotation = model.model_fields[str(part)].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return model


def config_json(config: RunConfig) -> str:
    return config.model_dump_json(indent=2)


# What a stored config without the key ran with: a run resumed, replayed or reported goes
# on as it was recorded, not as a later default would run it (a config stores every key).
# Every key a search preset sets, but for the three that came with `search` itself, is
# here (tests/test_config.py): before 7d90d5f a retry sent the error back (repair).
BEFORE_THE_KEY = {
    "search": "paper",
    "lineage_memory": False,
    "pass_spent": False,
    "retry_with": "repair",
    "promote": 0,
    "pursue": False,
    "parent_patience": 0,
}


def recorded_keys(text: str) -> dict[str, Any]:
    """A stored config's keys; a key it lacks was written before the key existed
    (:data:`BEFORE_THE_KEY`): the paper's loop, no promotion, Algorithm 2 as written.
    ConfigError when the text is not a JSON object."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"the stored config is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("the stored config is not a JSON object")
    return {**BEFORE_THE_KEY, **data}


def config_from_json(text: str) -> RunConfig:
    """A stored config, read as :func:`recorded_keys` says."""
    try:
        data = recorded_keys(text)
    except ConfigError:
        return RunConfig.model_validate_json(text)  # its ValidationError says what is wrong
    return RunConfig.model_validate(data)
