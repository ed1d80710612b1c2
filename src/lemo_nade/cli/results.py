"""Commands on a finished run: retrain the winner, export it, report, compare runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from lemo_nade.cli.app import app, err, friendly, interrupted, line, out
from lemo_nade.config import ConfigError


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

    from lemo_nade.results import retrain as rt
    from lemo_nade.store import RunStore

    final = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "plateau_patience": plateau_patience, "early_stopping_patience": early_stopping_patience,
    }  # fmt: skip
    final = {k: v for k, v in final.items() if v is not None}
    with RunStore.open(run_dir) as store:  # bad input first: one line, exit 2, nothing lost
        from lemo_nade.config import config_from_json

        chosen = rt.choose(store.iterations(), candidate)
        total = rt.with_final(config_from_json(store.config_json()), final).final.epochs
    if fresh:
        shutil.rmtree(rt.workdir(run_dir, chosen.idx), ignore_errors=True)
    try:
        result = _retrain_with_progress(run_dir, chosen.idx, final, total, err if as_json else out)
    except KeyboardInterrupt:
        again = " ".join(a for a in sys.argv[1:] if a != "--fresh")
        raise interrupted(f"lemo-nade {again} (it goes on from the last epoch)") from None
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    out.print(line(_retrained_text(result, run_dir)), soft_wrap=True)


def _retrained_text(result: dict[str, Any], run_dir: Path) -> str:
    epochs = result["epochs"]
    return (
        f"candidate {result['iteration']}: test accuracy {result['test_accuracy']:.4f} on "
        f"{result['test_images']} images after {epochs} "
        f"epoch{'' if epochs == 1 else 's'} (best {result['best_epoch']}); "
        f"{result['fps']:,.0f} FPS, {result['hours'] * 3600:.1f} s, "
        f"{result['kwh_pue']:.3e} kWh-PUE ({result['energy_source']}). "
        f"Saved to {run_dir}/retrain.json"
    )


def _retrain_with_progress(
    run_dir: Path, idx: int, final: dict[str, Any], total: int, console: Console
) -> dict[str, Any]:
    """``retrain.retrain`` with a progress bar of epochs, validation loss and best epoch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lemo_nade.results import retrain as rt

    with Progress(
        TextColumn("retraining candidate {task.fields[idx]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=total, idx=idx)

        def show(p: dict[str, Any]) -> None:
            loss = p.get("val_loss")
            text = f"val_loss {loss:.4f}, best epoch {p.get('best_epoch')}" if loss else ""
            bar.update(task, completed=p.get("epoch", 0), description=text)

        return rt.retrain(run_dir, idx, final, on_progress=show)


@app.command("export")
@friendly
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with a retrained model.")],
    fmt: Annotated[
        str, typer.Option("--format", help="state_dict, torchscript, onnx (needs [onnx]) or pt2.")
    ] = "state_dict",
    as_json: Annotated[bool, typer.Option("--json", help="Print the model card as JSON.")] = False,
) -> None:
    """Write the retrained model with its source, preprocessing and a model card to
    RUN_DIR/export/FORMAT/, checked against PyTorch on real test images."""
    from lemo_nade.results.export import export

    card = export(run_dir, fmt)
    if as_json:
        sys.stdout.write(json.dumps(card, indent=2) + "\n")
        return
    check = card["export_check"]
    out.print(
        line(
            f"wrote {card['path']} ({', '.join(card['files'])}); max abs difference to "
            f"PyTorch {check['max_abs_diff']:.2e} on {check['on']}"
        ),
        soft_wrap=True,
    )


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
    from lemo_nade.reporting.write import HTML_NAME, write_report

    target = out_dir or run_dir / "report"
    written = write_report(run_dir, target)
    out.print(line(f"wrote {len(written)} files to {target}"))
    out.print(line(f"open: {target / HTML_NAME}"), soft_wrap=True)


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
