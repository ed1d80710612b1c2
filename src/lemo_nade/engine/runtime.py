"""How a job runs on its device: mixed precision, memory format, determinism and (on
CPU) the allocator. Child side: imports torch.

On CPU: glibc is told to keep freed large blocks for reuse (:func:`tune_cpu_allocator`;
without it every step page-faults its activations in afresh), float32, threads as the
job says. On CUDA: bf16 autocast (fp16 with a gradient scaler where bf16 is not
supported), channels_last, cuDNN autotuning unless ``job.deterministic`` is set. The GPU
paths are written to PyTorch's documented APIs but were not run on a GPU in
development (no GPU was available).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from lemo_nade.records import EvalJob

AMP_MODES = ("auto", "bf16", "fp16", "off")
SWITCHES = ("auto", "on", "off")


@dataclass(frozen=True)
class Runtime:
    """How a job runs on a device: mixed precision and memory format, resolved."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None: full float32
    channels_last: bool

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def runtime_for(job: EvalJob, device: torch.device | str) -> Runtime:
    """``amp`` auto: bf16 on CUDA (fp16 where bf16 is unsupported), off on CPU, where
    autocast is slower than float32 on most CPUs. ``channels_last`` auto: on CUDA only."""
    device = torch.device(device)
    if job.amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}; got {job.amp!r}")
    if job.channels_last not in SWITCHES:
        raise ValueError(f"channels_last must be one of {', '.join(SWITCHES)}")
    cuda = device.type == "cuda"
    amp_dtype: torch.dtype | None = None
    if job.amp == "auto" and cuda:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif job.amp in ("bf16", "fp16"):
        amp_dtype = torch.bfloat16 if job.amp == "bf16" else torch.float16
    channels_last = job.channels_last == "on" or (job.channels_last == "auto" and cuda)
    return Runtime(device, amp_dtype, channels_last)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
ALLOCATOR_THRESHOLD = 1 << 30
_allocator_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep large freed blocks in the heap for reuse (glibc ``mallopt``); once per process.

    By default glibc serves every block above its mmap threshold (at most 32 MB) with a
    fresh ``mmap`` and returns it with ``munmap`` on free, so each training step of a
    CNN at batch 512 re-faults its activations page by page: on the 2-core development
    VM that was ~2 million page faults per epoch, and a plain training loop ran 2.0x
    faster with this setting than without (``bench/train.py``). Raising the mmap and
    trim thresholds to 1 GiB lets freed blocks be reused instead. The cost: the process
    keeps its peak heap until it exits, which suits the one-candidate sandbox child.
    Returns whether the settings took (False off glibc, e.g. on macOS or musl).
    """
    global _allocator_tuned
    if _allocator_tuned is None:
        _allocator_tuned = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
                _allocator_tuned = bool(
                    mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_THRESHOLD)
                    and mallopt(_M_TRIM_THRESHOLD, ALLOCATOR_THRESHOLD)
                )
            except (OSError, AttributeError):
                pass
    return _allocator_tuned


def grad_scaler(rt: Runtime) -> Any:
    """A gradient scaler for fp16 on CUDA; bf16 and float32 need none."""
    if rt.amp_dtype is torch.float16 and rt.device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


@contextmanager
def determinism(on: bool, device: torch.device) -> Iterator[None]:
    """``on``: deterministic kernels (warn where none exists), no cuDNN autotuning.
    Off on CUDA: cuDNN autotuning (fastest kernels; results vary slightly). Restored after."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    try:
        if on:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]
