"""Does the search discover? Architects x seeds at an equal budget, against baselines.

    python bench/discovery.py --arm offline --arm random [--arm reference:FILE] \\
        [--arm "paper llm=offline search=paper"] --seeds 5 [--setting 1] [--dataset cifar10 \\
        --data-dir ../shared/data/cifar-10-subset] [--iterations 8] [--epochs 3] \\
        [--first-seed 0] [--max-hours H] [--set KEY=VALUE ...] \\
        [--out bench-results/discovery] [--jobs 1]

An arm is an architect (``--arm random``: the run's ``llm``) or a label and config keys
(``--arm "paper llm=offline search=paper"``). Every arm runs every seed with the same
config but its own keys, so each seed gives every arm the same data split and the same
first model (the offline and random architects start from the paper's first model). The
budget is equal by construction: the same number of candidates (``--iterations``), and
with ``--max-hours`` the same wall time too. Each arm is a sweep over the seeds in
OUT/arms/LABEL, so the same command again resumes: finished runs are skipped,
interrupted ones continue.

Per arm it reports the best validation accuracy and best CM (mean, std, 95% t-interval
over seeds), the gain over the arm's own first model, the last candidate's accuracy (a
search that collapses ends far below its best), duplicate trainings, seconds and kWh, and
the Pareto hypervolumes of accuracy against log10 parameters and log10 training kWh
(E1); for settings 2 and 5, the leanest and fastest candidates within 2 points of the
first model's accuracy as multiples of the first model's figure (one figure per seed, the
median over the arms that start from the same first model, with the spread of its
measurements: the noise floor); between the
first arm and each other one, the paired differences per seed with exact Wilcoxon and
sign-test p-values. Writes OUT/discovery.md, OUT/discovery.json and
OUT/anytime.png (best-so-far accuracy against seconds, one line per run, coloured by arm).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from discovery_stats import paired, run_figures, set_ratios, summary
from lemo_nade.store import RunStore
from lemo_nade.sweeps.plan import RUNS_DIR, read_plan
from machine import conditions, describe

FIGURES = ("best_A2", "gain", "last_A2", "drop_from_best", "last_search_A2", "promoted",
           "best_CM", "duplicates", "seconds", "kwh", "hypervolume", "hypervolume_energy",
           "cm_dA2", "E1_x", "E2_x", "F_x")  # fmt: skip
COMPARED = ("best_A2", "best_CM", "last_A2", "E1_x", "E2_x", "F_x")
LOWER = ("E1_x", "E2_x")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    before = conditions()
    arms = [parse_arm(text) for text in args.arm]
    for label, keys in arms:
        sweep_file = out / "arms" / f"{label}.toml"
        sweep_file.parent.mkdir(parents=True, exist_ok=True)
        sweep_file.write_text(sweep_toml(args, keys))
        command = [sys.executable, "-m", "lemo_nade", "sweep", str(sweep_file),
                   "--sweep-dir", str(out / "arms" / label), "--jobs", str(args.jobs)]  # fmt: skip
        print(f"arm {label}: {keys}", file=sys.stderr)
        done = subprocess.run(command)
        if done.returncode not in (0, 1):  # 1: some run failed; still report the others
            return done.returncode
    report = analyse(out / "arms", [label for label, _ in arms])
    report["conditions"] = {"before": before, "after": conditions()}
    (out / "discovery.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "discovery.md").write_text(markdown(report))
    plot(report, out / "anytime.png")
    print(markdown(report))
    print(describe(before, report["conditions"]["after"]))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", action="append", required=True,
                        help="an architect (the run's llm), or 'LABEL KEY=VALUE ...'; repeatable; "
                        "the first is compared with each other one")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds per arm")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds FIRST..FIRST+SEEDS-1: fresh seeds to replicate a result "
                        "on, rather than adding seeds to the run that suggested it")  # fmt: skip
    parser.add_argument("--setting", type=int, default=1)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-hours", type=float)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="bench-results/discovery")
    parser.add_argument("--jobs", type=int, default=1)
    return parser


def parse_arm(text: str) -> tuple[str, dict[str, str]]:
    """``random`` -> ("random", {"llm": "random"}); ``"paper llm=offline search=paper"`` ->
    ("paper", {"llm": "offline", "search": "paper"})."""
    label, *pairs = text.split()
    if not pairs:
        return re.sub(r"[^A-Za-z0-9._-]", "_", label), {"llm": label}
    keys = dict(pair.partition("=")[::2] for pair in pairs)
    return re.sub(r"[^A-Za-z0-9._-]", "_", label), keys


def sweep_toml(args: argparse.Namespace, keys: dict[str, str]) -> str:
    """One arm's sweep: the shared config and the arm's keys as ``[base]``, seeds as the axis."""
    base: dict[str, Any] = {"dataset": args.dataset, "setting": args.setting,
                            "iterations": args.iterations, "epochs": args.epochs}  # fmt: skip
    if args.data_dir:
        base["data_dir"] = str(Path(args.data_dir).resolve())
    if args.max_hours:
        base["max_hours"] = args.max_hours
    values = {k: json.dumps(v) for k, v in base.items()}
    sets = [s.partition("=")[::2] for s in args.set] + list(keys.items())
    values.update((k.strip(), _toml_value(v.strip())) for k, v in sets)  # an arm's key wins
    lines = ["[base]"] + [f"{k} = {v}" for k, v in values.items()]
    lines += ["", "[axes]", f"seed = {json.dumps(seed_list(args))}"]
    return "\n".join(lines) + "\n"


def seed_list(args: argparse.Namespace) -> list[int]:
    """The seeds every arm runs: ``--seeds`` of them from ``--first-seed``."""
    return list(range(args.first_seed, args.first_seed + args.seeds))


def _toml_value(text: str) -> str:
    """A ``--set`` value as TOML: numbers and booleans as they are, anything else quoted."""
    try:
        json.loads(text)
        return text
    except ValueError:
        return json.dumps(text)


def analyse(arms_dir: Path, arms: list[str]) -> dict[str, Any]:
    """Every run's figures, per-arm summaries, and the first arm against each other one."""
    runs: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in arms}
    for arm in arms:
        for planned in read_plan(arms_dir / arm)["runs"]:
            path = arms_dir / arm / RUNS_DIR / planned["name"]
            if not (path / "run.sqlite").exists():
                continue
            store = RunStore.open(path)
            try:
                runs[arm][int(planned["axes"]["seed"])] = run_figures(store.iterations())
            finally:
                store.close()
    seeds = sorted({s for per_arm in runs.values() for s in per_arm})
    noise = {s: set_ratios([per[s] for per in runs.values() if s in per]) for s in seeds}
    arms_out = {
        arm: {f: summary([per.get(s, {}).get(f) for s in seeds]) for f in FIGURES}
        for arm, per in runs.items()
    }
    first = arms[0]
    comparisons = {
        other: {
            f: paired(
                [runs[first].get(s, {}).get(f) for s in seeds],
                [runs[other].get(s, {}).get(f) for s in seeds],
            )
            for f in COMPARED
        }
        for other in arms[1:]
    }
    spread = {k: summary([noise[s][k] for s in seeds]) for k in next(iter(noise.values()), {})}
    return {"seeds": seeds, "runs": runs, "arms": arms_out, "first_vs": comparisons,
            "first_model_spread": spread}  # fmt: skip


