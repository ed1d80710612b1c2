"""Thin ctypes wrappers over the Linux calls the sandbox uses: prctl, unshare and id
maps, Landlock, a classic-BPF seccomp filter, capabilities; with the constants and the
per-architecture syscall tables they need. Pure: no torch; no policy (which paths, which
steps: that is :mod:`lemo_nade.engine.confine`). Every failed call raises :class:`ConfineError`
with the errno and the call named."""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys
from typing import Any

LINUX = sys.platform.startswith("linux")

# linux/prctl.h, linux/sched.h, linux/capability.h, linux/seccomp.h, linux/filter.h
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
CAPABILITY_VERSION_3 = 0x20080522
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
EPERM = 1
ENOSYS = 38

# linux/landlock.h
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_ALL_ABI1 = (1 << 13) - 1  # execute .. make_sym
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

# Per architecture: the audit arch seccomp sees, syscall numbers, and the bits to refuse.
# x86_64: numbers >= 0x40000000 are the x32 ABI; refused as a whole.
_ARCH: dict[str, dict[str, Any]] = {
    "x86_64": {
        "audit": 0xC000003E,
        "landlock": (444, 445, 446),
        "capset": 126,
        "denied": {
            "socket": 41,
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "bpf": 321,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            # metadata changes Landlock does not mediate (it has no right for them)
            "chmod": 90,
            "fchmod": 91,
            "chown": 92,
            "fchown": 93,
            "lchown": 94,
            "utime": 132,
            "setxattr": 188,
            "lsetxattr": 189,
            "fsetxattr": 190,
            "removexattr": 197,
            "lremovexattr": 198,
            "fremovexattr": 199,
            "utimes": 235,
            "fchownat": 260,
            "futimesat": 261,
            "fchmodat": 268,
            "utimensat": 280,
            "fchmodat2": 452,
            "setxattrat": 463,
            "removexattrat": 466,
        },
        "x32": 0x40000000,
        "spawn": {"fork": 57, "vfork": 58},
        "clone": 56,
        "clone3": 435,
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "landlock": (444, 445, 446),
        "capset": 91,
        "denied": {
            "socket": 198,
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "bpf": 280,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "setxattr": 5,
            "lsetxattr": 6,
            "fsetxattr": 7,
            "removexattr": 14,
            "lremovexattr": 15,
            "fremovexattr": 16,
            "fchmod": 52,
            "fchmodat": 53,
            "fchownat": 54,
            "fchown": 55,
            "utimensat": 88,
            "fchmodat2": 452,
            "setxattrat": 463,
            "removexattrat": 466,
        },
        "x32": None,
        "spawn": {},
        "clone": 220,
        "clone3": 435,
    },
}
ARCH = _ARCH.get(platform.machine().lower().replace("arm64", "aarch64"))


class ConfineError(OSError):
    """An isolation step failed."""


_libc: Any = None


def lib() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise ConfineError(err, f"{what}: {os.strerror(err)}")
    return result


def prctl(option: int, arg: int | ctypes.c_char_p) -> int:
    value = arg if isinstance(arg, ctypes.c_char_p) else ctypes.c_ulong(arg)
    zero = ctypes.c_ulong(0)
    return check(lib().prctl(option, value, zero, zero, zero), f"prctl({option})")


def syscall(number: int, *args: Any) -> int:
    return int(lib().syscall(ctypes.c_long(number), *args))


def unshare(flags: int) -> None:
    check(lib().unshare(flags), "unshare")


