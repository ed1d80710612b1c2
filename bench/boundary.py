"""What the trust boundary costs: the split search protocol (train in the candidate's
process, measure in a fresh one) against the one-process protocol it replaced.

    python bench/boundary.py [--candidates 12] [--runs 2] [--iterations 10]

Per candidate: ``Sandbox.evaluate`` on the offline architect's first digits model and
its first edits (the default run's candidates), the two protocols interleaved (ABAB...)
in one sandbox each, so machine drift hits both alike; the median of the paired
differences and of the ratios is printed, with the spread (min..max).

Per run: the default ``lemo-nade run`` (digits, 10 iterations) end to end, once per
protocol and per ``--runs``, interleaved, wall time of the whole command.

``LEMO_NADE_SPLIT=0`` selects the one-process protocol (comparison only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lemo_nade.architects.offline.arch import initial
from lemo_nade.architects.offline.render import render
from lemo_nade.records import EvalJob, Status, TaskSpec
from lemo_nade.sandbox import Sandbox
from lemo_nade.sandbox.split import SPLIT_ENV
from machine import conditions, describe

TASK = TaskSpec("digits", (1, 8, 8), 10)


def candidate_codes(n: int) -> list[str]:
    """The offline architect's initial digits model, n times (its edits change little
    of the protocol's cost; the model is what a default run trains first)."""
    return [render(initial(TASK), TASK)] * n


def per_candidate(n: int, epochs: int) -> dict[str, object]:
    codes = candidate_codes(n)
    times: dict[str, list[float]] = {"split": [], "one": []}
    with Sandbox() as box:
        for i, code in enumerate([codes[0], *codes]):  # the first pair warms both up
            for mode in ("split", "one") if i % 2 else ("one", "split"):
                os.environ[SPLIT_ENV] = "1" if mode == "split" else "0"
                job = EvalJob(code=code, dataset="digits", data_dir=None, epochs=epochs)
                start = time.perf_counter()
                evaluation = box.evaluate(job, timeout_s=300)
                elapsed = time.perf_counter() - start
                if evaluation.status is not Status.OK:
                    raise SystemExit(f"{mode}: {evaluation.status.value}: {evaluation.error}")
                if i:
                    times[mode].append(elapsed)
    os.environ.pop(SPLIT_ENV, None)
    diffs = [s - o for s, o in zip(times["split"], times["one"], strict=True)]
    ratios = [s / o for s, o in zip(times["split"], times["one"], strict=True)]
    return {
        "candidates": n,
        "epochs": epochs,
        "split_median_s": statistics.median(times["split"]),
        "one_median_s": statistics.median(times["one"]),
        "added_median_s": statistics.median(diffs),
        "added_min_s": min(diffs),
        "added_max_s": max(diffs),
        "ratio_median": statistics.median(ratios),
    }


def whole_runs(runs: int, iterations: int) -> dict[str, object]:
    seconds: dict[str, list[float]] = {"split": [], "one": []}
    for i in range(runs):
        for mode in ("split", "one") if i % 2 == 0 else ("one", "split"):
            env = {**os.environ, SPLIT_ENV: "1" if mode == "split" else "0"}
            with tempfile.TemporaryDirectory() as runs_dir:
                command = [
                    sys.executable, "-m", "lemo_nade", "run", "--runs-dir", runs_dir,
                    "--iterations", str(iterations), "--json",
                ]  # fmt: skip
                start = time.perf_counter()
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                seconds[mode].append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise SystemExit(f"{mode} run failed: {done.stderr[-2000:]}")
    ratio = statistics.median(seconds["split"]) / statistics.median(seconds["one"])
    return {"runs": runs, "iterations": iterations, **seconds, "ratio_of_medians": ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=20, help="the default run's 20")
    parser.add_argument("--runs", type=int, default=2, help="whole runs per protocol")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    before = conditions()
    result = {"per_candidate": per_candidate(args.candidates, args.epochs)}
    if args.runs:
        result["whole_run"] = whole_runs(args.runs, args.iterations)
    result["conditions"] = {"before": before, "after": conditions()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(describe(before, result["conditions"]["after"]))
    c = result["per_candidate"]
    print(
        f"per candidate ({c['candidates']} pairs, {c['epochs']} epochs, digits): split "
        f"{c['split_median_s']:.2f} s, one-process {c['one_median_s']:.2f} s; added "
        f"{c['added_median_s']:+.2f} s median ({c['added_min_s']:+.2f}..{c['added_max_s']:+.2f}),"
        f" ratio {c['ratio_median']:.2f}  [target: +0.5 s at most]"
    )
    if "whole_run" in result:
        w = result["whole_run"]
        print(
            f"default run ({w['iterations']} iterations): split "
            f"{', '.join(f'{s:.1f}' for s in w['split'])} s, one-process "
            f"{', '.join(f'{s:.1f}' for s in w['one'])} s; ratio of medians "
            f"{w['ratio_of_medians']:.3f}  [target: 1.15 at most]"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
