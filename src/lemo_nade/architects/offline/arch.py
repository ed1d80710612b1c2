"""Structured CNNs for the offline architect: the paper's first model, one concrete edit
per expert-system instruction (Table 2). Rendering to PyTorch source: ``arch_render``.

Pure: no torch import. Every edit keeps the architecture inside the validation limits
below, so any sequence of instructions yields a valid model.

Edits (not applicable at a limit: unchanged, and the note says why):
  ACL append a block: last block's channels (x2, capped, when it pools; pool and 3x3/5x5
      kernel drawn from the rng), last block's dropout, no skip
  RCL remove one block chosen by the rng (never the last one left)
  ASC skip on the earliest block without one, the stem (block 1) last
  RSC skip off the latest block with one
  ADL append a hidden dense layer: half the last hidden width (min 8), or 128
  RDL remove the last hidden dense layer (the classifier stays)
  AD / RD  every dropout (conv blocks and head) +0.1 / -0.1, within 0..0.5
  AMK / RK every block's channels x1.5 / /1.5, rounded to a multiple of 4, within 4..512
  AWI weight init default -> kaiming -> xavier (repeated AWI tries the other one)
  AR  weight decay 0 -> 1e-4, then x10 up to 1e-2;  RR /10, and 0 below 1e-5
  AMN hidden widths x2 (max 2048); a classifier-only head gets a 128-unit hidden layer
  RN  hidden widths /2 (min 8)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from lemo_nade.records import TaskSpec
from lemo_nade.rules import INSTRUCTIONS

MAX_BLOCKS = 12
MIN_CHANNELS, MAX_CHANNELS = 4, 512
KERNEL_SIZES = (1, 3, 5, 7)
MAX_DROPOUT = 0.5
MAX_DENSE_LAYERS = 4
MIN_UNITS, MAX_UNITS = 8, 2048
MAX_WEIGHT_DECAY = 1e-2
INITS = ("default", "kaiming", "xavier")

DROPOUT_STEP = 0.1  # AD / RD
CHANNEL_FACTOR = 1.5  # AMK multiplies, RK divides; results rounded to a multiple of 4
NEW_DENSE_UNITS = 128  # ADL / AMN when the head has no hidden layer yet
FIRST_WEIGHT_DECAY = 1e-4  # AR from 0; then x10 per AR
MIN_WEIGHT_DECAY = 1e-5  # RR below this goes to 0


class ArchError(ValueError):
    """An architecture outside the limits, or unreadable state; the message names the field."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ArchError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _limit(name: str, value: object, low: float, high: float, *, integral: bool = False) -> None:
    if integral:
        ok = _is_int(value)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and low <= value <= high  # type: ignore[operator]  # a number, checked just above
    kind = "an int" if integral else "a number"
    _check(ok, f"{name} must be {kind} in {low:g}..{high:g}, got {value!r}")


@dataclass(frozen=True)
class ConvBlock:
    """Conv(k, padding k//2, no bias: BN follows) -> BN -> [+ skip] -> ReLU -> [Dropout2d]
    -> [MaxPool2d(2)]. ``pool`` is a wish: ``render`` drops it when the map is under 2x2."""

    channels: int
    kernel_size: int = 3
    skip: bool = False
    dropout: float = 0.0
    pool: bool = False

    def __post_init__(self) -> None:
        _limit("channels", self.channels, MIN_CHANNELS, MAX_CHANNELS, integral=True)
        _check(
            _is_int(self.kernel_size) and self.kernel_size in KERNEL_SIZES,
            f"kernel_size must be one of {KERNEL_SIZES}, got {self.kernel_size!r}",
        )
        _check(isinstance(self.skip, bool), f"skip must be a bool, got {self.skip!r}")
        _check(isinstance(self.pool, bool), f"pool must be a bool, got {self.pool!r}")
        _limit("dropout", self.dropout, 0.0, MAX_DROPOUT)


