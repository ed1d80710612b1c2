"""`lemo-nade retrain`: final protocol in the sandbox, test set once, resumable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lemo_nade.cli import app
from lemo_nade.results.retrain import workdir
from lemo_nade.store import RunStore

pytest_plugins = ["sandbox_fixtures"]
runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, shared_sandbox: object) -> Path:
    """A finished 2-iteration run; the module's runs, retrains and exports in this process
    share the session's sandbox (``shared_sandbox``), as they would one fork server."""
    runs = tmp_path_factory.mktemp("runs")
    args = ["run", "--iterations", "2", "--epochs", "1", "--seed", "4", "--runs-dir", str(runs)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (found,) = list(runs.iterdir())
    return found


def test_retrain_writes_test_accuracy_and_records_it(run_dir: Path) -> None:
    result = runner.invoke(app, ["retrain", str(run_dir), "--epochs", "3", "--json", "--fresh"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == json.loads((run_dir / "retrain.json").read_text())
    # the default dataset, shifted-digits: the digits test set, moved and noised
    assert 0.0 < doc["test_accuracy"] <= 1.0 and doc["test_images"] == 359
    assert doc["epochs"] == 3 and doc["resumed_from_epoch"] == 0
    assert doc["protocol"]["batch_size"] == 1024 and doc["protocol"]["lr"] == 0.01
    assert doc["fps"] > 0 and doc["inference_kwh_pue_per_image"] > 0
    assert (run_dir / doc["weights"]).is_file()
    with RunStore.open(run_dir) as st:
        events = {kind: data for _, kind, data in st.events()}
    assert events["retrained"]["test_accuracy"] == doc["test_accuracy"]
    # show says it too, in the table and the JSON
    table = runner.invoke(app, ["show", str(run_dir)])
    assert f"test accuracy {100 * doc['test_accuracy']:.2f}%" in table.stdout
    shown = json.loads(runner.invoke(app, ["show", str(run_dir), "--json"]).stdout)
    assert shown["retrain"]["test_accuracy"] == doc["test_accuracy"]
    assert shown["paper_row"]["test_accuracy"] == doc["test_accuracy"]
    assert not list((run_dir / "retrain").glob("*/torchinductor_*"))


def test_bad_candidates_are_refused(run_dir: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["retrain", str(run_dir), "--candidate", "7"])
    assert missing.exit_code == 2 and "not in the run" in missing.output
    nowhere = runner.invoke(app, ["retrain", str(tmp_path)])
    assert nowhere.exit_code == 2 and "not a run directory" in nowhere.output


@pytest.mark.parametrize(
    ("flag", "value", "key"),
    [("--lr", "-1", "final.lr"), ("--epochs", "0", "final.epochs"), ("--lr", "nan", "final.lr")],
)
def test_bad_protocol_values_are_one_line_and_fresh_deletes_nothing(
    run_dir: Path, flag: str, value: str, key: str
) -> None:
    kept = workdir(run_dir, 0)  # candidate 0's checkpoint folder: --fresh would remove it
    kept.mkdir(parents=True, exist_ok=True)
    (kept / "sentinel").write_text("x")
    before = sorted(p.name for p in (run_dir / "retrain").iterdir())
    args = ["retrain", str(run_dir), "--candidate", "0", "--fresh", flag, value]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith(f"error: {key}:")
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in (run_dir / "retrain").iterdir()) == before
    assert (kept / "sentinel").read_text() == "x"
    (kept / "sentinel").unlink()


def _progress(folder: Path) -> int:
    try:
        return int(json.loads((folder / "progress.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def test_an_interrupted_retrain_continues_from_its_checkpoint(
    run_dir: Path, tmp_path: Path
) -> None:
    best = json.loads(runner.invoke(app, ["show", str(run_dir), "--json"]).stdout)["summary"]
    folder = run_dir / "retrain" / f"{best['best_iteration']:03d}"
    args = [sys.executable, "-m", "lemo_nade", "retrain", str(run_dir), "--epochs", "12"]
    shutil.rmtree(folder, ignore_errors=True)  # an earlier test's progress.json is not ours
    proc = subprocess.Popen(
        [*args, "--fresh"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    child = folder / "work"  # the child's own folder, while it runs
    try:
        deadline = time.monotonic() + 180
        while _progress(child) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the run process was killed with the child: the checkpoint is still in the child's
    # folder, and the next session takes it from there
    left = json.loads((child / "progress.json").read_text())
    reached = left["epoch"]
    assert 3 <= reached < 12, reached
    assert left["spent_s"] > 0
    # what the candidate could have left there is not followed by the next session
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("mine")
    (child / "child.log").unlink()
    (child / "child.log").symlink_to(sentinel)
    (child / "result.json").symlink_to("../../../run.sqlite")
    # the checkpoint restores the optimiser: continuing it under another lr is refused
    other_lr = runner.invoke(app, ["retrain", str(run_dir), "--epochs", "12", "--lr", "0.005"])
    assert other_lr.exit_code == 2
    assert "--lr: candidate" in other_lr.stderr and "lr = 0.01, not 0.005" in other_lr.stderr
    # more epochs are allowed; both sessions are on record
    result = runner.invoke(app, ["retrain", str(run_dir), "--epochs", "13", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["resumed_from_epoch"] == reached and doc["epochs"] == 13
    first, second = doc["sessions"]
    assert (first["from_epoch"], second["from_epoch"]) == (0, reached)
    assert (first["protocol"]["epochs"], second["protocol"]["epochs"]) == (12, 13)
    # the hours include the first session's training up to its last checkpoint
    assert doc["hours"] * 3600 > left["spent_s"]
    assert sentinel.read_text() == "mine" and not child.exists()
    assert not (folder / "checkpoint.pt").is_symlink() and (folder / "checkpoint.pt").is_file()
    with RunStore.open(run_dir) as st:
        assert st.iterations()


LOADERS = {
    "state_dict": (
        "import importlib.util, sys, torch\n"
        "spec = importlib.util.spec_from_file_location('m', sys.argv[1] + '/model.py')\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "net = mod.Net(); net.load_state_dict(torch.load(sys.argv[1] + '/model_state.pt'))\n"
        "net.eval(); f = lambda x: net(x)\n"
    ),
    "torchscript": "import sys, torch\nnet = torch.jit.load(sys.argv[1] + '/model.ts')\nf = net\n",
    "pt2": (
        "import sys, torch\n"
        "net = torch.export.load(sys.argv[1] + '/model.pt2').module()\nf = lambda x: net(x)\n"
    ),
    "onnx": (
        "import sys, torch, onnxruntime\n"
        "s = onnxruntime.InferenceSession(sys.argv[1] + '/model.onnx')\n"
        "f = lambda x: torch.from_numpy(s.run(None, {'input': x.numpy()})[0])\n"
    ),
}
CHECK = (
    "x = torch.load(sys.argv[1] + '/sample_input.pt')\n"
    "want = torch.load(sys.argv[1] + '/expected_logits.pt')\n"
    "with torch.no_grad():\n    got = f(x)\n"
    "assert torch.equal(got.argmax(1), want.argmax(1))\n"
    "print(float((got - want).abs().max()))\n"
)


def test_export_formats_load_in_a_fresh_process(run_dir: Path) -> None:
    fresh = runner.invoke(app, ["export", str(run_dir), "--format", "state_dict"])
    if not (run_dir / "retrain.json").exists():
        assert fresh.exit_code == 2 and "no retrained model" in fresh.output
        assert runner.invoke(app, ["retrain", str(run_dir), "--epochs", "2"]).exit_code == 0
    formats = ["state_dict", "torchscript", "pt2"]
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        formats.append("onnx")
    except ImportError:
        pass
    for fmt in formats:
        result = runner.invoke(app, ["export", str(run_dir), "--format", fmt, "--json"])
        assert result.exit_code == 0, result.output
        card = json.loads(result.stdout)
        folder = run_dir / "export" / fmt
        assert card["export_check"]["max_abs_diff"] < 1e-4
        shape = json.loads((folder / "preprocess.json").read_text())["input_shape"]
        assert shape == [1, 16, 16]  # the default dataset, shifted-digits
        assert card["metrics"]["test_accuracy"] is not None
        done = subprocess.run(
            [sys.executable, "-c", LOADERS[fmt] + CHECK, str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert float(done.stdout) < 1e-4
    bad = runner.invoke(app, ["export", str(run_dir), "--format", "tflite"])
    assert bad.exit_code == 2 and "allowed: state_dict, torchscript, onnx, pt2" in bad.output
    nowhere = runner.invoke(app, ["export", str(run_dir / "nope"), "--format", "state_dict"])
    assert nowhere.exit_code == 2 and "is not a run directory (no run.sqlite)" in nowhere.output
    # a new retrain makes another model: the exports of the old one are set aside
    again = runner.invoke(app, ["retrain", str(run_dir), "--epochs", "1", "--fresh"])
    assert again.exit_code == 0, again.output
    assert not (run_dir / "export").exists()
    assert (run_dir / "export.previous" / "state_dict" / "model_card.json").is_file()
    assert not list((run_dir / "export").glob(".*.tmp"))
