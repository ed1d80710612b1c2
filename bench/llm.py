"""How well a real LLM drives the search: valid candidates, repairs, instruction following.

    python bench/llm.py --base-url http://127.0.0.1:8080/v1 --model qwen2.5-coder-0.5b \\
        [--dataset digits] [--dataset cifar10:../shared/data/cifar-10-subset] \\
        [--setting 1 --setting 2] [--iterations 10] [--epochs 2] [--temperature 0] \\
        [--json results.json]

For each dataset and setting it runs ``lemo-nade run --llm openai:MODEL`` end to end,
exactly as a user would (the endpoint from ``OPENAI_BASE_URL``), then reads the run's
store and prints, per run: the valid-candidate rate per attempt and per iteration, the
repairs needed, failure statuses by kind, the answers the normaliser tidied, tokens in
and out, seconds per answer and per iteration, and the instruction-following rate
(resolved instructions judged ``followed`` / ``not followed``, unknowns apart).

Any OpenAI-compatible endpoint works (llama.cpp, Ollama, vLLM, a hosted API with
``OPENAI_API_KEY``). The project's development machine serves a local model with
``../shared/tools/local-llm-serve PORT``; nothing here depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rich.console import Console
from rich.table import Table

from lemo_nade.store import RunStore
from llm_stats import rate, summarise
from machine import conditions, describe


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = _reachable(args.base_url)
    if problem:
        print(f"bench/llm.py: {problem}", file=sys.stderr)
        return 2
    before = conditions()
    results = []
    with tempfile.TemporaryDirectory(prefix="lemo-bench-llm-") as tmp:
        runs_dir = Path(args.runs_dir or tmp)
        for dataset in args.dataset or ["digits"]:
            for setting in args.setting or [1]:
                results.append(run_case(args, dataset, setting, runs_dir))
                print_case(results[-1])
    report = {"conditions": {"before": before, "after": conditions()}, "model": args.model,
              "base_url": args.base_url, "cases": results}  # fmt: skip
    Console().print(describe(before, report["conditions"]["after"]))
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"), required=False)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--dataset", action="append", help="NAME or NAME:DATA_DIR (repeatable)")
    parser.add_argument("--setting", action="append", type=int, help="paper Table 4, 1-5")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config key for every run (repeatable), e.g. max_instructions=1",
    )
    parser.add_argument("--runs-dir", help="keep the run directories here (default: removed)")
    parser.add_argument("--json", help="write every figure to this file")
    return parser


def _reachable(base_url: str | None) -> str | None:
    if not base_url:
        return "no endpoint: pass --base-url or set OPENAI_BASE_URL"
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=10):
            return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"the endpoint {base_url} does not answer ({exc})"


def run_case(
    args: argparse.Namespace, dataset: str, setting: int, runs_dir: Path
) -> dict[str, Any]:
    name, _, data_dir = dataset.partition(":")
    command = [
        sys.executable, "-m", "lemo_nade", "run", "--llm", f"openai:{args.model}",
        "--dataset", name, "--setting", str(setting), "--iterations", str(args.iterations),
        "--epochs", str(args.epochs), "--temperature", str(args.temperature),
        "--seed", str(args.seed), "--runs-dir", str(runs_dir), "--json",
    ]  # fmt: skip
    if data_dir:
        command += ["--data-dir", data_dir]
    for item in args.set:
        command += ["--set", item]
    env = {**os.environ, "OPENAI_BASE_URL": args.base_url}
    env.setdefault("OPENAI_API_KEY", "local")
    print(f"running {name}, setting {setting}: {' '.join(command[2:])}", file=sys.stderr)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    case: dict[str, Any] = {"dataset": name, "setting": setting, "wall_s": wall,
                            "exit": done.returncode, "set": args.set}  # fmt: skip
    run_dir = _run_dir(done.stdout, runs_dir)
    if run_dir is None:
        case["error"] = (done.stderr.strip().splitlines() or ["no run directory"])[-1]
        return case
    store = RunStore.open(run_dir)
    try:
        case |= summarise(store.iterations())
        case["run_status"] = store.status()[0]
    finally:
        store.close()
    case["run_dir"] = str(run_dir)
    return case


def _run_dir(stdout: str, runs_dir: Path) -> Path | None:
    try:
        found = json.loads(stdout).get("run_dir")
    except (ValueError, AttributeError):
        found = None
    if found:
        return Path(found)
    dirs = sorted((p for p in runs_dir.iterdir() if (p / "run.sqlite").exists()),
                  key=lambda p: p.stat().st_mtime)  # fmt: skip
    return dirs[-1] if dirs else None


def print_case(case: dict[str, Any]) -> None:
    print(json.dumps({k: v for k, v in case.items() if k != "per_instruction"}, default=str),
          file=sys.stderr)  # fmt: skip


def print_table(cases: list[dict[str, Any]]) -> None:
    table = Table(title="LLM-driven search: validity and instruction following")
    for col in ("dataset", "set", "iterations trained", "attempts trained", "repairs/it",
                "failures", "tidied", "instructions followed", "tokens in/out",
                "s/answer", "s/iteration"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("dataset", "failures") else "right")
    for c in cases:
        if "error" in c:
            table.add_row(c["dataset"], str(c["setting"]), c["error"][:80], *[""] * 8)
            continue
        counts = c["instructions"]
        judged = counts["followed"] + counts["not_followed"]
        table.add_row(
            c["dataset"], str(c["setting"]),
            rate(c["iterations_trained"], c["iterations"])
            + f'; {c["iterations_trained_mended"]} mended',
            rate(c["attempts_trained"], c["attempts"]),
            _num(c["repairs_per_trained_iteration"], 2),
            ", ".join(f"{k} {v}" for k, v in sorted(c["failures"].items())) or "-",
            str(c["answers_tidied"]),
            rate(counts["followed"], judged) + f"; {counts['unknown']} unknown",
            f"{c['prompt_tokens']}/{c['completion_tokens']}",
            _num(c["seconds_per_answer_median"], 1),
            _num(c["seconds_per_iteration_median"], 1),
        )  # fmt: skip
    Console(width=200).print(table)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
