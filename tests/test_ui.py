"""`lemo-nade ui`: the JSON endpoints against real run stores (made by hand, no training),
the security headers, the loopback binding, hostile text, live updates and bad input.
The page in a real browser is in test_ui_browser.py, which shares this file's helpers."""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lemo_nade.cli import app
from lemo_nade.config import build_config
from lemo_nade.history import Attempt, IterationRecord
from lemo_nade.records import Evaluation, Status
from lemo_nade.store import DB_NAME, RunStore
from lemo_nade.sweeps.plan import PLAN_FORMAT, PLAN_NAME
from lemo_nade.ui import DashboardServer, make_server, readonly
from lemo_nade.usage import LLMCall, Usage
from test_report import CHAIN, make_run, record

runner = CliRunner()
HOSTILE = "<script>alert('x')</script> \x1b[31mred\x1b[0m &amp; done\x07"


def hostile_record(idx: int, parent: int | None) -> IterationRecord:
    """A failed candidate whose error, notes and LLM exchange are attacker-chosen text."""
    call = LLMCall(
        iteration=idx,
        attempt=0,
        usage=Usage(calls=1, total_tokens=10),
        payload={
            "request": {"messages": [{"role": "user", "content": "write <b>Net</b>"}]},
            "response": {"text": "```python\n" + HOSTILE + "\n```"},
        },
    )
    base = record(idx, parent, None)
    return dataclasses.replace(
        base,
        evaluation=Evaluation(Status.FAILED_TRAIN, error=HOSTILE, log_tail=HOSTILE),
        notes=HOSTILE,
        attempts=(Attempt(0, Status.FAILED_TRAIN, error=HOSTILE),),
        calls=(call,),
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "runs" / "run-a", [*CHAIN, hostile_record(5, 4)], llm="offline")


