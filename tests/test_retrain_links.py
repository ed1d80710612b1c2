"""Issue 16, point 3: `retrain` and `export` never write through, or read through, what a
candidate could plant in a folder it may write (links, FIFOs, huge files).

The child is a fake Sandbox (no torch, no process): it does to its working directory what
the real sandbox does (truncates ``child.log``) and then what a hostile candidate could
do there, and answers like a successful child. Each test checks that a sentinel file
outside the run is unchanged, that the run store is whole, and that the command either
succeeded, ignoring the planted thing, or failed with a one-line error.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from lemo_nade import sandbox
from lemo_nade.config import build_config, config_json
from lemo_nade.files import atomic_write
from lemo_nade.history import IterationRecord
from lemo_nade.records import EvalJob, Evaluation, Metrics, Status
from lemo_nade.results import export as ex
from lemo_nade.results import retrain as rt
from lemo_nade.sandbox.handover import copy_regular, opened_dir, read_regular
from lemo_nade.store import RunStore

SECRET = "the user's own file\n"
CODE = "# the candidate\nclass Net: ...\n"
Plant = Callable[[Path, EvalJob], Evaluation | None]


class FakeBox:
    """Stands in for :class:`lemo_nade.sandbox.Sandbox`: ``plant`` acts as the child."""

    plant: Plant = staticmethod(lambda where, job: None)  # type: ignore[assignment]
    seen: ClassVar[list[dict[str, bytes]]] = []  # the child's folder, as each session found it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> FakeBox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def evaluate(
        self, job: EvalJob, timeout_s: float, memory_limit_mb: Any = None, **kw: Any
    ) -> Evaluation:
        where = Path(kw["workdir"])
        FakeBox.seen.append({p.name: p.read_bytes() for p in where.iterdir() if p.is_file()})
        (where / "child.log").open("w+b").close()  # as the real sandbox, before the child
        if job.mode == "retrain":  # the real one: the measured archive, from memory
            return FakeBox.plant(where, job) or replace(ok(), artifact=b"archive")
        return FakeBox.plant(where, job) or ok()


def ok() -> Evaluation:
    metrics = Metrics(
        A1=0.9, A2=0.8, E1=1e-6, E2=1e-8, F=1000.0, P=100, epochs_run=3, best_epoch=2,
        test_accuracy=0.7, test_images=359, test_energy_kwh=1e-9, candidate_kwh=2e-6,
    )  # fmt: skip
    return Evaluation(Status.OK, metrics)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """A run directory with one successful candidate, a sentinel outside it, the fake box."""
    run_dir = tmp_path / "run"
    with RunStore.create(run_dir, config_json(build_config())) as store:
        store.record_iteration(
            IterationRecord(
                idx=0,
                started_at=1.0,
                finished_at=2.0,
                parent_idx=None,
                architect="offline",
                prompt_instructions=(),
                code=CODE,
                state=None,
                notes="",
                evaluation=ok(),
                cm=1.0,
            )
        )
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text(SECRET)
    monkeypatch.setattr(sandbox, "Sandbox", FakeBox)
    FakeBox.seen = []
    FakeBox.plant = staticmethod(lambda where, job: None)  # type: ignore[assignment]
    yield {"run": run_dir, "outside": outside, "sentinel": outside / "sentinel.txt"}
    assert (outside / "sentinel.txt").read_text() == SECRET
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel.txt"]
    assert not (run_dir / "run.sqlite").is_symlink()
    with sqlite3.connect(run_dir / "run.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with RunStore.open(run_dir) as store:
        assert [r.idx for r in store.iterations()] == [0]


def planting(**links: str) -> Plant:
    """A child that replaces each name (relative to its folder) by a link to a target."""

    def plant(where: Path, job: EvalJob) -> None:
        for name, target in links.items():
            path = where / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.symlink_to(target)

    return plant


def folder(world: dict[str, Path]) -> Path:
    return rt.workdir(world["run"], 0)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


@pytest.mark.parametrize("name", ["checkpoint.pt", "progress.json", "child.log"])
@pytest.mark.parametrize("target", ["sentinel", "store"])
def test_links_left_by_the_child_are_not_followed(
    world: dict[str, Path], name: str, target: str
) -> None:
    to = str(world["sentinel"]) if target == "sentinel" else "../../../run.sqlite"
    FakeBox.plant = staticmethod(planting(**{name: to}))  # type: ignore[assignment]
    result = rt.retrain(world["run"], on_progress=lambda p: None)
    assert result["test_accuracy"] == 0.7 and result["resumed_from_epoch"] == 0
    assert (folder(world) / rt.ARCHIVE).read_bytes() == b"archive"
    assert not (folder(world) / rt.CHECKPOINT).exists()  # the link did not come out
    assert not (folder(world) / rt.CHILD_DIR).exists()  # the child's folder is gone
    again = rt.retrain(world["run"])  # and the next session starts clean
    assert again["resumed_from_epoch"] == 0 and set(FakeBox.seen[-1]) == set()


def test_an_archive_planted_in_work_is_never_read_and_none_handed_over_fails(
    world: dict[str, Path],
) -> None:
    """The stored archive is the one the sandbox measured (handed over in memory), never
    what the child left in ``work/``; a success without one fails in one line."""
    planted = planting(**{rt.ARCHIVE: "../../../run.sqlite"})

    def no_archive(where: Path, job: EvalJob) -> Evaluation:
        planted(where, job)
        return ok()  # OK, but no measured archive with it

    FakeBox.plant = staticmethod(no_archive)  # type: ignore[assignment]
    with pytest.raises(RuntimeError) as failed:
        rt.retrain(world["run"])
    assert "measured model archive is missing" in one_line(failed.value)
    assert not (folder(world) / rt.ARCHIVE).exists()
    assert not (world["run"] / rt.RESULT).exists()
    with RunStore.open(world["run"]) as store:
        assert "retrain_failed" in [kind for _, kind, _ in store.events()]


@pytest.mark.parametrize("kind", ["fifo", "huge", "directory"])
def test_a_checkpoint_that_is_no_plain_file_is_ignored(
    world: dict[str, Path], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rt, "ARTIFACT_LIMIT_BYTES", 1000)

    def plant(where: Path, job: EvalJob) -> None:
        path = where / rt.CHECKPOINT
        if kind == "fifo":
            os.mkfifo(path)
            os.mkfifo(where / rt.PROGRESS)  # the progress bar polls it while the child runs
            time.sleep(0.7)  # long enough for one poll
        elif kind == "huge":
            with path.open("wb") as f:
                f.truncate(1001)
        else:
            path.mkdir()
        if kind != "fifo":
            (where / rt.PROGRESS).write_text('{"epoch": 5, "spent_s": 9}')

    FakeBox.plant = staticmethod(plant)  # type: ignore[assignment]
    seen: list[dict[str, Any]] = []
    result = rt.retrain(world["run"], on_progress=seen.append)
    assert result["resumed_from_epoch"] == 0 and seen == []
    assert not (folder(world) / rt.CHECKPOINT).exists()
    assert not (folder(world) / rt.PROGRESS).exists()  # no progress without its checkpoint
    assert rt.retrain(world["run"])["resumed_from_epoch"] == 0


def test_a_checkpoint_comes_out_after_a_failure_and_goes_back_in(world: dict[str, Path]) -> None:
    def crash(where: Path, job: EvalJob) -> Evaluation:
        (where / rt.CHECKPOINT).write_bytes(b"epoch 2")
        (where / rt.PROGRESS).write_text('{"epoch": 2, "spent_s": 4.0, "val_loss": "x"}')
        return Evaluation(Status.CRASHED, error="Traceback\nboom")

    FakeBox.plant = staticmethod(crash)  # type: ignore[assignment]
    with pytest.raises(RuntimeError) as failed:
        rt.retrain(world["run"])
    assert one_line(failed.value).endswith("continue from the last checkpoint")
    assert (folder(world) / rt.CHECKPOINT).read_bytes() == b"epoch 2"
    FakeBox.plant = staticmethod(lambda where, job: None)  # type: ignore[assignment]
    result = rt.retrain(world["run"])
    assert FakeBox.seen[-1] == {rt.CHECKPOINT: b"epoch 2"}  # a copy, and nothing else
    assert result["resumed_from_epoch"] == 2 and result["hours"] * 3600 >= 4.0
    assert [s["from_epoch"] for s in result["sessions"]] == [0, 2]


def test_an_interrupted_command_keeps_the_checkpoint(world: dict[str, Path]) -> None:
    def interrupted(where: Path, job: EvalJob) -> None:
        (where / rt.CHECKPOINT).write_bytes(b"epoch 1")
        (where / rt.PROGRESS).write_text('{"epoch": 1}')
        raise KeyboardInterrupt

    FakeBox.plant = staticmethod(interrupted)  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        rt.retrain(world["run"])
    assert (folder(world) / rt.CHECKPOINT).read_bytes() == b"epoch 1"
    assert not (folder(world) / rt.CHILD_DIR).exists()


def test_what_a_killed_run_left_in_work_is_collected_and_its_links_ignored(
    world: dict[str, Path],
) -> None:
    work = folder(world) / rt.CHILD_DIR  # as a session whose run process was SIGKILLed
    work.mkdir(parents=True)
    (work / rt.CHECKPOINT).write_bytes(b"epoch 3")
    (work / rt.PROGRESS).write_text('{"epoch": 3, "spent_s": 1.5}')
    (work / "child.log").symlink_to(world["sentinel"])
    (work / "result.json").symlink_to("../../../run.sqlite")
    result = rt.retrain(world["run"])
    assert result["resumed_from_epoch"] == 3
    assert FakeBox.seen[-1] == {rt.CHECKPOINT: b"epoch 3"}


def test_an_old_retrain_folder_that_was_the_childs_is_read_without_following_links(
    world: dict[str, Path],
) -> None:
    """Before ``work/``, ``retrain/NNN/`` itself was the child's folder: anything there may
    be a link (the sessions file, its temporary name, the checkpoint, ``work`` itself)."""
    old = folder(world)
    old.mkdir(parents=True)
    for name in ("sessions.json", ".sessions.json.tmp", "progress.json", "child.log"):
        (old / name).symlink_to(world["sentinel"])
    (old / rt.CHECKPOINT).symlink_to("../../run.sqlite")
    (old / rt.ARCHIVE).symlink_to(world["sentinel"])
    (old / rt.CHILD_DIR).symlink_to(world["outside"], target_is_directory=True)
    result = rt.retrain(world["run"])
    assert result["resumed_from_epoch"] == 0 and FakeBox.seen[-1] == {}
    assert not (old / rt.CHILD_DIR).exists()
    sessions = json.loads((old / "sessions.json").read_text())  # a file of its own now
    assert [s["from_epoch"] for s in sessions] == [0]
    assert (old / rt.ARCHIVE).read_bytes() == b"archive" and not (old / rt.ARCHIVE).is_symlink()


def exporting(fmt: str = "state_dict", **changes: Any) -> Plant:
    """An export child that writes a valid ``export-FMT/``, then applies ``changes``
    (name -> bytes, a link target as str, or None to remove)."""

    def plant(where: Path, job: EvalJob) -> None:
        assert job.mode == "export" and job.code == ""  # no candidate code in the child
        assert Path(job.artifact) == where / rt.ARCHIVE
        assert (where / rt.ARCHIVE).read_bytes() == b"archive"
        out = where / f"export-{fmt}"
        out.mkdir()
        info = {
            "format": fmt, "files": list(ex.MODEL_FILES[fmt]), "max_abs_diff": 0.0,
            "checked_on": "8 test images", "input_shape": [1, 8, 8], "mean": [7.5],
            "std": [5.0], "torch": "2.x", "extra": "ignored",
        }  # fmt: skip
        for name in (*ex.MODEL_FILES[fmt], *ex.CHECK_FILES):
            (out / name).write_bytes(name.encode())
        (out / ex.INFO).write_text(json.dumps(info))
        for name, value in changes.items():
            path = out / name.replace("__", ".")
            if path.is_symlink() or path.exists():
                path.unlink()
            if isinstance(value, bytes):
                path.write_bytes(value)
            elif isinstance(value, str):
                path.symlink_to(value)

    return plant


def test_export_writes_its_own_files_and_ignores_the_childs_links(world: dict[str, Path]) -> None:
    rt.retrain(world["run"])
    sentinel = str(world["sentinel"])
    FakeBox.plant = staticmethod(  # type: ignore[assignment]
        exporting(model__py=sentinel, preprocess__json=sentinel, evil__sh=b"rm -rf ~")
    )
    card = ex.export(world["run"], "state_dict")
    final = world["run"] / "export" / "state_dict"
    assert Path(card["path"]) == final and card["files"] == ["model_state.pt", "model.py"]
    assert sorted(p.name for p in final.iterdir()) == sorted(
        ["model_state.pt", "sample_input.pt", "expected_logits.pt", "export.json", "model.py",
         "preprocess.json", "model_card.json"]
    )  # fmt: skip
    assert not any(p.is_symlink() for p in final.iterdir())
    assert (final / "model.py").read_text() == CODE
    assert (final / "model_state.pt").read_bytes() == b"model_state.pt"
    assert "extra" not in json.loads((final / "export.json").read_text())
    assert not list((world["run"] / "export").glob(".*"))
    assert not (folder(world) / "work-export-state_dict").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_state__pt": "../../../run.sqlite"}, "model_state.pt is missing, a link"),
        ({"sample_input__pt": None}, "sample_input.pt is missing"),
        ({"export__json": "../../../run.sqlite"}, "export.json is unusable"),
        ({"export__json": b'{"files": ["../../run.sqlite"]}'}, "files must be"),
        ({"export__json": b"[" * 100_000}, "export.json is unusable"),
    ],
)
def test_export_refuses_what_it_cannot_trust_in_one_line(
    world: dict[str, Path], changes: dict[str, Any], message: str
) -> None:
    rt.retrain(world["run"])
    FakeBox.plant = staticmethod(exporting(**changes))  # type: ignore[assignment]
    with pytest.raises(RuntimeError) as failed:
        ex.export(world["run"], "state_dict")
    assert message in one_line(failed.value)
    assert not (world["run"] / "export" / "state_dict").exists()
    assert not list((world["run"] / "export").glob(".*"))


def test_an_export_folder_that_is_a_link_is_not_entered(world: dict[str, Path]) -> None:
    rt.retrain(world["run"])

    def plant(where: Path, job: EvalJob) -> None:
        (where / "export-state_dict").symlink_to(world["outside"], target_is_directory=True)

    FakeBox.plant = staticmethod(plant)  # type: ignore[assignment]
    with pytest.raises(RuntimeError) as failed:
        ex.export(world["run"], "state_dict")
    # not entered: inside, it would have found no export.json, a different error
    assert "no export-state_dict/ folder was made" in one_line(failed.value)


def test_export_refuses_retrained_weights_that_are_a_link(world: dict[str, Path]) -> None:
    rt.retrain(world["run"])
    archive = folder(world) / rt.ARCHIVE
    archive.unlink()
    archive.symlink_to(world["sentinel"])
    with pytest.raises(ex.ExportError) as failed:
        ex.export(world["run"], "state_dict")
    assert "model.pt2 is missing or not a regular file" in one_line(failed.value)
    assert FakeBox.seen == [{}]  # the retrain's session only: no export child started


def test_read_regular_refuses_links_fifos_directories_hard_links_and_large_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "plain").write_bytes(b"12345")
    (tmp_path / "link").symlink_to("plain")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "other").write_bytes(b"x")
    os.link(tmp_path / "other", tmp_path / "hard")
    assert read_regular(tmp_path / "plain", 5) == b"12345"
    assert read_regular(tmp_path / "plain", 4) is None
    for name in ("link", "fifo", "dir", "hard", "missing"):
        assert read_regular(tmp_path / name, 100) is None, name
    with opened_dir(tmp_path) as fd:
        assert fd is not None and read_regular("plain", 5, dir_fd=fd) == b"12345"
    with opened_dir(tmp_path / "link") as fd:
        assert fd is None
    (tmp_path / "dirlink").symlink_to("dir", target_is_directory=True)
    with opened_dir(tmp_path / "dirlink") as fd:
        assert fd is None
    assert copy_regular(tmp_path / "plain", tmp_path / "copy", 5)
    assert (tmp_path / "copy").read_bytes() == b"12345"
    assert not copy_regular(tmp_path / "link", tmp_path / "copy2", 5)
    assert not (tmp_path / "copy2").exists()


def test_atomic_write_replaces_a_link_and_never_writes_through_one(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text(SECRET)
    (tmp_path / "out").symlink_to(target)
    (tmp_path / ".out.tmp").symlink_to(target)  # the temporary name it used to have
    atomic_write(tmp_path / "out", "new")
    assert target.read_text() == SECRET
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp", "out", "target"]
