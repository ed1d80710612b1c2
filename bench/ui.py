"""How light `lemo-nade ui` is: the page of a 1,000-iteration run, and the server's CPU
while a page watches a run.

    python bench/ui.py [--iterations 1000] [--loads 10] [--watch-s 60] [--json out.json]

It writes a run of ``--iterations`` made-up iterations (a fifth failed, random parents
and sizes) to a temporary directory, serves it with ``lemo-nade ui`` in a subprocess,
and drives headless Chromium (Debian's ``chromium`` and ``chromium-driver``, through
Selenium) at 1280x900:

- **page load**: from navigation to the first frame drawn after the table's rows and the
  lineage's last node exist, ``--loads`` times (the first in a new browser);
- **idle watching**: the server's CPU time (``/proc/PID/stat``) while the page stays open
  ``--watch-s`` seconds on the finished run, polling once a second, as a percentage of
  one core.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lemo_nade.config import build_config
from lemo_nade.history import IterationRecord
from lemo_nade.records import Evaluation, Metrics, Status
from lemo_nade.store import RunStore
from machine import conditions, describe

DRAWN = """
const rows = arguments[0], nodes = arguments[1], done = arguments[2];
(function wait() {
  const ready = document.querySelectorAll('#iterations tbody tr').length >= rows &&
    document.querySelectorAll('#plots svg:last-child circle').length >= nodes;
  if (ready) requestAnimationFrame(() => setTimeout(() => done(performance.now()), 0));
  else setTimeout(wait, 5);
})();"""


def make_run(path: Path, n: int) -> None:
    rng = random.Random(0)
    with RunStore.create(path, build_config({"iterations": n}).model_dump_json()) as store:
        for i in range(n):
            failed = i > 0 and rng.random() < 0.2
            acc, size = rng.uniform(0.1, 0.9), rng.randrange(1000, 10**6)
            metrics = Metrics(A1=acc + 0.01, A2=acc, E1=1e-5 * (i + 1), E2=1e-8, F=1000.0 + i,
                              P=size, val_images=100)  # fmt: skip
            evaluation = Evaluation(Status.OK, metrics, wall_time_s=1.0)
            if failed:
                evaluation = Evaluation(Status.FAILED_SHAPE, error="shape (2, 7) != (2, 10)")
            store.record_iteration(IterationRecord(
                idx=i, started_at=1000.0 + 10 * i, finished_at=1009.0 + 10 * i,
                parent_idx=rng.randrange(i) if i else None, architect="offline",
                prompt_instructions=(("ACL", 0.5), ("ADL", 0.3)) if i else (),
                code=f"class Net:  # candidate {i}\n    pass\n", state=None, notes="",
                evaluation=evaluation, cm=None if failed else 2 * acc,
            ))  # fmt: skip
        store.set_status("finished", "iterations")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, clock ticks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--loads", type=int, default=10)
    parser.add_argument("--watch-s", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    from selenium import webdriver

    before = conditions()
    with tempfile.TemporaryDirectory(prefix="lemo-bench-ui-") as tmp:
        make_run(Path(tmp) / "runs" / "big", args.iterations)
        command = [sys.executable, "-m", "lemo_nade", "ui", str(Path(tmp) / "runs")]
        server = subprocess.Popen(
            [*command, "--port", str(args.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{args.port}"
        options = webdriver.ChromeOptions()
        for flag in ("--headless=new", "--no-sandbox", "--window-size=1280,900"):
            options.add_argument(flag)
        try:
            for _ in range(100):  # the server is up
                try:
                    urllib.request.urlopen(base + "/api/runs", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            service = webdriver.ChromeService(shutil.which("chromedriver"))
            driver = webdriver.Chrome(options=options, service=service)
            driver.set_script_timeout(60)
            loads = []
            n = args.iterations  # the rows of the latest page of 100
            rows = n if n <= 100 else (n % 100 or 100)
            for _ in range(args.loads):
                driver.get("about:blank")
                driver.get(f"{base}/run?run=0/big")
                loads.append(driver.execute_async_script(DRAWN, rows, args.iterations) / 1000)
            start_cpu, start = cpu_s(server.pid), time.monotonic()
            time.sleep(args.watch_s)
            idle = (cpu_s(server.pid) - start_cpu) / (time.monotonic() - start)
            driver.quit()
        finally:
            server.terminate()
            server.wait()
    result = {"iterations": args.iterations, "loads_s": loads,
              "load_median_s": statistics.median(loads), "load_max_s": max(loads),
              "idle_cpu_percent_of_one_core": 100 * idle, "watch_s": args.watch_s,
              "conditions": {"before": before, "after": conditions()}}  # fmt: skip
    print(describe(before, result["conditions"]["after"]))
    print(f"page of a {args.iterations}-iteration run, {args.loads} loads: median "
          f"{result['load_median_s']:.3f} s, max {result['load_max_s']:.3f} s "
          f"({', '.join(f'{x:.2f}' for x in loads)})")  # fmt: skip
    print(
        f"server CPU while a page watched the run {args.watch_s:.0f} s: "
        f"{result['idle_cpu_percent_of_one_core']:.2f}% of one core"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