class Client:
    """A server on 127.0.0.1 and a free port, served from a thread, and GETs against it."""

    def __init__(self, server: DashboardServer) -> None:
        self.server = server
        self.port = server.server_address[1]

    def get(self, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Host": host} if host else {}
        conn.request("GET", path, headers=headers)
        res = conn.getresponse()
        body = res.read()
        conn.close()
        return res.status, dict(res.getheaders()), body

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, body
        return json.loads(body)


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[DashboardServer] = []

    def start(*dirs: Path) -> Client:
        server = make_server(list(dirs), "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
        servers.append(server)
        return Client(server)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def run_key(client: Client) -> str:
    (row,) = client.json("/api/runs")["runs"]
    return str(row["key"])


# -- endpoints -----------------------------------------------------------------------------


def test_runs_list_shows_status_progress_best_and_energy(run_dir: Path, serve: Any) -> None:
    client = serve(run_dir.parent)  # a directory of runs
    doc = client.json("/api/runs")
    (row,) = doc["runs"]
    assert row["key"] == "0/run-a"
    assert row["status"] == "finished"
    assert (row["dataset"], row["architect"], row["setting"]) == ("shifted-digits", "offline", 1)
    assert (row["iterations_done"], row["iterations_planned"]) == (6, 6)
    assert (row["best_iteration"], row["best_cm"], row["best_accuracy"]) == (3, 1.8, 0.9)
    assert row["energy_kwh_pue"] > 0 and row["energy_source"] == "estimate"
    assert doc["sweeps"] == []
    # the run directory itself works too
    assert serve(run_dir).json("/api/runs")["runs"][0]["run_id"] == "run-a"


def test_run_page_rows_pareto_and_lineage(run_dir: Path, serve: Any) -> None:
    client = serve(run_dir.parent)
    doc = client.json("/api/run?run=0/run-a")
    assert [r["iteration"] for r in doc["rows"]] == [0, 1, 2, 3, 4, 5]
    best = doc["rows"][3]
    assert best["best"] and best["A2"] == 0.9 and best["P"] == 20000 and best["CM"] == 1.8
    assert best["energy_source"] == "estimate" and best["instructions_in"] == ["ASC"]
    assert doc["rows"][2]["status"] == "failed_shape" and doc["rows"][2]["A2"] is None
    assert doc["pareto"] == [0, 1, 3]
    assert [(n["child"], n["parent"]) for n in doc["lineage"]][:3] == [(0, None), (1, 0), (2, 1)]
    assert doc["run"]["status"] == "finished"


def test_iteration_detail_has_code_diff_error_and_llm_exchange(run_dir: Path, serve: Any) -> None:
    client = serve(run_dir.parent)
    first = client.json("/api/iteration?run=0/run-a&i=0")
    assert first["diff"] is None and "candidate 0" in first["code"]
    doc = client.json("/api/iteration?run=0/run-a&i=5")
    assert doc["parent"] == 4
    assert (
        "-class Net:  # candidate 4" in doc["diff"] and "+class Net:  # candidate 5" in doc["diff"]
    )
    assert doc["calls"][0]["prompt"] == [{"role": "user", "content": "write <b>Net</b>"}]
    assert doc["calls"][0]["answer"].startswith("```python\n<script>")
    assert client.get("/api/iteration?run=0/run-a&i=99")[0] == 404
    assert client.get("/api/iteration?run=0/run-a&i=x")[0] == 404


def test_hostile_text_is_escaped_and_stripped(run_dir: Path, serve: Any) -> None:
    client = serve(run_dir.parent)
    for path in ("/api/run?run=0/run-a", "/api/iteration?run=0/run-a&i=5"):
        status, headers, body = client.get(path)
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert b"<script>" not in body and b"\\u003cscript\\u003e" in body  # never HTML
        assert b"\\u001b" not in body and b"[31m" not in body  # terminal sequences gone
    detail = client.json("/api/iteration?run=0/run-a&i=5")
    shown = "<script>alert('x')</script> red &amp; done\\x07"  # as written, bell visible
    assert detail["error"] == detail["notes"] == detail["log_tail"] == shown
    assert detail["attempts"][0]["error"] == shown
    assert client.json("/api/run?run=0/run-a")["rows"][5]["error"] == shown


def test_security_headers_on_every_response(run_dir: Path, serve: Any) -> None:
    client = serve(run_dir.parent)
    for path in ("/", "/run?run=0/run-a", "/static/app.js", "/api/runs", "/nowhere"):
        _, headers, _ = client.get(path)
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
    _, headers, page = client.get("/")
    assert headers["Content-Type"].startswith("text/html")
    assert b"<script>" not in page and b'src="/static/app.js"' in page  # no inline script
    assert b"http" not in page  # nothing fetched from elsewhere
    for name in ("app.js", "plots.js", "detail.js", "style.css"):
        status, _, body = client.get(f"/static/{name}")
        assert status == 200 and b"innerHTML" not in body and b"https://" not in body


def test_unknown_paths_keys_and_hosts_are_refused(run_dir: Path, serve: Any) -> None:
    client = serve(run_dir.parent)
    for path in (
        "/static/../__init__.py",
        "/static/index.html/../../server.py",
        "/api/run?run=../../etc",
        "/api/run?run=0/../run-a",
        "/api/sweep?sweep=0/",
        "/api/nothing?run=0/run-a",
    ):
        assert client.get(path)[0] == 404, path
    assert client.get("/api/runs", host="localhost:1")[0] == 200
    assert client.get("/api/runs", host="evil.example:8765")[0] == 421  # DNS rebinding


def test_idle_polls_answer_small_and_reread_nothing(
    run_dir: Path, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = serve(run_dir.parent)
    doc = client.json("/api/run?run=0/run-a")
    loads: list[Path] = []
    real = readonly.load_readonly
    monkeypatch.setattr(readonly, "load_readonly", lambda d: loads.append(d) or real(d))
    for _ in range(5):
        _, _, body = client.get(f"/api/run?run=0/run-a&v={doc['version']}")
        assert json.loads(body) == {"version": doc["version"], "unchanged": True}
        assert len(body) < 100
        client.json("/api/run?run=0/run-a")  # a full answer, from the cache
    assert loads == []


def test_a_committed_iteration_changes_the_version(run_dir: Path, serve: Any) -> None:
    client = serve(run_dir.parent)
    before = client.json("/api/run?run=0/run-a")
    with RunStore.open(run_dir, writer=True) as store:
        store.set_status("running")
        assert client.json("/api/run?run=0/run-a")["run"]["status"] == "running"
        store.record_iteration(record(6, 3, 0.95, params=15000))
        after = client.json(f"/api/run?run=0/run-a&v={before['version']}")
        assert after["version"] != before["version"]
        assert after["rows"][-1]["iteration"] == 6 and after["rows"][-1]["best"]
    # the writer died without a word: the run reads as interrupted
    assert client.json("/api/run?run=0/run-a")["run"]["status"] == "interrupted"


def test_the_store_is_opened_read_only(run_dir: Path, serve: Any) -> None:
    db, wal = run_dir / DB_NAME, run_dir / (DB_NAME + "-wal")
    before = (db.stat().st_mtime_ns, db.stat().st_size, db.read_bytes())
    serve(run_dir).json("/api/run?run=0/")
    assert (db.stat().st_mtime_ns, db.stat().st_size, db.read_bytes()) == before
    assert not wal.exists() or wal.stat().st_size == 0  # nothing was written
    conn = readonly.connect_readonly(db)
    with pytest.raises(Exception, match="readonly"):
        conn.execute("UPDATE runs SET status = 'x'")
    conn.close()


def make_sweep(sweep_dir: Path) -> Path:
    """A sweep directory as `lemo-nade sweep` leaves it: a plan, one run done, one not."""
    cfg = build_config({"iterations": 5, "epochs": 1}).model_dump(mode="json")
    runs = [{"name": f"setting={s}", "axes": {"setting": s}, "config": cfg} for s in (1, 2)]
    doc = {"format": PLAN_FORMAT, "source": "x.toml", "axes": {"setting": [1, 2]}, "runs": runs}
    sweep_dir.mkdir(parents=True)
    (sweep_dir / PLAN_NAME).write_text(json.dumps(doc))
    make_run(sweep_dir / "runs" / "setting=1", CHAIN, setting=1)
    return sweep_dir


def test_sweep_page_has_one_row_per_planned_run(tmp_path: Path, serve: Any) -> None:
    client = serve(make_sweep(tmp_path / "sweeps" / "s1"))
    doc = client.json("/api/runs")
    assert [s["key"] for s in doc["sweeps"]] == ["0/"]
    assert [r["key"] for r in doc["runs"]] == ["0//setting=1", "0//setting=2"]
    sweep = client.json("/api/sweep?sweep=0/")
    assert sweep["axes"] == ["setting"]
    done, pending = sweep["rows"]
    assert done["run"] == "setting=1" and done["setting"] == 1 and done["status"] == "finished"
    assert done["best_accuracy"] == 0.9
    assert pending["status"] == "pending"
    assert client.json("/api/run?run=0//setting=2")["rows"] == []


def test_sweep_page_has_the_paper_table(tmp_path: Path, serve: Any) -> None:
    client = serve(make_sweep(tmp_path / "sweeps" / "s1"))
    done, pending = client.json("/api/sweep?sweep=0/")["rows"]
    paper = done["paper"]
    # reporting.data.paper_row: the best candidate (#3), search time and energy (no retrain)
    assert paper["validation_accuracy"] == 0.9 and paper["params"] == 20000
    assert paper["test_accuracy"] is None and paper["includes_retrain"] is False
    assert paper["hours"] == pytest.approx(45 / 3600) and paper["fps"] == 4000.0
    assert paper["kwh_pue"] == pytest.approx(done["energy_kwh_pue"]) and paper["kwh_pue"] > 0
    assert paper["co2_lbs"] > 0 and paper["inference_kwh_pue_per_image"] > 0
    assert pending["paper"] is None


# -- cost, ETA, budgets, retrain -----------------------------------------------------------


def test_llm_cost_and_eta_of_a_running_run(tmp_path: Path, serve: Any) -> None:
    run = make_run(tmp_path / "runs" / "run-b", CHAIN, iterations=10)  # 5 of 10 done
    client = serve(run.parent)
    row = client.json("/api/runs")["runs"][0]
    assert row["llm_cost_usd"] == pytest.approx(0.05)  # 5 calls at $0.01
    assert row["eta_s"] is None  # finished: no ETA
    with RunStore.open(run, writer=True) as store:
        store.set_status("running")
        row = client.json("/api/runs")["runs"][0]
        assert row["eta_s"] == pytest.approx(9.0 * 5)  # 9 s per iteration x 5 left
        assert client.json("/api/run?run=0/run-b")["run"]["eta_s"] == pytest.approx(45.0)


def test_no_llm_calls_means_no_cost(tmp_path: Path, serve: Any) -> None:
    recs = [dataclasses.replace(r, usage=None) for r in CHAIN]
    client = serve(make_run(tmp_path / "runs" / "run-c", recs))
    assert client.json("/api/runs")["runs"][0]["llm_cost_usd"] is None


def test_run_page_budgets_used_over_limit(tmp_path: Path, serve: Any) -> None:
    budgets = {"max_hours": 2.0, "max_tokens": 1000, "max_cost_usd": 0.5}
    client = serve(make_run(tmp_path / "runs" / "run-d", CHAIN, **budgets))
    doc = client.json("/api/run?run=0/")
    by_name = {b["budget"]: b for b in doc["budgets"]}
    assert list(by_name) == ["max_hours", "max_tokens", "max_cost_usd"]  # only those set
    assert by_name["max_hours"]["used"] == pytest.approx(45 / 3600)
    assert by_name["max_tokens"]["used"] == 250 and by_name["max_tokens"]["limit"] == 1000
    assert by_name["max_tokens"]["fraction"] == pytest.approx(0.25)
    assert by_name["max_cost_usd"]["used"] == pytest.approx(0.05)
    assert by_name["max_cost_usd"]["unit"] == "USD"
    assert client.json("/api/run?run=0/")["retrain"] is None
    assert serve(make_run(tmp_path / "other", CHAIN)).json("/api/run?run=0/")["budgets"] == []


def test_run_page_shows_retrain_and_exports(run_dir: Path, serve: Any) -> None:
    client = serve(run_dir)
    before = client.json("/api/run?run=0/")
    assert before["retrain"] is None
    retrain = {"test_accuracy": 0.91, "iteration": 3, "epochs": 12, "best_epoch": 9, "hours": 0.5}
    (run_dir / "retrain.json").write_text(json.dumps(retrain))
    doc = client.json(f"/api/run?run=0/&v={before['version']}")
    assert doc["retrain"]["test_accuracy"] == 0.91 and doc["retrain"]["iteration"] == 3
    assert (doc["retrain"]["epochs"], doc["retrain"]["best_epoch"]) == (12, 9)
    assert doc["retrain"]["exports"] == []
    (run_dir / "export" / "onnx").mkdir(parents=True)
    (run_dir / "export" / "onnx" / "export.json").write_text("{}")
    (run_dir / "export" / "pt2").mkdir()  # unfinished: no export.json
    after = client.json(f"/api/run?run=0/&v={doc['version']}")  # an export changes the version
    assert after["retrain"]["exports"] == ["onnx"]
    # a retrain file with a bad value is not half-read (as in a report); the run still shows
    (run_dir / "retrain.json").write_text(json.dumps({**retrain, "best_epoch": "x"}))
    fresh = serve(run_dir)  # a new cache: the rewrite may share the old file's mtime
    page = fresh.json("/api/run?run=0/")
    assert page["retrain"] is None and len(page["rows"]) > 0


# -- the command ---------------------------------------------------------------------------


def test_default_binding_is_loopback(run_dir: Path) -> None:
    server = make_server([run_dir])
    try:
        assert server.server_address[:2] == ("127.0.0.1", 8765)
        assert server.url == "http://127.0.0.1:8765/"
    finally:
        server.server_close()


def test_command_serves_and_warns_off_loopback(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lemo_nade.ui as ui

    asked: list[tuple[str, int]] = []

    def fake(dirs: list[Path], host: str = "127.0.0.1", port: int = 8765) -> DashboardServer:
        asked.append((host, port))
        server = make_server(dirs, "127.0.0.1", 0)  # tests never listen elsewhere
        monkeypatch.setattr(
            server, "serve_forever", lambda **_: (_ for _ in ()).throw(KeyboardInterrupt)
        )
        return server

    monkeypatch.setattr(ui, "make_server", fake)
    result = runner.invoke(app, ["ui", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "dashboard: http://127.0.0.1:" in result.output and "warning" not in result.output
    result = runner.invoke(app, ["ui", str(run_dir), "--host", "0.0.0.0", "--port", "9000"])
    assert "warning: listening on 0.0.0.0" in result.output
    assert asked == [("127.0.0.1", 8765), ("0.0.0.0", 9000)]


@pytest.mark.parametrize("what", ["missing", "file", "junk"])
def test_bad_directories_are_one_line_and_exit_2(tmp_path: Path, what: str) -> None:
    path = tmp_path / what
    if what == "file":
        path.write_text("x")
    elif what == "junk":
        path.mkdir()
        (path / "notes.txt").write_text("x")
    result = runner.invoke(app, ["ui", str(path), "--port", "0"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
