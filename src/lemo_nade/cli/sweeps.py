"""Commands of a sweep over settings: sweep, sweep-report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lemo_nade.cli.app import app, err, friendly, line, out
from lemo_nade.config import ConfigError
from lemo_nade.config_files import parse_set
from lemo_nade.text import one_line

if TYPE_CHECKING:
    from lemo_nade.sweeps.plan import SweepProgress


SweepFile = Annotated[
    Path, typer.Argument(help="Sweep TOML: \\[base] run config, \\[axes], \\[resources].")
]
SweepDir = Annotated[
    Path | None,
    typer.Option(help="Where the runs go (default: sweeps/<file name without .toml>)."),
]
Executor = Annotated[
    str, typer.Option(help="local (this machine) or ray (a Ray cluster; lemo-nade\\[ray]).")
]
Jobs = Annotated[
    int | None, typer.Option(min=1, help="local: runs at once, capped at the cores (default 1).")
]
Address = Annotated[
    str | None,
    typer.Option(help="ray: cluster address, auto or ray://HOST:PORT (default: start one)."),
]
BaseSets = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a base key for every run, e.g. --set epochs=1."),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="List the planned runs and exit.")]


@app.command("sweep")
@friendly
def sweep_cmd(
    sweep_file: SweepFile,
    sweep_dir: SweepDir = None,
    executor: Executor = "local",
    jobs: Jobs = None,
    address: Address = None,
    set_: BaseSets = None,
    dry_run: DryRun = False,
) -> None:
    """Run a grid of runs (the product of the sweep file's axes), resumably.

    Each run is a run directory SWEEP_DIR/runs/NAME named by its axis values.
    The same command again skips finished runs, resumes interrupted ones, retries failed ones.
    Exit code 1 if any run failed.
    """
    from lemo_nade.sweeps.executors import create_executor
    from lemo_nade.sweeps.plan import load_sweep, run_sweep

    plan = load_sweep(sweep_file, parse_set(set_ or []))
    sweep_dir = sweep_dir or Path("sweeps") / sweep_file.stem
    if dry_run:
        for run in plan.runs:
            out.print(line(run.name))
        out.print(line(f"{len(plan.runs)} runs planned in {sweep_dir}"))
        return
    options = _executor_options(executor, jobs, address, plan.resources.model_dump())
    runner = create_executor(executor, **options)
    try:
        result = run_sweep(plan, sweep_dir, runner, _progress(len(plan.runs), sweep_dir, executor))
    except KeyboardInterrupt:
        err.print("interrupted; continue with the same command")
        raise typer.Exit(130) from None
    done = len(result.outcomes) - len(result.failed)
    out.print(
        line(
            f"{done} runs ended, {len(result.skipped)} already finished, "
            f"{len(result.failed)} failed. Report: lemo-nade sweep-report {sweep_dir}"
        )
    )
    if result.failed:
        raise typer.Exit(1)


def _progress(planned: int, sweep_dir: Path, executor: str) -> SweepProgress:
    """One line when the sweep knows what is left to run, and one as each run ends."""
    from lemo_nade.sweeps.plan import SweepProgress

    def ready(tasks: list[Any], skipped: tuple[str, ...]) -> None:
        out.print(
            line(
                "sweep directory: ",
                (str(sweep_dir), "bold"),
                f": {planned} runs, {len(skipped)} already finished, "
                f"{len(tasks)} to run ({executor})",
            )
        )

    def ended(o: Any) -> None:
        why = "" if o.state == "finished" else f": {one_line(str(o.reason))}"
        out.print(line(f"{o.state} {o.name} in {o.seconds:.1f} s{why}"), soft_wrap=True)

    return SweepProgress(ready, ended)


def _executor_options(
    executor: str, jobs: int | None, address: str | None, resources: dict[str, Any]
) -> dict[str, Any]:
    """The executor's options from the flags; a flag for the other executor is bad input."""
    from lemo_nade.sweeps.executors import available_cores

    if executor == "ray":
        if jobs is not None:
            raise ConfigError("--jobs: the ray executor schedules by [resources] num_cpus/num_gpus")
        return {"address": address, **resources}
    if address is not None:
        raise ConfigError("--address: only for --executor ray")
    if (jobs or 1) > available_cores():
        err.print(f"--jobs {jobs}: capped at the {available_cores()} cores available")
    return {"jobs": jobs or 1}


@app.command("sweep-report")
@friendly
def sweep_report_cmd(
    sweep_dir: Annotated[Path, typer.Argument(help="A directory made by `lemo-nade sweep`.")],
    out_dir: Annotated[
        Path | None, typer.Option(help="Where to write the files (default: SWEEP_DIR/report).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of Markdown.")
    ] = False,
) -> None:
    """Tabulate a sweep like the paper's Tables 3-10, one row per run.

    Writes sweep.md, sweep.csv and sweep.json (the same rows) and accuracy_vs_energy.png.
    """
    from lemo_nade.reporting.sweep_table import write_sweep_report

    texts, written = write_sweep_report(sweep_dir, out_dir)
    sys.stdout.write(texts["sweep.json" if as_json else "sweep.md"])
    err.print(line(f"wrote {', '.join(str(p) for p in written)}"), soft_wrap=True)