def _cell(s: dict[str, Any], scale: float = 1.0, digits: int = 1) -> str:
    if s["mean"] is None:
        return "-"
    text = f"{s['mean'] * scale:.{digits}f}"
    if s["std"] is not None:
        text += f" ± {s['std'] * scale:.{digits}f}"
    return text


def markdown(report: dict[str, Any]) -> str:
    """The per-arm table (mean ± std over seeds; accuracy in points) and the paired tests."""
    head = ("| arm | best A2 (%) | gain over first (pts) | last A2 (%) | last searched A2 (%) "
            "| best CM | duplicates | s per run | HV params | HV energy |\n"
            + "|---" * 10 + "|")  # fmt: skip
    rows = [
        f"| {arm} | {_cell(a['best_A2'], 100)} | {_cell(a['gain'], 100)} | "
        f"{_cell(a['last_A2'], 100)} | {_cell(a['last_search_A2'], 100)} | "
        f"{_cell(a['best_CM'], 1, 3)} | "
        f"{_cell(a['duplicates'], 1, 1)} | {_cell(a['seconds'], 1, 0)} | "
        f"{_cell(a['hypervolume'], 1, 2)} | {_cell(a['hypervolume_energy'], 1, 2)} |"
        for arm, a in report["arms"].items()
    ]
    first = next(iter(report["arms"]), "")
    tests = []
    for other, figures in report["first_vs"].items():
        for figure, p in figures.items():
            if p["n"]:
                tests.append(
                    f"- {first} vs {other}, {figure}: mean difference {p['mean_diff']:+.4f} over "
                    f"{p['n']} seeds ({p['wins']} wins, {p['losses']} losses, {p['ties']} ties); "
                    f"Wilcoxon p = {_p(p['wilcoxon_p'])}, sign test p = {_p(p['sign_p'])}"
                    + (" (lower is better: a win is worse)" if figure in LOWER else "")
                )
    seeds = f"seeds {report['seeds']}"
    return "\n".join([f"Discovery bench, {seeds}, mean ± std over seeds", "", head, *rows, "",
                      *_efficiency_table(report), "", *tests]) + "\n"  # fmt: skip


def _efficiency_table(report: dict[str, Any]) -> list[str]:
    """Settings 2 and 5's figures: the best-CM model's accuracy change, and the leanest
    and fastest model within 2 points of the first model's accuracy, x the first's."""
    head = ("| arm | A2 of best CM - first (pts) | E1 x first | E2 x first | FPS x first |\n"
            + "|---" * 5 + "|")  # fmt: skip
    rows = [
        f"| {arm} | {_cell(a['cm_dA2'], 100)} | {_cell(a['E1_x'], 1, 2)} | "
        f"{_cell(a['E2_x'], 1, 2)} | {_cell(a['F_x'], 1, 2)} |"
        for arm, a in report["arms"].items()
    ]
    note = (
        "(E and FPS: the best among the candidates within 2 points of the first model's A2, "
        "over the median of the first model's own figure as the arms measured it)"
    )
    spread = report.get("first_model_spread", {})
    noise = ", ".join(
        f"{k.split('_')[1]} {_cell(v, 1, 2)}" for k, v in spread.items() if v["mean"] is not None
    )
    floor = f"(the same first model, measured once per arm, max / min over the arms: {noise})"
    return [head, *rows, note, *([floor] if noise else [])]


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n, (arm, per_seed) in enumerate(report["runs"].items()):
        for i, figures in enumerate(per_seed.values()):
            curve = figures["anytime"]
            if curve:
                xs, ys = zip(*curve, strict=True)
                ax.step(xs, [100 * y for y in ys], where="post", color=f"C{n}", alpha=0.7,
                        label=arm if i == 0 else None)  # fmt: skip
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("best validation accuracy so far (%)")
    ax.set_title("Anytime performance, one line per seed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