def map_ids(uid: int, gid: int) -> None:
    """Map this user to itself in the new user namespace (files keep their owner)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):  # fmt: skip
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    if not LINUX or ARCH is None:
        return 0
    create = ARCH["landlock"][0]
    version = syscall(create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(0, version)


def landlock_fs_rights(abi: int) -> int:
    """The filesystem rights a ruleset handles at Landlock ``abi`` (all it knows of)."""
    return FS_ALL_ABI1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)


def landlock_restrict(abi: int, rules: list[tuple[str, int]]) -> None:
    """Restrict this process (and its future children) to ``rules`` (path, rights): every
    filesystem right ``landlock_fs_rights(abi)`` handles is denied elsewhere; from ABI 4
    TCP bind and connect are denied, from ABI 6 signals and abstract unix sockets out of
    the domain. A path that is not there is skipped. Needs ``PR_SET_NO_NEW_PRIVS``."""
    create, add_rule, restrict = ARCH["landlock"] if ARCH else (0, 0, 0)
    handled = landlock_fs_rights(abi)
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("=QQQ", handled, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = check(
        syscall(create, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)), "landlock ruleset"
    )
    try:
        for path, rights in rules:
            _landlock_allow(add_rule, ruleset, path, rights)
        check(syscall(restrict, ctypes.c_int(ruleset), ctypes.c_uint32(0)), "landlock restrict")
    finally:
        os.close(ruleset)


def _landlock_allow(add_rule: int, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # not there: nothing to allow
    try:
        if not os.path.isdir(path):  # directory rights are invalid on a file
            rights &= FS_EXECUTE | FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE
        attr = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
        check(
            syscall(
                add_rule,
                ctypes.c_int(ruleset),
                ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                attr,
                ctypes.c_uint32(0),
            ),
            f"landlock rule for {path}",
        )
    finally:
        os.close(fd)


def seccomp(allow_processes: bool = True) -> None:
    """Install a BPF filter: the syscalls in ``ARCH['denied']`` fail with EPERM and, unless
    ``allow_processes``, so does starting a process (threads stay allowed)."""
    if ARCH is None:
        raise ConfineError(0, f"seccomp: unknown architecture {platform.machine()}")
    insns = seccomp_program(ARCH, allow_processes)
    blob = b"".join(struct.pack("=HBBI", *i) for i in insns)
    filters = ctypes.create_string_buffer(blob, len(blob))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(insns), ctypes.addressof(filters))
    check(
        lib().prctl(
            PR_SET_SECCOMP,
            ctypes.c_ulong(SECCOMP_MODE_FILTER),
            ctypes.byref(prog),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        ),
        "seccomp",
    )


Insn = tuple[str, int, str, str]  # op, k, label if true, label if false ("" = next)


def seccomp_program(arch: dict[str, Any], allow_processes: bool) -> list[tuple[int, int, int, int]]:
    """The classic-BPF program, assembled from labelled instructions."""
    code: list[Insn | str] = [
        ("ld", 4, "", ""),  # seccomp_data.arch
        ("jeq", arch["audit"], "native", "kill"),  # another syscall ABI (e.g. int 0x80)
        "native",
        ("ld", 0, "", ""),  # seccomp_data.nr
    ]
    if arch["x32"] is not None:
        code.append(("jge", arch["x32"], "kill", ""))
    code += [("jeq", nr, "deny", "") for nr in arch["denied"].values()]
    if not allow_processes:
        code += [("jeq", nr, "deny", "") for nr in arch["spawn"].values()]
        # clone3 passes its flags in memory BPF cannot read: ENOSYS makes libc use clone
        code.append(("jeq", arch["clone3"], "nosys", ""))
        code.append(("jeq", arch["clone"], "", "allow"))
        code.append(("ld", 16, "", ""))  # clone's flags: low half of args[0]
        code.append(("jset", CLONE_THREAD, "allow", "deny"))  # a thread, not a process
    code += [
        "allow",
        ("ret", SECCOMP_RET_ALLOW, "", ""),
        "deny",
        ("ret", SECCOMP_RET_ERRNO | EPERM, "", ""),
        "nosys",
        ("ret", SECCOMP_RET_ERRNO | ENOSYS, "", ""),
        "kill",
        ("ret", SECCOMP_RET_KILL_PROCESS, "", ""),
    ]
    return assemble(code)


def assemble(code: list[Insn | str]) -> list[tuple[int, int, int, int]]:
    ops = {"ld": 0x20, "jeq": 0x15, "jge": 0x35, "jset": 0x45, "ret": 0x06}  # BPF_W|ABS, K
    labels: dict[str, int] = {}
    insns: list[Insn] = []
    for item in code:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)

    def offset(label: str, at: int) -> int:
        return 0 if not label else labels[label] - at - 1

    return [(ops[op], offset(t, i), offset(f, i), k) for i, (op, k, t, f) in enumerate(insns)]


def drop_capabilities() -> None:
    """Empty the bounding, effective, permitted and inheritable sets (where we may)."""
    for cap in range(64):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except ConfineError as exc:
            if exc.errno == 22:  # EINVAL: past the last capability
                break
            if exc.errno == EPERM:  # no CAP_SETPCAP: nothing to drop from the bounding set
                break
            raise
    header = ctypes.create_string_buffer(struct.pack("=Ii", CAPABILITY_VERSION_3, 0), 8)
    data = ctypes.create_string_buffer(bytes(24), 24)
    capset = ARCH["capset"] if ARCH else 0
    check(syscall(capset, header, data), "capset")
