"""How stable and how cheap the measurements are.

    python bench/measure.py [--repeats 30] [--candidates 5] [--threads 1 2] [--json]
                            [--codecarbon-python /path/to/venv/bin/python]

1. FPS stability: :func:`lemo_nade.engine.measure.measure_speed` run ``--repeats`` times
   on one fixed model (the default digits search's first candidate, paper Sec. 5.1, on
   the digits validation split) at each thread count. Reports the median FPS, the CV of
   the FPS over repeats (target <= 5 %), the median within-measurement CV (``fps_cv``,
   what a candidate records), batch-1 latency p50/p95 and the time one measurement takes.
   Once with the shortest budget the worker gives (a candidate that trains < 2 s) and
   once with the longest (one that trains >= 100 s); see ``measure.speed_budget_s``.
   "machine CV" is the CV of a fixed matrix-product loop of the same length timed right
   after each measurement: how much the machine itself drifts at that cadence, below
   which no FPS measurement can go.
2. Measuring overhead: ``--candidates`` real candidates (that model, the default search
   protocol: 20 epochs, batch 512) through the sandbox, as a search runs them. Overhead =
   the worker's ``measure_time_s`` (sensor set-up, FLOPs, FPS and latency) / the
   candidate's wall time seen by the parent (target <= 3 %). The energy spans' own cost
   is timed separately (enter + exit of a span, estimate only and with a fake 3-zone
   RAPL tree), since it is too small to see in a candidate's wall time.
3. Optional: codecarbon's ``OfflineEmissionsTracker`` start+stop in a fresh interpreter,
   with the given Python (codecarbon is not a dependency; see ``engine/energy.py``).

The machine's load average is printed before and after each part: timings on a shared
machine move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from lemo_nade import sandbox
from lemo_nade.architects.offline.arch import initial
from lemo_nade.architects.offline.render import render
from lemo_nade.engine import energy, measure
from lemo_nade.engine.data import make_split
from lemo_nade.engine.loaders import load
from lemo_nade.engine.sensors import ESTIMATE_ONLY, detect
from lemo_nade.engine.worker import _build, load_candidate
from lemo_nade.records import EvalJob, TaskSpec
from machine import conditions, describe, load_avg, load_text

TASK = TaskSpec("digits", (1, 8, 8), 10)

CODECARBON_SNIPPET = """
import json, time
w0, c0 = time.perf_counter(), time.process_time()
from codecarbon import OfflineEmissionsTracker
imported = time.perf_counter() - w0
t = OfflineEmissionsTracker(country_iso_code="USA", save_to_file=False, log_level="error",
                            measure_power_secs=15, tracking_mode="process")
s = time.perf_counter(); t.start(); t.stop(); first = time.perf_counter() - s
s = time.perf_counter(); t.start(); t.stop(); second = time.perf_counter() - s
print(json.dumps({"import_s": imported, "first_start_stop_s": first,
                  "second_start_stop_s": second, "cpu_s": time.process_time() - c0}))
"""


def load_now() -> str:
    return load_text(load_avg())


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def _fixed_work(threads: int, seconds: float) -> Callable[[], float]:
    """A fixed number of 256x256 matrix products, calibrated once to take ``seconds``;
    calling it returns how long they took this time."""
    x = torch.randn(256, 256)

    def timed(n: int) -> float:
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            start = time.perf_counter()
            for _ in range(n):
                x @ x
            return time.perf_counter() - start
        finally:
            torch.set_num_threads(old)

    timed(5)
    per_op = timed(50) / 50
    count = max(1, round(seconds / per_op))
    return lambda: timed(count)


def fps_stability(repeats: int, threads: list[int]) -> list[dict[str, Any]]:
    code = render(initial(TASK), TASK)
    torch.manual_seed(0)
    model = _build(load_candidate(code))
    split = make_split(load("digits", None), 0.1, 0)
    configs = {
        f"{label} budget {b * 1e3:.0f} ms": {"budget_s": b}
        for label, b in (
            ("floor", measure.MIN_SPEED_BUDGET_S),  # what a candidate of < 2 s training gets
            ("ceiling", measure.MAX_SPEED_BUDGET_S),  # what one of >= 100 s gets
        )
    }
    rows = []
    for n in threads:
        for label, kwargs in configs.items():
            before = load_now()
            fixed = _fixed_work(n, 0.7 * kwargs["budget_s"])
            runs, machine = [], []
            for _ in range(repeats):  # each measurement, then the same fixed work: its
                # spread is the machine's own at this cadence, the floor for the FPS CV
                runs.append(
                    measure.measure_speed(
                        model, split.x_val, 512, split.normalize, threads=n, **kwargs
                    )
                )
                machine.append(1 / fixed())
            fps = [r.fps for r in runs]
            rows.append(
                {
                    "threads": n,
                    "windows": label,
                    "batch": runs[0].fps_batch,
                    "median_fps": statistics.median(fps),
                    "cv_over_repeats": cv(fps),
                    "machine_cv": cv(machine),
                    "median_window_cv": statistics.median(r.fps_cv for r in runs),
                    "latency_ms_p50": statistics.median(r.latency_ms_p50 for r in runs),
                    "latency_ms_p95": statistics.median(r.latency_ms_p95 for r in runs),
                    "seconds_per_measurement": statistics.median(r.seconds for r in runs),
                    "repeats": repeats,
                    "load_before": before,
                    "load_after": load_now(),
                }
            )
    return rows


def candidate_overhead(candidates: int, threads: int) -> list[dict[str, Any]]:
    code = render(initial(TASK), TASK)
    job = EvalJob(code=code, dataset="digits", data_dir=None, epochs=20, threads=threads)
    rows = []
    box = sandbox.Sandbox()  # one fork server for every candidate, as in a run
    for _ in range(candidates):
        before = load_now()
        ev = box.evaluate(job, timeout_s=600)
        m = ev.metrics
        if m is None:
            raise SystemExit(f"candidate failed: {ev.status.value}: {ev.error}")
        rows.append(
            {
                "threads": m.threads,
                "candidate_s": ev.wall_time_s,
                "train_s": m.train_time_s,
                "measure_s": m.measure_time_s,
                "overhead": m.measure_time_s / ev.wall_time_s,
                "fps": m.F,
                "fps_cv": m.fps_cv,
                "flops_per_image": m.flops_per_image,
                "energy_source": m.energy_source,
                "load_before": before,
                "load_after": load_now(),
            }
        )
    box.close()
    return rows


def span_cost(spans: int = 2000) -> dict[str, float]:
    """Seconds per energy span (enter + exit, empty body), estimate-only and 3-zone RAPL."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, label in (
            ("intel-rapl:0", "package-0"),
            ("intel-rapl:1", "package-1"),
            ("intel-rapl:0:0", "dram"),
        ):
            (root / name).mkdir()
            (root / name / "name").write_text(label)
            (root / name / "energy_uj").write_text("123456789")
            (root / name / "max_energy_range_uj").write_text("262143328850")
        for label, sensors in (
            ("estimate", ESTIMATE_ONLY),
            ("rapl (fake tree, 3 zones)", detect(None, powercap_root=root)),
        ):
            start = time.perf_counter()
            for _ in range(spans):
                with energy.span(sensors, 10.0):
                    pass
            out[label] = (time.perf_counter() - start) / spans
    return out


