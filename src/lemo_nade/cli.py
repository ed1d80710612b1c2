"""Command line: parses, builds a config, calls the library. Exit codes: 0 ok,
1 failure, 2 bad input (one line on stderr, never a traceback)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from lemo_nade import rules
from lemo_nade.architects import ArchitectError
from lemo_nade.config import ConfigError, build_config, load_toml, parse_set
from lemo_nade.datasets import DatasetError
from lemo_nade.rules import RulesInputError
from lemo_nade.store import StoreError

app = typer.Typer(
    help="LeMo-NADe: discover neural network architectures with an LLM and an expert system.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped or redirected output gets a wide table instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
out = Console(width=_WIDTH)
err = Console(stderr=True)

BAD_INPUT = (ConfigError, DatasetError, ArchitectError, StoreError, RulesInputError)
F = TypeVar("F", bound=Callable[..., Any])


def _bad_input(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def friendly(func: F) -> F:
    """Turn known bad-input errors into one line and exit code 2; other errors into exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BAD_INPUT as exc:
            raise _bad_input(str(exc)) from None
        except KeyboardInterrupt:
            err.print("interrupted; continue with: lemo-nade resume RUN_DIR")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if os.environ.get("LEMO_NADE_DEBUG"):
                raise
            err.print(
                f"[bold red]failed:[/] {type(exc).__name__}: {exc} "
                "(set LEMO_NADE_DEBUG=1 for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _json_arg(text: str | None, what: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what}: not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: expected a JSON object like '{{\"A1\": 0.8}}'")
    return value


