"""Commands of a discovery run: run, resume, show, rules, doctor."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lemo_nade.cli.app import app, err, friendly, interrupted, line, out, say_error
from lemo_nade.config import ConfigError, RunConfig, build_config, recorded_keys
from lemo_nade.config_files import load_toml, parse_set
from lemo_nade.presets import PRESET_KEYS

if TYPE_CHECKING:
    from lemo_nade.reporting.data import RunData
    from lemo_nade.search import Stop


def _default(key: str) -> Any:
    return RunConfig.model_fields[key].default


# The run's length and budgets: set by `run`, raised by `resume` to go on.
Iterations = Annotated[
    int | None, typer.Option(help=f"Candidates to try in all (default {_default('iterations')}).")
]
MaxHours = Annotated[float | None, typer.Option(help="Stop after this many hours.")]
MaxTokens = Annotated[int | None, typer.Option(help="Stop after this many LLM tokens (in + out).")]
MaxCost = Annotated[float | None, typer.Option(help="Stop after this much LLM cost (USD).")]
MaxEnergy = Annotated[
    float | None, typer.Option(help="Stop after candidates used this much energy (device kWh).")
]


# `run`'s own options: the flags layer of the run's config.
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="TOML run config.")]
Dataset = Annotated[
    str | None,
    typer.Option(
        help="shifted-digits (built-in, default), digits (built-in), cifar10, cifar100, "
        "imagenet16-120, npz:PATH."
    ),
]
DataDir = Annotated[str | None, typer.Option(help="Directory with the dataset files.")]
Llm = Annotated[
    str | None,
    typer.Option(
        help="Architect: offline (default, no LLM), openai:MODEL, gemini:MODEL, "
        "ollama:MODEL, vllm:MODEL, llamacpp:MODEL, or replay:RUN_DIR."
    ),
]
Temperature = Annotated[
    float | None,
    typer.Option(help="LLM sampling temperature (default and paper: 0; 0.2-1.0 swept)."),
]
Setting = Annotated[
    int | None,
    typer.Option(help=f"Paper Table 4 priority setting 1-5 (default {_default('setting')})."),
]
Epochs = Annotated[
    int | None, typer.Option(help=f"Training epochs per candidate (default {_default('epochs')}).")
]
BatchSize = Annotated[
    int | None, typer.Option(help=f"Training batch size (default {_default('batch_size')}).")
]
Lr = Annotated[float | None, typer.Option(help=f"Adam learning rate (default {_default('lr')}).")]
Seed = Annotated[
    int | None,
    typer.Option(help=f"Seed for split, training, architect (default {_default('seed')})."),
]
Parent = Annotated[
    str | None, typer.Option(help="Which candidate feeds the next: last (paper, default) or best.")
]
RunsDir = Annotated[Path, typer.Option(help="Where run directories are made.")]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="Any config key, e.g. --set thresholds.TA2=0.9 (repeatable)."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@app.command("run")
@friendly
def run_cmd(
    config: ConfigFile = None,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    llm: Llm = None,
    temperature: Temperature = None,
    max_tokens: MaxTokens = None,
    max_cost_usd: MaxCost = None,
    max_energy_kwh: MaxEnergy = None,
    setting: Setting = None,
    iterations: Iterations = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    seed: Seed = None,
    parent: Parent = None,
    max_hours: MaxHours = None,
    runs_dir: RunsDir = Path("runs"),
    set_: Sets = None,
    as_json: AsJson = False,
) -> None:
    """Start a discovery run (paper Algorithm 1) and print the per-iteration table."""
    from lemo_nade.runs import create_run

    flags = {
        "dataset": dataset, "data_dir": data_dir, "llm": llm, "setting": setting,
        "iterations": iterations, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "seed": seed, "parent": parent, "max_hours": max_hours, "temperature": temperature,
        "max_tokens": max_tokens, "max_cost_usd": max_cost_usd, "max_energy_kwh": max_energy_kwh,
    }  # fmt: skip
    run_dir = create_run(_run_config(config, flags, set_ or []), runs_dir)
    _search(run_dir, as_json)


def _run_config(config: Path | None, flags: dict[str, Any], set_: list[str]) -> RunConfig:
    """The layers, later over earlier: a replayed run's config, the TOML file, the flags,
    ``--set``. One key given by its flag and by ``--set`` with different values is bad
    input: neither silently wins."""
    file_layer = load_toml(config) if config else {}
    sets = parse_set(set_)
    twice = sorted(k for k, v in flags.items() if v is not None and k in sets and sets[k] != v)
    if twice:
        raise ConfigError(
            f"{twice[0]}: given by --{twice[0].replace('_', '-')} and by --set with different "
            "values; keep one"
        )
    recorded = _replay_base(flags.get("llm") or sets.get("llm") or file_layer.get("llm"))
    if any("search" in layer for layer in (file_layer, flags, sets)):
        # another search than the recording's: its preset sets the keys, not the recording
        recorded = {k: v for k, v in recorded.items() if k not in PRESET_KEYS}
    return build_config(recorded, file_layer, flags, sets)


def _replay_base(llm: Any) -> dict[str, Any]:
    """``--llm replay:RUN_DIR`` starts from the recorded run's config (then the layers on
    top), so the same dataset, seeds and thresholds rebuild the same candidates."""
    if not isinstance(llm, str) or not llm.startswith("replay:"):
        return {}
    from lemo_nade.store import RunStore

    with RunStore.open(Path(llm.partition(":")[2])) as store:
        base = recorded_keys(store.config_json())
    base.pop("llm", None)
    return base


@app.command("resume")
@friendly
def resume_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `lemo-nade run`.")],
    iterations: Annotated[
        int | None, typer.Option(help="Go on to this many candidates in all (default: stored).")
    ] = None,
    max_hours: MaxHours = None,
    max_tokens: MaxTokens = None,
    max_cost_usd: MaxCost = None,
    max_energy_kwh: MaxEnergy = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Continue an interrupted run with its stored config, seeds and state.

    A finished or budget-stopped run goes on when given more iterations or a larger
    budget; nothing else about the run can change.
    """
    extend = {
        "iterations": iterations, "max_hours": max_hours, "max_tokens": max_tokens,
        "max_cost_usd": max_cost_usd, "max_energy_kwh": max_energy_kwh,
    }  # fmt: skip
    extend = {k: v for k, v in extend.items() if v is not None}
    if not extend:
        _note_if_finished(run_dir)
    _search(run_dir, as_json, extend)


