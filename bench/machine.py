"""The machine a benchmark runs on, stated the same way by every script in ``bench/``.

Timings on a shared machine move with its load, so each script prints the load average
(runnable processes averaged over 1, 5 and 15 minutes, as ``uptime`` shows it; not a
percentage) next to its numbers, in the one format :func:`load_text` writes.

Importing this module does not import torch: ``bench/sandbox.py`` measures the RSS of a
parent that never loads it. Torch's thread count is reported only when the caller has
imported torch already; its version comes from the installed package's metadata.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``; ``platform`` says only ``x86_64``."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def cores() -> int | None:
    """CPUs this process may run on (its affinity mask), which in a container or under
    ``taskset`` is fewer than ``os.cpu_count()`` reports for the host."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def load_avg() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages; None where the OS has none (Windows)."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def load_text(load: tuple[float, ...] | list[float] | None) -> str:
    """``"1.85 1.52 2.01"`` (two decimals each), or ``"n/a"``."""
    return "n/a" if load is None else " ".join(f"{v:.2f}" for v in load)


def torch_version() -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def conditions() -> dict[str, Any]:
    """What timings here depend on, JSON-ready; call it before and after measuring."""
    torch = sys.modules.get("torch")
    return {
        "cpu": cpu_name(),
        "cores": cores(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "torch": torch_version(),
        "python": platform.python_version(),
        "load_avg": load_avg(),
    }


def load_change(before: dict[str, Any], after: dict[str, Any] | None = None) -> str:
    """``"load average 1.85 1.52 2.01"``, or ``"... before X, after Y"`` given both."""
    if after is None:
        return f"load average {load_text(before['load_avg'])}"
    return (
        f"load average before {load_text(before['load_avg'])}, after {load_text(after['load_avg'])}"
    )


def describe(before: dict[str, Any], after: dict[str, Any] | None = None) -> str:
    """One line from :func:`conditions`: CPU, cores, Python, torch (and its threads when
    torch was imported) and the load average, before and after when both are given."""
    software = f"python {before['python']}, torch {before['torch'] or 'n/a'}"
    if before["torch_threads"] is not None:
        software += f" with {before['torch_threads']} threads"
    return (
        f"CPU: {before['cpu']}; {before['cores']} cores, {software}; {load_change(before, after)}"
    )
