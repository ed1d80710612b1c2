"""``lemo-nade doctor``: what is configured and whether it works, as rows of checks.

Each check is ``{"check", "status", "detail"}`` with status ``ok``, ``warn``, ``fail`` or
``info``. API keys are reported as set or not set, never shown.
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
from lemo_nade.config import RunConfig

Check = dict[str, str]


def _check(name: str, status: str, detail: str) -> Check:
    return {"check": name, "status": status, "detail": detail}


def run_checks(config: RunConfig) -> list[Check]:
    checks = [
        _check(
            "lemo-nade",
            "info",
            f"{__version__} on Python {platform.python_version()} ({sys.platform})",
        )
    ]
    checks += llm_checks(config)
    checks += torch_checks()
    checks += sensor_checks()
    checks += data_checks(config)
    return checks


def llm_checks(config: RunConfig) -> list[Check]:
    from lemo_nade.architects import ArchitectError, create_architect

    provider, _, model = config.llm.partition(":")
    if provider == "offline":
        return [_check("architect", "ok", "offline (no LLM, no network)")]
    if provider == "replay":
        try:
            create_architect(config.llm, config=config)
        except ArchitectError as exc:
            return [_check("architect", "fail", str(exc))]
        return [_check("architect", "ok", f"replaying the LLM calls recorded in {model}")]
    from lemo_nade.architects.llm import PRESETS

    rows = [_check("architect", "info", f"{config.llm} (temperature {config.temperature:g})")]
    if provider in PRESETS:
        preset = PRESETS[provider]
        url = config.base_url or preset.base_url or "https://api.openai.com/v1 (SDK default)"
        key_env = config.api_key_env or preset.key_env
        rows.append(_check("endpoint", "info", url))
        key_set = bool(os.environ.get(key_env))
        needed = preset.needs_key
        rows.append(
            _check(
                "api key",
                "ok" if key_set or not needed else "fail",
                f"${key_env} is {'set' if key_set else 'not set'}"
                + ("" if key_set or needed else " (not needed for a local server)"),
            )
        )
    else:  # not a provider lemo-nade knows: nothing to reach
        try:
            create_architect(config.llm, config=config)
        except ArchitectError as exc:
            return [_check("architect", "fail", str(exc))]
    start = time.perf_counter()
    try:
        create_architect(config.llm, config=config, check=True)
    except ArchitectError as exc:
        rows.append(_check("reachable", "fail", str(exc)))
    else:
        ms = (time.perf_counter() - start) * 1000
        rows.append(_check("reachable", "ok", f"model list answered in {ms:.0f} ms"))
    return rows


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
        return [_check("torch", "fail", "importing torch took over 120 s")]
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        return [_check("torch", "fail", f"cannot import torch: {last}")]
    version, seconds, cuda, threads, name = done.stdout.strip().split("|", 4)
    device = f"cuda ({name})" if cuda == "True" else "cpu"
    return [
        _check("torch", "ok", f"{version}, import {seconds} s"),
        _check("device", "ok", f"{device}; {threads} torch threads, {os.cpu_count()} cores"),
    ]


def sensor_checks() -> list[Check]:
    """The same RAPL discovery the candidates' energy spans use (torch-free)."""
    from lemo_nade.engine.energy import Rapl

    rapl, note = Rapl.open()
    if rapl is not None:
        zones = f"{len(rapl.packages)} package, {len(rapl.dram)} DRAM zones"
        rows = [_check("cpu energy", "ok", f"RAPL readable ({zones})")]
    else:
        rows = [_check("cpu energy", "warn", f"{note}; energy is an ESTIMATE")]
    if importlib.util.find_spec("pynvml") is not None:
        rows.append(_check("gpu energy", "ok", "nvidia-ml-py installed (NVML)"))
    else:
        rows.append(_check("gpu energy", "info", "nvidia-ml-py not installed (no NVML)"))
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
        return [_check("dataset", "fail", str(exc))]
    c, h, w = task.input_shape
    seconds = time.perf_counter() - start
    text = (
        f"{config.dataset}: {c}x{h}x{w}, {task.num_classes} classes, {len(raw.x_train):,} "
        f"training and {len(raw.x_test):,} test images, read in {seconds:.1f} s"
    )
    return [_check("dataset", "ok", text)] + [_check("data file", "info", n) for n in raw.notes]
