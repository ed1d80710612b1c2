"""What a confined candidate may touch: the Landlock rules of its domain (step 5 of
:mod:`lemo_nade.engine.confine`). Pure: no torch import; the calls themselves are
:mod:`lemo_nade.engine.linux`.

Read-only: the Python installation and the packages the child has loaded (torch, numpy,
``lemo_nade`` less its ``data`` folder, the built-in dataset), system libraries, the CPU
list, the RAPL counters, the dataset, and the candidate's own ``/proc/PID``. Read and
write: everything beneath its working directory, and ``/dev/null``/``/dev/zero``. On a
GPU host also the NVIDIA device files and reading ``/proc``, ``/sys`` and
``/etc/nvidia`` (the CUDA driver needs them).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

from lemo_nade.engine import linux
from lemo_nade.engine.linux import (
    FS_EXECUTE,
    FS_READ_DIR,
    FS_READ_FILE,
    FS_TRUNCATE,
    FS_WRITE_FILE,
)

# Read-only for the candidate, besides the Python installation and its packages.
SYSTEM_READ_PATHS = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/etc/ld.so.cache",
    "/dev/urandom",
    "/dev/random",
    "/sys/devices/system/cpu",  # os.cpu_count() reads the online CPU list
    "/proc/cpuinfo",  # torch's cpuinfo reads it on the first operation
    "/sys/class/powercap",  # RAPL energy counters (lemo_nade.engine.sensors)
    "/sys/devices/virtual/powercap",
)
DEVICE_RW_PATHS = ("/dev/null", "/dev/zero")
# With an NVIDIA GPU the CUDA driver also needs its device files, /proc and /sys.
GPU_RW_GLOB = ("/dev/nvidia", "/dev/dri")
GPU_READ_PATHS = ("/proc", "/sys", "/etc/nvidia")
LOADED_PACKAGES = ("torch", "numpy", "lemo_nade")  # their directories must be readable
PACKAGE_DATA = "data"  # lemo_nade/data: the built-in dataset, never readable by a candidate


def restrict(
    abi: int, workdir: str, read_paths: tuple[str, ...] = (), own_proc: bool = False
) -> None:
    """Enter the candidate's Landlock domain (irreversible): full access beneath
    ``workdir``, read-only ``read_paths`` (the dataset) and the defaults above."""
    file_rights = FS_READ_FILE | FS_WRITE_FILE | (FS_TRUNCATE if abi >= 3 else 0)
    read = FS_READ_FILE | FS_READ_DIR | FS_EXECUTE
    rules: list[tuple[str, int]] = [(workdir, linux.landlock_fs_rights(abi))]
    rules += [(p, read) for p in (*default_read_paths(), *read_paths)]
    rules += [(p, file_rights) for p in _rw_device_paths()]
    if own_proc:  # this process's own /proc/PID (e.g. statm for its memory use)
        rules.append(("/proc/self", read))
    linux.landlock_restrict(abi, rules)


@functools.lru_cache(maxsize=1)
def default_read_paths() -> tuple[str, ...]:
    """Read-only paths a candidate needs: the interpreter, loaded packages, system libs.
    Cached: the fork server computes it once and every child inherits it."""
    import site
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(sysconfig.get_paths().values())
    with contextlib.suppress(AttributeError):
        paths.update(site.getsitepackages())
    paths.update(loaded_package_dirs())
    paths.update(SYSTEM_READ_PATHS)
    if has_gpu():
        paths.update(GPU_READ_PATHS)
    granted = sorted(os.path.realpath(p) for p in paths if p and os.path.exists(p))
    for hidden in hidden_paths():
        granted = carve(granted, hidden)
    return tuple(sorted(set(granted)))


def hidden_paths() -> list[str]:
    """What stays unreadable inside the granted trees: the package's own data folder
    (the built-in dataset, validation and test labels included). The trusted ``prepare``
    child gets it back as an explicit read path; a candidate's process never does."""
    package = sys.modules.get("lemo_nade")
    file = getattr(package, "__file__", None)
    return [os.path.realpath(os.path.join(os.path.dirname(file), PACKAGE_DATA))] if file else []


def carve(granted: list[str], hidden: str) -> list[str]:
    """``granted`` with ``hidden`` cut out: a granted ancestor of ``hidden`` is replaced
    by its entries on the way down, all but the one leading to ``hidden`` (Landlock
    rules only add access, so a subtree is excluded by not granting it)."""
    carved = []
    for root in granted:
        if root != hidden and not hidden.startswith(root.rstrip(os.sep) + os.sep):
            carved.append(root)
            continue
        current = root
        for part in os.path.relpath(hidden, root).split(os.sep) if root != hidden else ():
            with contextlib.suppress(OSError):
                carved += [os.path.join(current, e) for e in os.listdir(current) if e != part]
            current = os.path.join(current, part)
    return carved


def loaded_package_dirs() -> list[str]:
    """The directories of :data:`LOADED_PACKAGES` this process has imported."""
    dirs = []
    for name in LOADED_PACKAGES:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            dirs.append(os.path.dirname(file))
    return dirs


def has_gpu() -> bool:
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def _rw_device_paths() -> list[str]:
    paths = [p for p in DEVICE_RW_PATHS if os.path.exists(p)]
    if has_gpu():
        for entry in sorted(os.listdir("/dev")):
            full = "/dev/" + entry
            if any(full.startswith(prefix) for prefix in GPU_RW_GLOB):
                paths.append(full)
    return paths
