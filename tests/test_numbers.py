"""The shared helpers at the edges: NaN/inf to None (lemo_nade.numbers), the one number
formatter every table uses, and the one atomic file write (lemo_nade.files)."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import pytest

from lemo_nade.files import atomic_write, atomic_write_json
from lemo_nade.numbers import MISSING, finite, fmt, jsonable, missing

# -- finite / missing / jsonable -----------------------------------------------------------


def test_finite_keeps_finite_numbers_as_floats_and_drops_the_rest() -> None:
    assert finite(3) == 3.0 and isinstance(finite(3), float)
    assert finite(-0.25) == -0.25 and finite(0) == 0.0
    for value in (None, math.nan, math.inf, -math.inf, True, False, "1.0", [1.0]):
        assert finite(value) is None, value


def test_missing_is_none_nan_or_an_infinity_only() -> None:
    for value in (None, math.nan, math.inf, -math.inf):
        assert missing(value), value
    for value in (0, 0.0, -1.5, 10**30, "", "nan", False, []):
        assert not missing(value), value


def test_jsonable_clears_non_finite_floats_at_any_depth() -> None:
    value = {
        "a": math.nan,
        "b": [1.0, math.inf, {"c": -math.inf, "d": (2, math.nan)}],
        3: "x",
        "e": None,
        "f": True,
    }
    clean = jsonable(value)
    want = {"a": None, "b": [1.0, None, {"c": None, "d": [2, None]}], "3": "x", "e": None}
    assert clean == {**want, "f": True}
    # what allow_nan=False accepts; the original would be refused
    assert json.loads(json.dumps(clean, allow_nan=False)) == clean
    with pytest.raises(ValueError):
        json.dumps(value, allow_nan=False)


# -- fmt -----------------------------------------------------------------------------------


def test_fmt_formats_numbers_with_the_spec() -> None:
    assert fmt(20000, ",") == "20,000"  # an int takes the spec too
    assert fmt(20000, ",d") == "20,000"
    assert fmt(3) == "3" and fmt(3, ".3f") == "3.000"
    assert fmt(1234.5, ",.0f") == "1,234" and fmt(0.123456, ".4g") == "0.1235"
    assert fmt(1.2345e-9, ".2E") == "1.23E-09" and fmt(12345.678, ".4g") == "1.235e+04"
    assert fmt(0.7) == "0.7" and fmt(0.1 + 0.2) == str(0.1 + 0.2)


def test_fmt_percent_is_a_hundred_times_with_two_decimals() -> None:
    # the tables used to write f"{100 * v:.2f}%"; ".2%" must print the same text
    for v in (0, 1, 0.9, 0.91234, 0.123449999, 0.5 / 3, 1e-7, 0.99995):
        assert fmt(v, ".2%") == f"{100 * v:.2f}%", v
    assert fmt(0.2, ".0%") == "20%"


def test_fmt_shows_missing_values_as_a_dash() -> None:
    for value in (None, math.nan, math.inf, -math.inf):
        assert fmt(value) == MISSING == "—"
        assert fmt(value, ".3f") == MISSING
        assert fmt(value, ",", "-") == "-"  # the terminal tables' mark
    assert fmt(0.0, ".3f", "-") == "0.000"  # zero is a value, not missing


def test_fmt_prints_words_and_bools_as_themselves_whatever_the_spec() -> None:
    assert fmt("estimate") == "estimate" and fmt("estimate", ".3f") == "estimate"
    assert fmt(True, ",") == "True" and fmt(False, ".2%") == "False"
    assert fmt("") == ""


# -- atomic_write --------------------------------------------------------------------------


def test_atomic_write_creates_parents_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.txt"
    atomic_write(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()
    atomic_write(path, b"\x00\x01", fsync=False)
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_a_failed_atomic_write_keeps_the_old_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.txt"
    atomic_write(path, "old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, "new " * 1000)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no hidden .tmp left


def test_a_reader_sees_the_old_file_or_the_whole_new_one(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    versions = [(str(n) * 200_000).encode() for n in range(10)]
    atomic_write(path, versions[0], fsync=False)
    seen: set[bytes] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(path.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(1, 60):
            atomic_write(path, versions[n % len(versions)], fsync=False)
    finally:
        done.set()
        reader.join()
    assert seen and seen <= set(versions)  # never empty, never a mix


def test_atomic_write_json_is_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": math.nan, "b": [1, math.inf]}, indent=None)
    assert path.read_text() == '{"a": null, "b": [1, null]}'
