"""``lemo-nade doctor``: what is configured and whether it works, as rows of checks.

Each check is a :class:`~lemo_nade.architects.Check` (printed as ``{"check", "status",
"detail"}``) with status ``ok``, ``warn``, ``fail`` or ``info``. The architect's rows
come from the architect itself (its registration's ``checks``); API keys are reported as
set or not set, never shown. Torch is imported in a child only: the doctor stays light.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
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
    from lemo_nade.engine.sensors import Rapl

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


# Run in a child: the loaders hand torch tensors to the sandbox, so they import torch.
_READ_DATA = """
import json, sys, time
from lemo_nade.datasets import DatasetError, resolve_dataset
from lemo_nade.engine.loaders import load
name, folder = sys.argv[1], sys.argv[2] or None
try:
    task = resolve_dataset(name, folder)
    start = time.perf_counter()
    raw = load(name, folder)
except DatasetError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    seconds = time.perf_counter() - start
    print(json.dumps({"shape": task.input_shape, "classes": task.num_classes, "notes": raw.notes,
                      "train": len(raw.x_train), "test": len(raw.x_test), "seconds": seconds}))
"""


def data_checks(config: RunConfig) -> list[Check]:
    """The dataset read whole, as a candidate's sandbox will read it (every file parsed,
    official md5s compared), so a corrupt file shows here rather than in a run. In a
    child, as the torch check, so the doctor's own process never imports torch."""
    args = [sys.executable, "-c", _READ_DATA, config.dataset, config.data_dir or ""]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        return [Check("dataset", "fail", f"cannot read the dataset: {last}")]
    read: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in read:
        return [Check("dataset", "fail", read["error"])]
    c, h, w = read["shape"]
    text = (
        f"{config.dataset}: {c}x{h}x{w}, {read['classes']} classes, {read['train']:,} "
        f"training and {read['test']:,} test images, read in {read['seconds']:.1f} s"
    )
    return [Check("dataset", "ok", text)] + [Check("data file", "info", n) for n in read["notes"]]