def codecarbon_cost(python: str, runs: int = 3) -> list[dict[str, float]]:
    results = []
    for _ in range(runs):
        proc = subprocess.run(
            [python, "-c", CODECARBON_SNIPPET], capture_output=True, text=True, check=False
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"codecarbon run failed: {proc.stderr[-500:]}")
        results.append(json.loads(lines[-1]))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--candidates", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--codecarbon-python", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    doc: dict[str, Any] = {
        "machine": {
            **conditions(),
            "sensors": detect(None).sources(),
            "sensor_notes": list(detect(None).notes),
        },
        "fps_stability": fps_stability(args.repeats, sorted(set(args.threads))),
        "overhead": {
            str(n): candidate_overhead(args.candidates, n) for n in sorted(set(args.threads))
        },
        "span_cost_s": span_cost(),
    }
    if args.codecarbon_python:
        doc["codecarbon"] = codecarbon_cost(args.codecarbon_python)
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    show(doc)


def show(doc: dict[str, Any]) -> None:
    console = Console(width=160)
    machine = doc["machine"]
    console.print(describe(machine))
    console.print(f"sensors: {machine['sensors']}; notes: {machine['sensor_notes']}")
    console.print(stability_table(doc["fps_stability"]))
    console.print(overhead_table(doc["overhead"]))
    for label, seconds in doc["span_cost_s"].items():
        console.print(f"energy span enter+exit, {label}: {seconds * 1e6:.0f} µs")
    for r in doc.get("codecarbon", []):
        console.print(
            "codecarbon fresh process: import {import_s:.3f} s, first start+stop "
            "{first_start_stop_s:.3f} s, second {second_start_stop_s:.3f} s, "
            "CPU {cpu_s:.3f} s".format(**r)
        )


def stability_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="FPS stability (fixed model, digits validation split)")
    for col in (
        "threads",
        "windows",
        "batch",
        "median FPS",
        "CV over repeats",
        "machine CV",
        "median window CV",
        "p50 ms",
        "p95 ms",
        "s / measurement",
        "load before → after",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            str(r["threads"]),
            r["windows"],
            str(r["batch"]),
            f"{r['median_fps']:,.0f}",
            f"{r['cv_over_repeats']:.1%}",
            f"{r['machine_cv']:.1%}",
            f"{r['median_window_cv']:.1%}",
            f"{r['latency_ms_p50']:.3f}",
            f"{r['latency_ms_p95']:.3f}",
            f"{r['seconds_per_measurement']:.3f}",
            f"{r['load_before']} → {r['load_after']}",
        )
    return t


def overhead_table(overhead: dict[str, list[dict[str, Any]]]) -> Table:
    """One row per candidate, and per thread count the median overhead (a share of the
    candidate's wall time)."""
    t = Table(title="Measuring overhead per candidate (default digits candidate, 20 epochs)")
    for col in (
        "threads",
        "candidate s",
        "train s",
        "measure s",
        "overhead",
        "FPS",
        "FPS CV",
        "energy",
        "load before",
    ):
        t.add_column(col, justify="right")
    for rows in overhead.values():
        for r in rows:
            t.add_row(
                str(r["threads"]),
                f"{r['candidate_s']:.2f}",
                f"{r['train_s']:.2f}",
                f"{r['measure_s']:.3f}",
                f"{r['overhead']:.1%}",
                f"{r['fps']:,.0f}",
                f"{r['fps_cv']:.1%}",
                r["energy_source"],
                r["load_before"],
            )
        share = statistics.median(r["overhead"] for r in rows)
        t.add_row("", "", "", "median", f"{share:.1%}", "", "", "", "", style="bold")
    return t


if __name__ == "__main__":
    main()
