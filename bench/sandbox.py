"""Per-candidate cost of the sandbox, beside the cost of a fresh ``import torch``.

    python bench/sandbox.py [--repeats 30] [--hygiene 100]

What it measures, on this machine, with wall clocks (``time.perf_counter``) in this
process around each call, medians over ``--repeats`` runs after one warm-up:

- ``python -c "import torch"``: a fresh interpreter importing torch (what each candidate
  paid before the fork server), via ``subprocess.run``;
- the sandbox overhead of one candidate: ``Sandbox.evaluate`` on a small CNN whose
  output has the wrong shape, so the call does everything but train: policy check,
  temp dir, fork (server -> child -> namespace init -> candidate), confinement, exec of
  the code, ``Net()``, loading the digits data, the forward on a dummy batch, the result
  file, teardown and temp dir removal. Through the fork server and, for comparison,
  with a fresh interpreter per candidate (``fresh_process=True``);
- the same for a candidate that fails at once (no data loading or forward): the bare
  start/teardown cost;
- a full 1-epoch digits candidate, and its wall time minus its own train and
  validation spans (what is left: the sandbox, data loading, the shape check, the
  train-set accuracy A1 and the FPS measurement);
- hygiene: ``--hygiene`` more candidates, then this process's child processes, open
  files, RSS, and the fork server's RSS before and after.

The machine is shared (load from other work shows in the spread: p90 is printed too, and
the load average at the start and at the end).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lemo_nade import sandbox
from lemo_nade.records import EvalJob, Status
from machine import conditions, describe, load_change

SMALL_CNN = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.head(x.flatten(1))
"""
WRONG_SHAPE = SMALL_CNN.replace("return self.head(x.flatten(1))", "return x.flatten(1)")
FAILS_AT_ONCE = "class Net:\n    def __init__(self):\n        raise ValueError('stop')\n"


def job(code: str, epochs: int = 1) -> EvalJob:
    return EvalJob(code=code, dataset="digits", data_dir=None, epochs=epochs, batch_size=64)


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> str:
    p90 = sorted(times)[max(0, round(0.9 * len(times)) - 1)]
    return f"median {statistics.median(times):6.3f} s   p90 {p90:6.3f} s   (n={len(times)})"


def expect(
    box: sandbox.Sandbox, status: Status, code: str, fresh: bool = False
) -> Callable[[], object]:
    def run() -> object:
        evaluation = box.evaluate(job(code), timeout_s=120, fresh_process=fresh)
        if evaluation.status is not status:
            sys.exit(f"unexpected {evaluation.status}: {evaluation.error}")
        return evaluation

    return run


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            kids = [
                int(p) for p in Path(f"/proc/{current}/task/{current}/children").read_text().split()
            ]
        except OSError:
            kids = []
        found += kids
        todo += kids
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--fresh-repeats", type=int, default=5)
    parser.add_argument("--hygiene", type=int, default=100)
    args = parser.parse_args()
    with sandbox.Sandbox() as box:  # one fork server for the whole benchmark, like a run
        measure(box, args)


def measure(box: sandbox.Sandbox, args: argparse.Namespace) -> None:
    before = conditions()
    print(describe(before))
    start = time.perf_counter()
    features = box.isolation()
    print(f"fork server start (import torch + probe): {time.perf_counter() - start:.2f} s")
    print("isolation:\n  " + features.describe().replace("\n", "\n  "))
    print()

    import_torch = timed(
        lambda: subprocess.run([sys.executable, "-c", "import torch"], check=True),
        args.fresh_repeats,
    )
    print(f"fresh `python -c 'import torch'`          {summary(import_torch)}")
    shape = timed(expect(box, Status.FAILED_SHAPE, WRONG_SHAPE), args.repeats)
    print(f"candidate to shape check, fork server    {summary(shape)}")
    bare = timed(expect(box, Status.FAILED_BUILD, FAILS_AT_ONCE), args.repeats)
    print(f"candidate failing at once, fork server   {summary(bare)}")
    fresh = timed(expect(box, Status.FAILED_SHAPE, WRONG_SHAPE, fresh=True), args.fresh_repeats)
    print(f"candidate to shape check, fresh python   {summary(fresh)}")

    rests, walls = [], []
    for _ in range(max(3, args.fresh_repeats)):
        evaluation = box.evaluate(job(SMALL_CNN), timeout_s=300)
        assert evaluation.status is Status.OK and evaluation.metrics is not None
        metrics = evaluation.metrics
        walls.append(evaluation.wall_time_s)
        rests.append(evaluation.wall_time_s - metrics.train_time_s - metrics.eval_time_s)
    print(f"1-epoch digits candidate, wall           {summary(walls)}")
    print(f"  minus train and val spans (A1, FPS...) {summary(rests)}")
    print()

    if args.hygiene:
        hygiene(box, args.hygiene)
    print(load_change(before, conditions()))


def resources(server: int) -> tuple[float, ...]:
    """This process's child processes and open fds, its RSS and the server's (MB)."""
    return (
        len(descendants(os.getpid())),
        len(os.listdir("/proc/self/fd")),
        rss_mb(os.getpid()),
        rss_mb(server),
    )


def hygiene(box: sandbox.Sandbox, candidates: int) -> None:
    """Whether ``candidates`` more leave processes, fds or memory behind."""
    server = box.server_pid()
    assert server is not None
    before = resources(server)
    start = time.perf_counter()
    statuses = {expect(box, Status.FAILED_SHAPE, WRONG_SHAPE)() and "ok" for _ in range(candidates)}
    elapsed = time.perf_counter() - start
    after = resources(server)
    print(f"hygiene: {candidates} candidates in {elapsed:.1f} s {sorted(statuses)}")
    labels = ("child processes", "open fds", "this process RSS MB", "fork server RSS MB")
    for label, b, a in zip(labels, before, after, strict=True):
        print(f"  {label:22s} before {b:8.1f}   after {a:8.1f}")


if __name__ == "__main__":
    main()