@app.command("run")
@friendly
def run_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML run config.")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="digits (built-in), cifar10, cifar100, imagenet16-120, npz:PATH."),
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="Directory with the dataset files.")] = None,
    llm: Annotated[
        str | None,
        typer.Option(
            help="Architect: offline (default, no LLM), openai:MODEL, gemini:MODEL, "
            "ollama:MODEL, vllm:MODEL, llamacpp:MODEL, or replay:RUN_DIR."
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="LLM sampling temperature (paper: 0; 0.2-1.0 swept).")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Stop after this many LLM tokens (in + out).")
    ] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option(help="Stop after this much LLM cost (USD).")
    ] = None,
    max_energy_kwh: Annotated[
        float | None, typer.Option(help="Stop after candidates used this much energy.")
    ] = None,
    setting: Annotated[
        int | None, typer.Option(help="Paper Table 4 priority setting 1-5 (default 1).")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="Candidates to try (default 10).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs per candidate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for split, training, architect.")] = None,
    parent: Annotated[
        str | None, typer.Option(help="Which candidate feeds the next: last (paper) or best.")
    ] = None,
    max_hours: Annotated[float | None, typer.Option(help="Stop after this much time.")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where run directories are made.")] = Path("runs"),
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any config key, e.g. --set thresholds.TA2=0.9 (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Start a discovery run (paper Algorithm 1) and print the per-iteration table."""
    from lemo_nade.search import create_run

    flags = {
        "dataset": dataset, "data_dir": data_dir, "llm": llm, "setting": setting,
        "iterations": iterations, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "seed": seed, "parent": parent, "max_hours": max_hours, "temperature": temperature,
        "max_tokens": max_tokens, "max_cost_usd": max_cost_usd, "max_energy_kwh": max_energy_kwh,
    }  # fmt: skip
    file_layer = load_toml(config) if config else {}
    sets = parse_set(set_ or [])
    recorded = _replay_base(flags.get("llm") or sets.get("llm") or file_layer.get("llm"))
    cfg = build_config(recorded, file_layer, flags, sets)
    run_dir = create_run(cfg, runs_dir)
    _search(run_dir, as_json)


def _replay_base(llm: Any) -> dict[str, Any]:
    """``--llm replay:RUN_DIR`` starts from the recorded run's config (then the layers on
    top), so the same dataset, seeds and thresholds rebuild the same candidates."""
    if not isinstance(llm, str) or not llm.startswith("replay:"):
        return {}
    from lemo_nade.store import RunStore

    with RunStore.open(Path(llm.partition(":")[2])) as store:
        base: dict[str, Any] = json.loads(store.config_json())
    base.pop("llm", None)
    return base


@app.command("resume")
@friendly
def resume_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `lemo-nade run`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Continue an interrupted run with its stored config, seeds and state."""
    _search(run_dir, as_json)


def _search(run_dir: Path, as_json: bool) -> None:
    from lemo_nade.console import LiveProgress, print_table
    from lemo_nade.search import run_search
    from lemo_nade.store import RunStore

    RunStore.open(run_dir).close()  # a bad RUN_DIR is bad input: one line, exit 2
    if not as_json:
        out.print(f"run directory: [bold]{run_dir}[/]")
    with LiveProgress(err if as_json else out, run_dir) as live:
        result = run_search(run_dir, progress=live.progress)
    if as_json:
        _print_show_json(run_dir)
        return
    print_table(out, result.records)
    out.print(f"stopped: {result.stop_reason}. Details: lemo-nade show {run_dir}")
    if result.stop_reason.startswith("llm_unavailable"):
        err.print(
            f"[bold red]failed:[/] the LLM stopped answering; what was done is saved. "
            f"Continue with: lemo-nade resume {run_dir}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    if result.best is None:
        raise typer.Exit(1)


@app.command("show")
@friendly
def show_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print a run's per-iteration table and its summary (paper Table 3 shape)."""
    from lemo_nade.console import print_summary, print_table
    from lemo_nade.store import RunStore

    if as_json:
        _print_show_json(run_dir)
        return
    with RunStore.open(run_dir) as store:
        from lemo_nade.config import config_from_json

        records = store.iterations()
        status, reason = store.status()
        config = config_from_json(store.config_json())
    print_table(out, records)
    print_summary(out, records, config, status, reason)


def _print_show_json(run_dir: Path) -> None:
    from lemo_nade.config import config_from_json
    from lemo_nade.report import iteration_rows, run_summary
    from lemo_nade.store import RunStore

    with RunStore.open(run_dir) as store:
        records = store.iterations()
        status, reason = store.status()
        config = config_from_json(store.config_json())
        run_id = store.run_id
    doc = {
        "run_id": run_id,
        "run_dir": str(run_dir),
        "status": status,
        "stop_reason": reason,
        "config": config.model_dump(),
        "summary": run_summary(records, config),
        "iterations": iteration_rows(records),
    }
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


@app.command("rules")
@friendly
def rules_cmd(
    metrics: Annotated[
        str, typer.Option(help='Measured metrics as JSON: {"A1":..,"A2":..,"E1":..,"E2":..,"F":..}')
    ],
    setting: Annotated[int, typer.Option(help="Paper Table 4 priority setting 1-5.")] = 1,
    priorities: Annotated[
        str | None, typer.Option(help='Override priorities as JSON, e.g. {"PF":0.5}.')
    ] = None,
    thresholds: Annotated[
        str | None, typer.Option(help='Override thresholds as JSON, e.g. {"TA1":0.9}.')
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what the expert system (Algorithms 2 and 3) instructs for given metrics."""
    cfg = build_config(
        {"setting": setting},
        {"priorities": _json_arg(priorities, "priorities")},
        {"thresholds": _json_arg(thresholds, "thresholds")},
    )
    values = _json_arg(metrics, "metrics")
    unknown = sorted(set(values) - set(rules.METRIC_KEYS))
    if unknown:
        raise ConfigError(f"metrics: unknown key {unknown[0]!r}; allowed: A1, A2, E1, E2, F")
    raw, resolved = rules.instructions_for(
        values, cfg.priorities.model_dump(), cfg.thresholds.model_dump()
    )
    if as_json:
        sys.stdout.write(json.dumps({"raw": raw, "resolved": resolved}) + "\n")
        return
    from lemo_nade.console import print_rules

    print_rules(out, raw, resolved, rules.fired_rules(values, cfg.thresholds.model_dump()))


@app.command("retrain")
@friendly
def retrain_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `lemo-nade run`.")],
    candidate: Annotated[
        int | None, typer.Option(help="Iteration to retrain (default: the best by CM).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="At most this many epochs (paper: 500).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (paper: 1024).")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam's initial LR (paper: 0.01).")] = None,
    plateau_patience: Annotated[
        int | None, typer.Option(help="Epochs without a lower val loss before LR x0.1 (paper: 20).")
    ] = None,
    early_stopping_patience: Annotated[
        int | None, typer.Option(help="Epochs without a lower val loss before stopping; 0 off.")
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Ignore an existing checkpoint and start over.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Retrain a candidate from scratch with the paper's final protocol on the full
    training split, then measure test accuracy, FPS, latency and energy per image once.
    Interrupted? Run the same command again: it continues from the last epoch."""
    import shutil

    from lemo_nade import retrain as rt
    from lemo_nade.store import RunStore

    final = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "plateau_patience": plateau_patience, "early_stopping_patience": early_stopping_patience,
    }  # fmt: skip
    final = {k: v for k, v in final.items() if v is not None}
    with RunStore.open(run_dir) as store:  # bad input first: one line, exit 2
        from lemo_nade.config import config_from_json

        chosen = rt.choose(store.iterations(), candidate)
        total = config_from_json(store.config_json()).final.model_copy(update=final).epochs
    if fresh:
        shutil.rmtree(rt.workdir(run_dir, chosen.idx), ignore_errors=True)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = err if as_json else out
    with Progress(
        TextColumn("retraining candidate {task.fields[idx]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=total, idx=chosen.idx)

        def show(p: dict[str, Any]) -> None:
            loss = p.get("val_loss")
            text = f"val_loss {loss:.4f}, best epoch {p.get('best_epoch')}" if loss else ""
            bar.update(task, completed=p.get("epoch", 0), description=text)

        result = rt.retrain(run_dir, chosen.idx, final, on_progress=show)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    acc = result["test_accuracy"]
    out.print(
        f"candidate {result['iteration']}: test accuracy {acc:.4f} on {result['test_images']} "
        f"images after {result['epochs']} epochs (best {result['best_epoch']}); "
        f"{result['fps']:,.0f} FPS, {result['hours'] * 3600:.1f} s, "
        f"{result['kwh_pue']:.3e} kWh-PUE ({result['energy_source']}). "
        f"Saved to {run_dir}/retrain.json",
        highlight=False,
        soft_wrap=True,
    )


@app.command("export")
@friendly
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with a retrained model.")],
    fmt: Annotated[
        str, typer.Option("--format", help="state_dict, torchscript or onnx (needs [onnx]).")
    ] = "state_dict",
    as_json: Annotated[bool, typer.Option("--json", help="Print the model card as JSON.")] = False,
) -> None:
    """Write the retrained model with its source, preprocessing and a model card to
    RUN_DIR/export/FORMAT/, checked against PyTorch on real test images."""
    from lemo_nade.export import export

    card = export(run_dir, fmt)
    if as_json:
        sys.stdout.write(json.dumps(card, indent=2) + "\n")
        return
    check = card["export_check"]
    out.print(
        f"wrote {card['path']} ({', '.join(card['files'])}); max abs difference to PyTorch "
        f"{check['max_abs_diff']:.2e} on {check['on']}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("doctor")
@friendly
def doctor_cmd(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML run config.")] = None,
    llm: Annotated[
        str | None, typer.Option(help="Architect to check, e.g. ollama:llama3.1.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config overrides, e.g. base_url=URL.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the set-up: the architect's endpoint and key (never shown), torch, device,
    energy sensors and the built-in dataset. Exit 1 when a check fails."""
    from lemo_nade.doctor import run_checks

    file_layer = load_toml(config) if config else {}
    cfg = build_config(file_layer, {"llm": llm}, parse_set(set_ or []))
    checks = run_checks(cfg)
    if as_json:
        sys.stdout.write(json.dumps({"checks": checks}, indent=2) + "\n")
    else:
        from rich.table import Table

        table = Table(title="lemo-nade doctor")
        for name in ("check", "status", "detail"):
            table.add_column(name, overflow="fold")
        colour = {"ok": "green", "warn": "yellow", "fail": "red", "info": "cyan"}
        for c in checks:
            table.add_row(c["check"], f"[{colour[c['status']]}]{c['status']}[/]", c["detail"])
        out.print(table)
    if any(c["status"] == "fail" for c in checks):
        raise typer.Exit(1)


@app.command("sweep")
@friendly
def sweep_cmd(
    sweep_file: Annotated[
        Path, typer.Argument(help="Sweep TOML: \\[base] run config, \\[axes], \\[resources].")
    ],
    sweep_dir: Annotated[
        Path | None,
        typer.Option(help="Where the runs go (default: sweeps/<file name without .toml>)."),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="local (this machine) or ray (a Ray cluster; lemo-nade\\[ray]).")
    ] = "local",
    jobs: Annotated[
        int | None,
        typer.Option(min=1, help="local: runs at once, capped at the cores (default 1)."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="ray: cluster address, auto or ray://HOST:PORT (default: start one)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a base key for every run, e.g. --set epochs=1."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the planned runs and exit.")
    ] = False,
) -> None:
    """Run a grid of runs (the product of the sweep file's axes), resumably.

    Each run is a run directory SWEEP_DIR/runs/NAME named by its axis values.
    The same command again skips finished runs, resumes interrupted ones, retries failed ones.
    Exit code 1 if any run failed.
    """
    from lemo_nade.executors import available_cores, create_executor
    from lemo_nade.sweep import SweepProgress, load_sweep, run_sweep

    plan = load_sweep(sweep_file, parse_set(set_ or []))
    sweep_dir = sweep_dir or Path("sweeps") / sweep_file.stem
    if dry_run:
        for run in plan.runs:
            out.print(run.name, highlight=False)
        out.print(f"{len(plan.runs)} runs planned in {sweep_dir}", highlight=False)
        return
    if executor == "ray":
        if jobs is not None:
            raise ConfigError("--jobs: the ray executor schedules by [resources] num_cpus/num_gpus")
        options: dict[str, Any] = {"address": address, **plan.resources.model_dump()}
    else:
        if address is not None:
            raise ConfigError("--address: only for --executor ray")
        options = {"jobs": jobs or 1}
        if (jobs or 1) > available_cores():
            err.print(f"--jobs {jobs}: capped at the {available_cores()} cores available")
    runner = create_executor(executor, **options)

    def ready(tasks: list[Any], skipped: tuple[str, ...]) -> None:
        out.print(
            f"sweep directory: [bold]{sweep_dir}[/]: {len(plan.runs)} runs, "
            f"{len(skipped)} already finished, {len(tasks)} to run ({executor})"
        )

    def ended(o: Any) -> None:
        why = "" if o.state == "finished" else f": {o.reason}"
        out.print(f"{o.state} {o.name} in {o.seconds:.1f} s{why}", highlight=False, soft_wrap=True)

    try:
        result = run_sweep(plan, sweep_dir, runner, SweepProgress(ready, ended))
    except KeyboardInterrupt:
        err.print("interrupted; continue with the same command")
        raise typer.Exit(130) from None
    done = len(result.outcomes) - len(result.failed)
    out.print(
        f"{done} runs ended, {len(result.skipped)} already finished, "
        f"{len(result.failed)} failed. Report: lemo-nade sweep-report {sweep_dir}",
        highlight=False,
    )
    if result.failed:
        raise typer.Exit(1)


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
    from lemo_nade.sweep_report import write_report

    texts, written = write_report(sweep_dir, out_dir)
    sys.stdout.write(texts["sweep.json" if as_json else "sweep.md"])
    err.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


@app.command("report")
@friendly
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `lemo-nade run`.")],
    out_dir: Annotated[
        Path | None, typer.Option(help="Where to write the report (default: RUN_DIR/report).")
    ] = None,
) -> None:
    """Write a run's report: report.md, a self-contained report.html, plots.

    Shows the paper-style summary row (test accuracy, parameters, hours,
    kWh-PUE, CO2, FPS, inference energy and CO2 per image), the per-iteration
    table, plots (CM and accuracy per iteration, accuracy vs parameters with
    the Pareto front, energy per iteration, instruction frequency, lineage),
    the lineage and the best model's code. Test accuracy and the retraining's
    cost come from RUN_DIR/retrain.json when present. The report directory is
    replaced as a whole, never left half-written.
    """
    from lemo_nade.reporting.render import HTML_NAME, write_report

    target = out_dir or run_dir / "report"
    written = write_report(run_dir, target)
    out.print(f"wrote {len(written)} files to {target}", highlight=False)
    out.print(f"open: {target / HTML_NAME}", highlight=False, soft_wrap=True)


@app.command("compare")
@friendly
def compare_cmd(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories to compare.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
) -> None:
    """Compare runs, one row each: dataset, llm, setting, iterations, best
    validation (and test) accuracy, parameters, hours, kWh-PUE, CO2, FPS and
    LLM cost."""
    from lemo_nade.reporting.compare import compare_rows, rich_table, to_csv, to_json

    if as_json and as_csv:
        raise ConfigError("--json and --csv: choose one")
    rows = compare_rows(run_dirs)
    if as_json:
        sys.stdout.write(to_json(rows))
    elif as_csv:
        sys.stdout.write(to_csv(rows))
    else:
        out.print(rich_table(rows))


def main() -> None:
    app()