def _note_if_finished(run_dir: Path) -> None:
    """A run that ran all its iterations has nothing to resume: say how to extend it."""
    from lemo_nade.history import searched
    from lemo_nade.store import RunStore

    with RunStore.open(run_dir) as store:
        status, reason = store.status()
        done = len(searched(store.iterations()))
    if status == "finished":
        err.print(
            line(
                f"note: this run already finished ({reason}, {done} candidates); to go on, "
                f"give it more: lemo-nade resume {run_dir} --iterations {done + 10}"
            ),
            soft_wrap=True,
        )


def _search(run_dir: Path, as_json: bool, extend: dict[str, Any] | None = None) -> None:
    from lemo_nade.cli.console import LiveProgress, print_table
    from lemo_nade.search import run_search
    from lemo_nade.store import RunStore

    RunStore.open(run_dir).close()  # a bad RUN_DIR is bad input: one line, exit 2
    if not as_json:
        out.print(line("run directory: ", (str(run_dir), "bold")))
    try:
        with LiveProgress(err if as_json else out, run_dir) as live:
            result = run_search(run_dir, progress=live.progress, extend=extend)
    except KeyboardInterrupt:
        raise interrupted(f"lemo-nade resume {run_dir}") from None
    if as_json:
        _print_show_json(run_dir)
    else:
        print_table(out, result.records)
        out.print(line(f"stopped: {result.stop_reason}. Details: lemo-nade show {run_dir}"))
    if result.exit_code:  # the same exit code with --json
        label = "error" if result.exit_code == 2 else "failed"
        say_error(label, _why(result.stop, run_dir))
        raise typer.Exit(result.exit_code)


def _why(stop: Stop, run_dir: Path) -> str:
    """What went wrong in a search that exits non-zero, and how to go on."""
    from lemo_nade.search import StopReason

    if stop.reason is StopReason.DATA_ERROR:
        return f"{stop.detail}; fix the data, then continue with: lemo-nade resume {run_dir}"
    if stop.reason is StopReason.LLM_UNAVAILABLE:
        return (
            "the LLM stopped answering; what was done is saved. "
            f"Continue with: lemo-nade resume {run_dir}"
        )
    if stop.budget:
        reason = stop.reason.value
        flag = "--" + reason.replace("_", "-")
        return (
            f"the {reason} budget ran out before any candidate succeeded; give it more: "
            f"lemo-nade resume {run_dir} {flag} VALUE"
        )
    return f"no candidate succeeded; see each one's error with lemo-nade show {run_dir}"


@app.command("show")
@friendly
def show_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print a run's per-iteration table and its summary (paper Table 3 shape), and the
    retrained model's result when `lemo-nade retrain` has run."""
    from lemo_nade.cli.console import print_compliance, print_errors, print_summary, print_table
    from lemo_nade.reporting.data import load_run

    data = load_run(run_dir)
    if as_json:
        _print_show_json(run_dir, data)
        return
    print_table(out, data.records)
    print_compliance(out, data.records)
    print_errors(out, data.records)  # what `run` points to when no candidate succeeded
    print_summary(out, data.records, data.config, data.status, data.reason)
    rt = data.retrain
    if rt is not None:
        done = f"candidate {rt['iteration']}, " if "iteration" in rt else ""
        out.print(
            line(
                f"retrained: {done}test accuracy {100 * rt['test_accuracy']:.2f}%"
                + (f" on {rt['test_images']:,} images" if rt.get("test_images") else "")
                + (f", {rt['hours'] * 3600:.1f} s" if "hours" in rt else "")
                + (f", {rt['kwh_pue']:.3e} kWh-PUE" if "kwh_pue" in rt else "")
                + f"  ({run_dir / 'retrain.json'})"
            ),
            soft_wrap=True,
        )


def _print_show_json(run_dir: Path, data: RunData | None = None) -> None:
    from lemo_nade.numbers import jsonable
    from lemo_nade.reporting.data import load_run, paper_row

    data = data or load_run(run_dir)
    doc = {
        "run_id": data.run_id,
        "run_dir": str(run_dir),
        "status": data.status,
        "stop_reason": data.reason,
        "config": data.config.model_dump(),
        "summary": data.summary,
        "iterations": data.rows,
        "retrain": data.retrain,  # RUN_DIR/retrain.json, or null before a retrain
        "paper_row": paper_row(data) if data.records else None,  # search + retrain
    }
    # jsonable: valid JSON (no NaN); json.dumps escapes every control character
    sys.stdout.write(json.dumps(jsonable(doc), indent=2) + "\n")