@dataclass(frozen=True)
class Architecture:
    """Conv blocks, then flatten -> hidden Linear+ReLU layers (``dense``) -> classifier.

    ``dense_dropout`` is applied to the input of every Linear (after flatten and after
    each hidden ReLU). ``weight_decay`` is for the optimizer, not the module; ``render``
    writes it as ``WEIGHT_DECAY``.
    """

    blocks: tuple[ConvBlock, ...]
    dense: tuple[int, ...] = ()
    dense_dropout: float = 0.0
    init: str = "default"
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check(
            isinstance(self.blocks, tuple) and all(isinstance(b, ConvBlock) for b in self.blocks),
            "blocks must be a tuple of ConvBlock",
        )
        _limit("number of conv blocks", len(self.blocks), 1, MAX_BLOCKS, integral=True)
        _check(isinstance(self.dense, tuple), "dense must be a tuple of ints")
        _limit("number of hidden dense layers", len(self.dense), 0, MAX_DENSE_LAYERS)
        for units in self.dense:
            _limit("dense units", units, MIN_UNITS, MAX_UNITS, integral=True)
        _limit("dense_dropout", self.dense_dropout, 0.0, MAX_DROPOUT)
        _check(self.init in INITS, f"init must be one of {INITS}, got {self.init!r}")
        _limit("weight_decay", self.weight_decay, 0.0, MAX_WEIGHT_DECAY)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``from_dict`` reads it back to an equal Architecture."""
        return {
            "blocks": [asdict(block) for block in self.blocks],
            "dense": list(self.dense),
            "dense_dropout": self.dense_dropout,
            "init": self.init,
            "weight_decay": self.weight_decay,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        """Validate and rebuild; JSON ints are accepted where floats are expected."""
        try:
            blocks = tuple(
                ConvBlock(**{**b, "dropout": _as_float(b.get("dropout", 0.0))})
                for b in data["blocks"]
            )
            return cls(
                blocks=blocks,
                dense=tuple(data.get("dense", ())),
                dense_dropout=_as_float(data.get("dense_dropout", 0.0)),
                init=data.get("init", "default"),
                weight_decay=_as_float(data.get("weight_decay", 0.0)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ArchError(f"unreadable architecture state: {exc!r}") from exc


def _as_float(value: Any) -> Any:
    return float(value) if _is_int(value) else value


def initial(task: TaskSpec) -> Architecture:
    """The paper's first model (Sec. 5.1, Case 1): two 3x3 conv layers with BN and ReLU
    (16 and 32 channels), max-pooling after the second, and a single dense (classifier)
    layer. Independent of the task: ``render`` fits it to the input shape and classes."""
    del task  # same starting point for every task; the shape is applied at render time
    return Architecture(blocks=(ConvBlock(16), ConvBlock(32, pool=True)))


# ---- edits: one per instruction code ------------------------------------------------
# Each returns (new architecture, note) or (None, reason) when it does not apply.
Edit = Callable[[Architecture, random.Random], tuple["Architecture | None", str]]


def _scale_channels(channels: int, factor: float) -> int:
    rounded = 4 * math.floor(channels * factor / 4 + 0.5)
    return min(MAX_CHANNELS, max(MIN_CHANNELS, rounded))


def _step(value: float, delta: float, top: float) -> float:
    return round(min(top, max(0.0, value + delta)), 10)


def _describe(block: ConvBlock) -> str:
    extras = "".join((", skip" if block.skip else "", ", pool" if block.pool else ""))
    return f"{block.channels} ch, {block.kernel_size}x{block.kernel_size}{extras}"


def _acl(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    if len(arch.blocks) >= MAX_BLOCKS:
        return None, f"ACL: already at the limit of {MAX_BLOCKS} conv blocks"
    pool = rng.random() < 0.5
    last = arch.blocks[-1].channels
    block = ConvBlock(
        channels=min(MAX_CHANNELS, last * 2) if pool else last,
        kernel_size=rng.choice((3, 5)),
        dropout=arch.blocks[-1].dropout,
        pool=pool,
    )
    new = replace(arch, blocks=(*arch.blocks, block))
    return new, f"ACL: added conv block {len(new.blocks)} ({_describe(block)})"


def _rcl(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    if len(arch.blocks) <= 1:
        return None, "RCL: only one conv block left"
    index = rng.randrange(len(arch.blocks))
    gone = arch.blocks[index]
    blocks = arch.blocks[:index] + arch.blocks[index + 1 :]
    return replace(arch, blocks=blocks), f"RCL: removed conv block {index + 1} ({_describe(gone)})"


def _skips(arch: Architecture, add: bool) -> tuple[Architecture | None, str]:
    """ASC turns on the earliest block without a skip, the stem (block 1, fed by the raw
    image) last; RSC turns off the latest block with one."""
    n = len(arch.blocks)
    order = [*range(1, n), 0] if add else list(reversed(range(n)))
    for i in order:
        if arch.blocks[i].skip != add:
            block = replace(arch.blocks[i], skip=add)
            blocks = (*arch.blocks[:i], block, *arch.blocks[i + 1 :])
            what = "added a skip connection to" if add else "removed the skip connection of"
            return replace(arch, blocks=blocks), f"{'ASC' if add else 'RSC'}: {what} block {i + 1}"
    if add:
        return None, "ASC: every conv block already has a skip connection"
    return None, "RSC: no skip connections to remove"


def _asc(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    return _skips(arch, add=True)


def _rsc(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    return _skips(arch, add=False)


def _adl(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    if len(arch.dense) >= MAX_DENSE_LAYERS:
        return None, f"ADL: already at the limit of {MAX_DENSE_LAYERS} hidden dense layers"
    units = max(MIN_UNITS, arch.dense[-1] // 2) if arch.dense else NEW_DENSE_UNITS
    new = replace(arch, dense=(*arch.dense, units))
    return new, f"ADL: added hidden dense layer {len(new.dense)} ({units} units)"


def _rdl(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    if not arch.dense:
        return None, "RDL: no hidden dense layers to remove (the classifier stays)"
    note = f"RDL: removed hidden dense layer {len(arch.dense)} ({arch.dense[-1]} units)"
    return replace(arch, dense=arch.dense[:-1]), note


def _dropouts(arch: Architecture, delta: float, code: str) -> tuple[Architecture | None, str]:
    blocks = tuple(replace(b, dropout=_step(b.dropout, delta, MAX_DROPOUT)) for b in arch.blocks)
    new = replace(arch, blocks=blocks, dense_dropout=_step(arch.dense_dropout, delta, MAX_DROPOUT))
    if new == arch:
        bound = f"at the {MAX_DROPOUT} cap" if delta > 0 else "at 0"
        return None, f"{code}: all dropouts already {bound}"
    conv = ",".join(f"{b.dropout:g}" for b in new.blocks)
    return new, f"{code}: dropout {delta:+g} (conv {conv}; dense {new.dense_dropout:g})"


def _ad(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    return _dropouts(arch, DROPOUT_STEP, "AD")


def _rd(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    return _dropouts(arch, -DROPOUT_STEP, "RD")


def _kernels(arch: Architecture, factor: float, code: str) -> tuple[Architecture | None, str]:
    blocks = tuple(replace(b, channels=_scale_channels(b.channels, factor)) for b in arch.blocks)
    if blocks == arch.blocks:
        bound = f"at {MAX_CHANNELS}" if factor > 1 else f"at {MIN_CHANNELS}"
        return None, f"{code}: all conv blocks already {bound} channels"
    before = ",".join(str(b.channels) for b in arch.blocks)
    after = ",".join(str(b.channels) for b in blocks)
    return replace(arch, blocks=blocks), f"{code}: channels {before} -> {after}"


def _amk(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    return _kernels(arch, CHANNEL_FACTOR, "AMK")


def _rk(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    return _kernels(arch, 1 / CHANNEL_FACTOR, "RK")


def _awi(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    following = {"default": "kaiming", "kaiming": "xavier"}
    if arch.init not in following:
        return None, f"AWI: both initializers tried already (now {arch.init})"
    init = following[arch.init]
    return replace(arch, init=init), f"AWI: weight init {arch.init} -> {init}"


def _ar(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    if arch.weight_decay >= MAX_WEIGHT_DECAY:
        return None, f"AR: weight decay already at the {MAX_WEIGHT_DECAY:g} cap"
    wd = FIRST_WEIGHT_DECAY if arch.weight_decay == 0 else arch.weight_decay * 10
    wd = min(MAX_WEIGHT_DECAY, float(f"{wd:.6g}"))
    return replace(arch, weight_decay=wd), f"AR: weight decay {arch.weight_decay:g} -> {wd:g}"


def _rr(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    if arch.weight_decay == 0:
        return None, "RR: no weight decay to reduce"
    wd = float(f"{arch.weight_decay / 10:.6g}")
    wd = 0.0 if wd < MIN_WEIGHT_DECAY else wd
    return replace(arch, weight_decay=wd), f"RR: weight decay {arch.weight_decay:g} -> {wd:g}"


def _units(arch: Architecture, grow: bool) -> tuple[Architecture | None, str]:
    code = "AMN" if grow else "RN"
    if not arch.dense:  # the classifier's width is the class count: nothing to scale
        if not grow:
            return None, "RN: no hidden dense layers (the classifier's width is fixed)"
        note = f"AMN: head had only the classifier; added a hidden layer of {NEW_DENSE_UNITS} units"
        return replace(arch, dense=(NEW_DENSE_UNITS,)), note
    scale = (lambda u: min(MAX_UNITS, u * 2)) if grow else (lambda u: max(MIN_UNITS, u // 2))
    dense = tuple(scale(units) for units in arch.dense)
    if dense == arch.dense:
        bound = MAX_UNITS if grow else MIN_UNITS
        return None, f"{code}: all hidden dense layers already at {bound} units"
    before, after = (",".join(map(str, d)) for d in (arch.dense, dense))
    return replace(arch, dense=dense), f"{code}: hidden units {before} -> {after}"


def _amn(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    return _units(arch, grow=True)


def _rn(arch: Architecture, rng: random.Random) -> tuple[Architecture | None, str]:
    return _units(arch, grow=False)


# In rule-book order, like rules.INSTRUCTIONS.
EDITS: dict[str, Edit] = {
    "ACL": _acl, "ASC": _asc, "ADL": _adl, "RCL": _rcl, "RSC": _rsc,
    "RDL": _rdl, "AD": _ad, "AMK": _amk, "AWI": _awi, "AR": _ar,
    "RK": _rk, "RD": _rd, "AMN": _amn, "RN": _rn, "RR": _rr,
}  # fmt: skip


def try_apply(arch: Architecture, code: str, rng: random.Random) -> tuple[Architecture | None, str]:
    """Like ``apply`` but None instead of the unchanged architecture when not applicable."""
    edit = EDITS.get(code)
    if edit is None:
        raise ArchError(f"unknown instruction {code!r}; allowed: {', '.join(INSTRUCTIONS)}")
    return edit(arch, rng)


def apply(arch: Architecture, code: str, rng: random.Random) -> tuple[Architecture, str]:
    """One concrete edit for an instruction code; unchanged architecture plus the reason
    when it does not apply. Randomness (new block's kernel/pool, which block RCL removes)
    comes only from ``rng``. An unknown code is a bug upstream and raises ArchError."""
    new, note = try_apply(arch, code, rng)
    return (arch if new is None else new), note


def explore(
    arch: Architecture, rng: random.Random, accept: Callable[[Architecture], bool] | None = None
) -> tuple[Architecture, str]:
    """One random applicable edit (that ``accept`` allows, e.g. a size cap), for when the
    expert system gives no instructions (all thresholds met) or none applied, so the
    search keeps moving. Some edit always applies: AMK and RK cannot both be at their
    channel limits. Unchanged, with a note, only if ``accept`` refuses every edit."""
    codes = list(INSTRUCTIONS)
    rng.shuffle(codes)
    for code in codes:
        new, note = try_apply(arch, code, rng)
        if new is not None and (accept is None or accept(new)):
            return new, f"explore: {note}"
    return arch, "explore: no applicable edit"
