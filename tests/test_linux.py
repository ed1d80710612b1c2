"""The ctypes layer's pure parts: the seccomp program's assembly, Landlock's rights, and
the read rules' carving around the package's data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from lemo_nade.engine import linux


def test_assemble_resolves_labels_to_relative_jumps() -> None:
    code: list[linux.Insn | str] = [
        ("ld", 0, "", ""),
        ("jeq", 41, "deny", ""),  # insn 1: deny is insn 3 -> skip 1
        "allow",
        ("ret", linux.SECCOMP_RET_ALLOW, "", ""),
        "deny",
        ("ret", linux.SECCOMP_RET_ERRNO | linux.EPERM, "", ""),
    ]
    assert linux.assemble(code) == [
        (0x20, 0, 0, 0),
        (0x15, 1, 0, 41),
        (0x06, 0, 0, linux.SECCOMP_RET_ALLOW),
        (0x06, 0, 0, linux.SECCOMP_RET_ERRNO | 1),
    ]


@pytest.mark.parametrize("allow_processes", [True, False])
def test_seccomp_program_denies_the_table_and_checks_the_abi(allow_processes: bool) -> None:
    arch = linux._ARCH["x86_64"]
    program = linux.seccomp_program(arch, allow_processes)
    assert len(program) < 256  # far below BPF's 4096-instruction limit, all jumps fit a byte
    assert program[0] == (0x20, 0, 0, 4)  # load seccomp_data.arch
    assert program[1][0] == 0x15 and program[1][3] == arch["audit"]
    compared = {k for op, _, _, k in program if op == 0x15}
    assert set(arch["denied"].values()) <= compared
    spawn = set(arch["spawn"].values()) | {arch["clone"], arch["clone3"]}
    assert spawn <= compared if not allow_processes else not (spawn & compared)
    # every jump lands inside the program, and the program ends in a return
    for i, (op, jt, jf, _) in enumerate(program):
        if op in (0x15, 0x35, 0x45):
            assert i + 1 + jt < len(program) and i + 1 + jf < len(program)
    assert program[-1][0] == 0x06


def test_landlock_rights_grow_with_the_abi() -> None:
    assert linux.landlock_fs_rights(1) == linux.FS_ALL_ABI1
    assert linux.landlock_fs_rights(2) == linux.FS_ALL_ABI1 | linux.FS_REFER
    assert linux.landlock_fs_rights(7) & linux.FS_TRUNCATE


def test_carve_grants_everything_around_the_hidden_folder(tmp_path: Path) -> None:
    from lemo_nade.engine.access import carve

    site = tmp_path / "site-packages"
    for folder in ("torch", "numpy", "lemo_nade/engine", "lemo_nade/data"):
        (site / folder).mkdir(parents=True)
    (site / "lemo_nade" / "__init__.py").write_text("")
    (site / "six.py").write_text("")
    hidden = str(site / "lemo_nade" / "data")
    granted = carve([str(tmp_path), "/usr"], hidden)
    assert "/usr" in granted and str(tmp_path) not in granted
    assert str(site / "torch") in granted and str(site / "six.py") in granted
    assert str(site / "lemo_nade" / "engine") in granted
    assert str(site / "lemo_nade" / "__init__.py") in granted
    assert not any(g == hidden or g.startswith(hidden + "/") for g in granted)
    assert not any(hidden.startswith(g + "/") for g in granted)  # no ancestor left whole
    assert carve([hidden], hidden) == []


def test_the_package_data_folder_is_outside_every_default_read_path() -> None:
    from lemo_nade.engine import access

    hidden = access.hidden_paths()
    assert hidden and hidden[0].endswith("data")
    for path in access.default_read_paths():
        assert not hidden[0].startswith(path + "/") and path != hidden[0], path
