"""Plain records passed between the loop, the architects, the sandbox and the store.

Pure: no torch. Everything here round-trips through JSON (``to_dict``/``from_dict``)
because it crosses a process boundary (sandbox) or goes into SQLite (store).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, NamedTuple

from lemo_nade.usage import LLMCall, Usage


class Status(str, enum.Enum):
    """How a candidate ended. Failures are states, stored like successes (optuna's TrialState)."""

    OK = "ok"
    FAILED_EXTRACT = "failed_extract"  # the architect's answer held no usable code
    FAILED_SYNTAX = "failed_syntax"  # the source does not parse
    FAILED_POLICY = "failed_policy"  # the static policy (AST) rejected it
    FAILED_BUILD = "failed_build"  # importing the code or Net() raised
    FAILED_DATA = "failed_data"  # the dataset could not be loaded: not the candidate's fault
    FAILED_SHAPE = "failed_shape"  # forward on a dummy batch raised or gave the wrong shape
    FAILED_NAN = "failed_nan"  # training loss became NaN/inf
    FAILED_TRAIN = "failed_train"  # any other exception during training or measuring
    TIMEOUT = "timeout"  # wall-clock limit hit; the process group was killed
    OOM = "oom"  # out of memory (MemoryError, CUDA OOM, or the memory rlimit)
    CRASHED = "crashed"  # the child died without a result (signal, hard exit)
    FAILED_EXPORT = "failed_export"  # the trained model could not be exported as a graph
    FAILED_RESULT = "failed_result"  # a child's result file was not a well-formed result
    DUPLICATE = "duplicate"  # a model this run already trained: not trained again

    @property
    def ok(self) -> bool:
        return self is Status.OK


# The keys of ``Metrics.structure`` (lemo_nade.engine.structure writes them, the sandbox's
# result check accepts nothing else): whole-number counts, and lists of numbers.
STRUCTURE_COUNTS = frozenset(
    {
        "conv_layers", "conv_ops", "conv_channels_total", "skip_connections",
        "dense_layers", "hidden_units", "batch_norms", "dropout_layers",
    }
)  # fmt: skip
STRUCTURE_LISTS = frozenset({"conv_channels", "dense_units", "dropout_rates"})


@dataclass(frozen=True)
class Metrics:
    """What one evaluated candidate measured. Units are in the names.

    ``A1``/``A2``/``E1``/``E2``/``F``/``P`` are the paper's symbols (Table 1):
    A1 training accuracy, A2 validation accuracy (fractions 0..1), E1 energy of
    training and E2 energy of evaluating the validation set (kWh, *device*
    energy before PUE), F inference frames per second, P parameter count.
    ``energy_source`` labels E1/E2 as a whole: the sources of their parts joined by
    ``+`` (``estimate`` = CPU time x a documented per-core power and RSS x W/GB; ``rapl``
    and ``nvml`` = read from sensors; ``unmeasured`` = a GPU without NVML), e.g.
    ``estimate`` or ``nvml+estimate``. ``energy_sources`` gives each part's source,
    ``E1_parts``/``E2_parts`` each part's kWh, ``energy_note`` why a sensor was not used.
    See :mod:`lemo_nade.engine.measure` for how size, FLOPs and speed are measured.
    """

    A1: float
    A2: float
    E1: float
    E2: float
    F: float
    P: int
    train_loss: float = float("nan")
    val_loss: float = float("nan")
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    epochs_run: int = 0
    train_images: int = 0  # size of the training split E1 was spent on
    val_images: int = 0  # size of the validation split E2 was spent on (per-image energy)
    energy_source: str = "estimate"
    device: str = "cpu"
    params_trainable: int = 0
    model_mb: float = float("nan")  # parameters + buffers, bytes / 1e6
    flops_per_image: float = float("nan")  # forward, torch.utils.flop_counter (2 per MAC)
    fps_batch: int = 0  # the batch size F was measured at
    fps_cv: float = float("nan")  # coefficient of variation of F over timed windows
    latency_ms_p50: float = float("nan")  # batch-1 inference latency
    latency_ms_p95: float = float("nan")
    threads: int = 0  # torch intra-op threads while measuring speed
    measure_time_s: float = 0.0  # time spent on FLOPs, speed and sensor set-up (overhead)
    energy_sources: str = ""  # per part, e.g. "cpu=estimate,ram=estimate,gpu=none"
    E1_parts: dict[str, float] = field(default_factory=dict)  # kWh by part: cpu, ram, gpu
    E2_parts: dict[str, float] = field(default_factory=dict)
    energy_note: str = ""  # why a sensor was not used (e.g. RAPL root-only)
    # retrain only: accuracy on the held-out test set, measured once at the end
    test_accuracy: float | None = None
    test_images: int = 0
    test_energy_kwh: float | None = None  # device energy of the test-set pass
    best_epoch: int = 0
    # device energy of everything measured in the child: training, every eval pass,
    # FLOPs and speed (retrain: the test pass too); None in runs recorded before it existed
    candidate_kwh: float | None = None
    # what the measured graph is made of (lemo_nade.engine.structure: conv layers and
    # their channels, skip connections, dense layers and units, ...), for the instruction
    # checker (lemo_nade.compliance); empty where unknown (older runs, one-process protocol)
    structure: dict[str, Any] = field(default_factory=dict)

    @property
    def spent_kwh(self) -> float:
        """Device kWh this candidate cost: its whole measured span where recorded (the
        search energy of Eq. 2 and the energy budget), else E1 + E2."""
        return self.candidate_kwh if self.candidate_kwh is not None else self.E1 + self.E2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def for_rules(self) -> dict[str, float]:
        """The five values Algorithm 2 reads."""
        return {"A1": self.A1, "A2": self.A2, "E1": self.E1, "E2": self.E2, "F": self.F}


class Verdict(NamedTuple):
    """Whether a candidate implements one instruction of the request that produced it
    (:mod:`lemo_nade.compliance`): ``verdict`` is ``followed``, ``not_followed`` or
    ``unknown``; ``reason`` the facts compared, e.g. ``conv layers 2 -> 3``."""

    code: str
    verdict: str
    reason: str


@dataclass(frozen=True)
class Evaluation:
    """The outcome of running one candidate in the sandbox."""

    status: Status
    metrics: Metrics | None = None
    error: str = ""  # one-paragraph error text (last lines of the traceback), fed back to the LLM
    wall_time_s: float = 0.0
    log_tail: str = ""  # capped stdout/stderr of the child
    # device kWh the child measured before a failure (training that diverged, a measuring
    # error); None when nothing was measured (failed before training, killed, or OK:
    # an OK candidate's energy is in its metrics)
    failure_kwh: float | None = None
    # the measured model as a torch.export archive (the search protocol's hand-over, kept
    # by the store as candidates/NNN.pt2); never part of the JSON result
    artifact: bytes | None = field(default=None, repr=False, compare=False)
    # set by the loop after an OK evaluation, never by a child (not in the result file):
    # one verdict per instruction of the request that produced this candidate
    compliance: tuple[Verdict, ...] = ()

    @property
    def spent_kwh(self) -> float:
        """Device kWh this candidate cost, as far as it was measured: the search energy of
        Eq. 2 and the energy budget add these up."""
        if self.metrics is not None:
            return self.metrics.spent_kwh
        return self.failure_kwh or 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "error": self.error,
            "wall_time_s": self.wall_time_s,
            "log_tail": self.log_tail,
            "failure_kwh": self.failure_kwh,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        metrics = data.get("metrics")
        return cls(
            status=Status(data["status"]),
            metrics=Metrics.from_dict(metrics) if metrics else None,
            error=data.get("error", ""),
            wall_time_s=float(data.get("wall_time_s", 0.0)),
            log_tail=data.get("log_tail", ""),
            failure_kwh=data.get("failure_kwh"),
        )


@dataclass(frozen=True)
class TaskSpec:
    """What a candidate must fit: the contract every architect writes code for."""

    dataset: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int


@dataclass(frozen=True)
class ProposalRequest:
    """Everything an architect may use to propose the next candidate.

    ``parent_code`` is None on the first iteration. ``instructions`` are the
    resolved instructions (Algorithm 3 output) in priority order. ``last_error``
    is set when the previous candidate failed, so an LLM can repair it.
    ``failed_code`` is that failed candidate's code (the parent is the last good one).
    ``parent_state`` is the architect's own structured state of the parent
    (e.g. the offline architect's architecture as JSON); opaque to the loop.
    """

    iteration: int
    task: TaskSpec
    parent_code: str | None
    parent_metrics: Metrics | None
    instructions: tuple[tuple[str, float], ...]
    last_error: str | None = None
    parent_state: dict[str, Any] | None = None
    seed: int = 0
    failed_code: str | None = None  # the code that produced ``last_error``, when it failed
    attempt: int = 0  # 0, then 1..max_repairs when repairing inside this iteration
    history: tuple[tuple[str, str], ...] = ()  # this iteration's earlier (answer, error) pairs
    asked_before: bool = False  # an earlier iteration asked this parent the same instructions


@dataclass(frozen=True)
class Proposal:
    """An architect's answer: model source (``class Net(nn.Module)``) and provenance."""

    code: str
    state: dict[str, Any] | None = None  # structured form, when the architect has one
    notes: str = ""  # what was done, e.g. the edits applied, for the report
    usage: Usage | None = None  # tokens, latency, cost (LLM architects); None: no LLM used
    rejected: str | None = None  # why the answer holds no usable code (then not evaluated)
    answer: str = ""  # the architect's raw answer, when it differs from ``code``
    calls: tuple[LLMCall, ...] = ()  # LLM exchanges, stored for replay


@dataclass(frozen=True)
class EvalJob:
    """What the sandboxed child needs to build, train and measure one candidate.

    The search protocol defaults are the paper's (Sec. 4.1): Adam, lr 1e-3,
    batch 512, LR reduced when validation loss has not improved for
    ``plateau_patience`` epochs. ``split_seed`` fixes the 9:1 stratified
    train/validation split so every candidate of a run sees the same split.
    """

    code: str
    dataset: str
    data_dir: str | None
    epochs: int
    batch_size: int = 512
    lr: float = 1e-3
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = 0.1
    augment: bool = False
    threads: int = 0  # 0: let torch decide
    cpu_power_w_per_core: float = 10.0  # for the energy *estimate*; see engine.measure
    ram_power_w_per_gb: float = 0.375  # codecarbon's constant: 3 W per 8 GB
    # fast search profile: train on a class-stratified subset of the training split
    subset_per_class: int = 0  # images per class; 0: no per-class cap
    subset_fraction: float = 1.0  # fraction of each class (used when subset_per_class is 0)
    early_stopping_patience: int = 0  # stop after this many epochs without a better val loss
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU), bf16, fp16, off
    channels_last: str = "auto"  # auto (on CUDA only), on, off
    compile: bool = False  # torch.compile the model for training
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    mode: str = "search"  # "search": train + measure; "retrain": final protocol + test set;
    # "export": load the measured archive (``artifact``; no candidate code) and write
    # ``export_format`` (results.export)
    export_format: str = ""
    # The search and retrain protocol runs in separate processes (see lemo_nade.sandbox): "prepare"
    # (trusted: writes the data files below), "train" (the candidate: trains on the
    # prepared training data, hands over a graph), "measure" (trusted, never runs
    # candidate code: loads the graph and computes every metric); "all" is one process.
    phase: str = "all"
    prepared: str = ""  # directory of the prepared data files ("train" and "measure")
    artifact: str = ""  # the graph to measure ("measure") or to export ("export")
    train_time_s: float = 0.0  # "measure": the training time the parent saw (speed budget)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalJob:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def final_job(
    job: EvalJob,
    *,
    epochs: int = 500,
    batch_size: int = 1024,
    lr: float = 0.01,
    plateau_patience: int = 20,
    early_stopping_patience: int = 40,
    augment: bool = True,
) -> EvalJob:
    """The paper's final-retrain protocol for ``job``'s model, always on the full data.

    Paper Sec. 4.2: at most 500 epochs, batch 1024, Adam from lr 0.01, LR reduced after
    20 epochs without a lower validation loss. The early-stopping patience is not in the
    paper; 40 (two plateaus) is our default. Augmented (random crop and flip), as the
    paper trains in both phases (Sec. 4.1), unless ``augment`` is off.
    """
    return replace(
        job,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        plateau_patience=plateau_patience,
        early_stopping_patience=early_stopping_patience,
        augment=augment,
        subset_per_class=0,
        subset_fraction=1.0,
    )
