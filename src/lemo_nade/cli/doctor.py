"""``lemo-nade doctor``: what is configured and whether it works, as rows of checks.

Each check is a :class:`~lemo_nade.architects.Check` (printed as ``{"check", "status",
"detail"}``) with status ``ok``, ``warn``, ``fail`` or ``info``. The architect's rows
come from the architect itself (its registration's ``checks``); API keys are reported as
set or not set, never shown. Torch is imported in a child only: the doctor stays light.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
import time
from typing import Any

from lemo_nade import __version__
from lemo_nade.architects import Check, architect_checks
from lemo_nade.config import RunConfig


def run_checks(config: RunConfig) -> list[Check]:
    checks = [
        Check(
            "lemo-nade",
            "info",
            f"{__version__} on Python {platform.python_version()} ({sys.platform})",
        )
    ]
    checks += architect_checks(config)
    checks += torch_checks()
    checks += sensor_checks()
    checks += data_checks(config)
    return checks


def torch_checks() -> list[Check]:
    """Import torch in a child, so the doctor stays light and reports the import time."""
    code = (
        "import time; t = time.perf_counter(); import torch; d = time.perf_counter() - t; "
        "cuda = torch.cuda.is_available(); "
        "name = torch.cuda.get_device_name(0) if cuda else ''; "
        "print(torch.__version__, round(d, 2), cuda, torch.get_num_threads(), name, sep='|')"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return [Check("torch", "fail", "importing torch took over 120 s")]
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        return [Check("torch", "fail", f"cannot import torch: {last}")]
    version, seconds, cuda, threads, name = done.stdout.strip().split("|", 4)
    device = f"cuda ({name})" if cuda == "True" else "cpu"
    return [
        Check("torch", "ok", f"{version}, import {seconds} s"),
        Check("device", "ok", f"{device}; {threads} torch threads, {os.cpu_count()} cores"),
    ]


def sensor_checks() -> list[Check]:
    """The same RAPL discovery the candidates' energy spans use (torch-free)."""
    from lemo_nade.engine.energy import Rapl

    rapl, note = Rapl.open()
    if rapl is not None:
        zones = f"{len(rapl.packages)} package, {len(rapl.dram)} DRAM zones"
        rows = [Check("cpu energy", "ok", f"RAPL readable ({zones})")]
    else:
        rows = [Check("cpu energy", "warn", f"{note}; energy is an ESTIMATE")]
    if importlib.util.find_spec("pynvml") is not None:
        rows.append(Check("gpu energy", "ok", "nvidia-ml-py installed (NVML)"))
    else:
        rows.append(Check("gpu energy", "info", "nvidia-ml-py not installed (no NVML)"))
    return rows


def data_checks(config: RunConfig) -> list[Check]:
    """The dataset read whole, as a candidate's sandbox will read it (every file parsed,
    official md5s compared), so a corrupt file shows here rather than in a run."""
    from lemo_nade.datasets import DatasetError, resolve_dataset
    from lemo_nade.engine.loaders import load

    try:
        task: Any = resolve_dataset(config.dataset, config.data_dir)
        start = time.perf_counter()
        raw = load(config.dataset, config.data_dir)
    except DatasetError as exc:
        return [Check("dataset", "fail", str(exc))]
    c, h, w = task.input_shape
    seconds = time.perf_counter() - start
    text = (
        f"{config.dataset}: {c}x{h}x{w}, {task.num_classes} classes, {len(raw.x_train):,} "
        f"training and {len(raw.x_test):,} test images, read in {seconds:.1f} s"
    )
    return [Check("dataset", "ok", text)] + [Check("data file", "info", n) for n in raw.notes]
