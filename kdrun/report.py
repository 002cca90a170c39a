"""`kdrun-report DIR`: the table of a sweep. Reads every run directory under DIR (its
results.json; no W&B needed), groups the runs by the settings the sweep varied, averages over
seeds (mean ± std, n), puts the papers' published figure beside each row (kdrun/published.yaml)
with the protocol that selected it (last or best epoch, statistic over how many runs, epochs,
teacher), computes the row's figure by the same protocol (the best epoch from each run's
metrics.jsonl), marks what still differs, and lists the runs that failed or did not finish.
Draws the sweep's curves as PNGs."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from scipy import stats

import kdrun.evaluation as evaluation
from kdrun.errors import KdrunError
from kdrun.sinks.local import epoch_series

PUBLISHED = Path(__file__).with_name("published.yaml")
# Tabulated when --metric is not given (those some run has): the last epoch's test accuracy,
# the one at the best validation epoch, and the best epoch's by the test set itself.
DEFAULT_METRICS = ["test/acc", "test/acc_at_best_val", "test/best_acc"]
TEST_SELECTED = "test/best_acc"  # an epoch chosen by its test accuracy (any stage's)
TEST_SELECTED_NOTE = ("test-selected: the best of the epochs' test accuracies, chosen on the "
                      "test set itself and so optimistic; hold out a validation split "
                      "(dataset.val_size=N) and read test/acc_at_best_val")
UNGROUPED = ("seed",)  # what the rows average over
PLOTTED_SETTINGS = {"sigma": "sigma (input noise std)",
                    "method.label_noise": "student label noise rate",
                    "teacher.label_noise": "teacher label noise rate"}


@dataclass
class Run:
    path: Path
    settings: dict[str, str]  # the overrides the job was launched with
    config: dict[str, Any]
    results: dict[str, Any] | None
    error: str | None

    @property
    def status(self) -> str:
        if self.results is not None:
            return "ok"
        return "failed" if self.error is not None else "incomplete"


# How a published figure was selected (published.yaml's `selection`), as the table says it.
SELECTIONS = {"last": "last epoch", "best": "best test epoch",
              "best_val": "best validation epoch", "unstated": "epoch unstated"}
STATISTICS = ("mean", "median", "single", "unstated")  # over the paper's runs
PROTOCOL_DEFAULTS = {"selection": "unstated", "runs": None, "statistic": "unstated",
                     "epochs": None, "teacher": None, "copied_from": None, "std": None}


@dataclass
class Row:
    settings: tuple[str, ...]
    runs: list[Run]
    stats: dict[str, tuple[float, float | None, int]] = field(default_factory=dict)
    published: dict[str, Any] | None = None
    # the row's figure selected as `published` was, and what still differs from its protocol
    as_published: tuple[float, float | None, int] | None = None
    interval: tuple[float, float] | None = None  # 95 % CI of (row - published), n >= 2
    gaps: list[str] = field(default_factory=list)


def natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_runs(root: Path) -> list[Run]:
    """Every run directory under `root` (itself included): those Hydra made (.hydra/) and
    any other holding a results.json."""
    dirs = {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    dirs |= {p.parent for p in root.rglob("results.json")}
    return [read_run(d) for d in sorted(dirs, key=natural_key)]


def read_run(path: Path) -> Run:
    overrides = path / ".hydra" / "overrides.yaml"
    settings = {}
    for item in (yaml.safe_load(overrides.read_text()) or []) if overrides.is_file() else []:
        key, _, value = item.partition("=")
        settings[key.lstrip("+~")] = value
    config_file = next((p for p in (path / "config.yaml", path / ".hydra" / "config.yaml")
                        if p.is_file()), None)
    config = yaml.safe_load(config_file.read_text()) if config_file else {}
    results_file, error_file = path / "results.json", path / "error.txt"
    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    error = error_file.read_text().strip() if error_file.is_file() else None
    return Run(path, settings, config or {}, results, error)


def swept_keys(runs: list[Run]) -> list[str]:
    """The settings whose value differs between runs, in the order they were given."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.settings if k not in keys]
    return [k for k in keys if k not in UNGROUPED and not k.startswith("hydra.")
            and len({run.settings.get(k) for run in runs}) > 1]


def config_value(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def load_published(path: Path = PUBLISHED) -> list[dict[str, Any]]:
    """The published figures, each with its protocol (PROTOCOL_DEFAULTS where not given)."""
    entries = yaml.safe_load(path.read_text()) or []
    for i, entry in enumerate(entries):
        missing = {"paper", "source", "match", "metric", "value"} - set(entry)
        if missing:
            raise KdrunError(f"{path}: entry {i + 1} lacks {', '.join(sorted(missing))}: every "
                             "published figure needs paper, source, match, metric and value")
        for key, value in PROTOCOL_DEFAULTS.items():
            entry.setdefault(key, value)
        if entry["std"] is not None and entry["runs"] is not None and entry["runs"] < 2:
            raise KdrunError(f"{path}: entry {i + 1} gives a std over {entry['runs']} run: a "
                             "spread needs runs >= 2 (or runs: null when unstated)")
        if entry["selection"] not in SELECTIONS or entry["statistic"] not in STATISTICS:
            raise KdrunError(f"{path}: entry {i + 1} has selection {entry['selection']} and "
                             f"statistic {entry['statistic']}: use one of "
                             f"{', '.join(SELECTIONS)} and one of {', '.join(STATISTICS)}")
    return entries


def matching_entry(row: Row, metric: str, entries: list[dict],
                   paper: str | None = None) -> dict | None:
    """The published figure for `metric` whose `match` settings all equal the row's config:
    the first one a paper measured itself, or, given `paper`, the first of that paper's
    (copied figures included: its table as printed)."""
    config = next((r.config for r in row.runs if r.config), {})
    for entry in entries:
        if paper is None and entry["copied_from"]:
            continue
        if paper is not None and paper.lower() not in entry["paper"].lower():
            continue
        if entry["metric"] == metric and all(
                str(config_value(config, key)) == str(value)
                for key, value in entry["match"].items()):
            return entry
    return None


def selected_value(run: Run, metric: str, selection: str) -> float | None:
    """One run's `metric` selected as a paper selected its figure (not `best`: see
    compare_with_published): the one at its best validation epoch, or the last epoch's."""
    key = f"{metric}_at_best_val" if selection == "best_val" else metric
    value = (run.results or {}).get(key)
    return None if value is None else float(value)


def compare_with_published(row: Row, metric: str) -> None:
    """The row's figure by its published entry's protocol, the CI of the difference, and the
    ways the row's runs still differ from the entry's (runs, epochs, teacher). `best` takes the
    best of each run's evaluated epochs (metrics.jsonl)."""
    entry = row.published
    done = [r for r in row.runs if r.results is not None]
    if entry["selection"] == "best":
        curves = [epoch_series(r.path, metric) for r in done]
        values = [max(curve) for curve in curves if curve]
        fewest = min(map(len, curves), default=0)
        if fewest < 2:
            row.gaps.append(f"best of {fewest} evaluated epoch{'s' * (fewest != 1)}")
    else:
        values = [v for r in done
                  if (v := selected_value(r, metric, entry["selection"])) is not None]
    if not values:
        return
    n = len(values)
    centre = statistics.median(values) if entry["statistic"] == "median" else \
        statistics.fmean(values)
    spread = statistics.stdev(values) if n > 1 else None
    row.as_published = (centre, spread, n)
    if spread is not None and entry["statistic"] != "median":  # a t-interval is of means
        row.interval = difference_interval(values, entry)
    if entry["runs"] and n != entry["runs"]:
        row.gaps.append(f"{n} run{'s' * (n != 1)} vs {entry['runs']}")
    epochs = sorted({str(config_value(r.config, "epochs")) for r in done})
    if entry["epochs"] and epochs != [str(entry["epochs"])]:
        row.gaps.append(f"{'/'.join(epochs)} epochs vs {entry['epochs']}")
    if entry["teacher"]:
        teachers = sorted({teacher_name(r.results) for r in done})
        if teachers != [entry["teacher"]]:
            row.gaps.append(f"teacher {'/'.join(teachers)} vs {entry['teacher']}")


def difference_interval(values: list[float], entry: dict) -> tuple[float, float]:
    """95 % confidence interval of (the row's mean - the published figure), Student's t with
    Welch's degrees of freedom: the paper's own std over its runs where it prints both; where
    it gives only its run count (or a single run), its runs taken to spread as the row's do;
    where it gives neither, its figure taken as exact."""
    n, var = len(values), statistics.variance(values)
    delta = statistics.fmean(values) - entry["value"]
    m = 1 if entry["statistic"] == "single" else entry["runs"]
    if m and entry["std"] is not None:  # Welch: two spreads, each from its own runs
        ours, theirs = var / n, entry["std"] ** 2 / m
        se2 = ours + theirs
        df = se2 ** 2 / (ours ** 2 / (n - 1) + theirs ** 2 / (m - 1)) if se2 else n - 1
    else:  # one spread, the row's, estimated from its n runs
        se2, df = var * (1 / n + (1 / m if m else 0)), n - 1
    if se2 == 0:
        return delta, delta
    half = stats.t.ppf(0.975, df) * se2 ** 0.5
    return delta - half, delta + half


def teacher_name(results: dict[str, Any]) -> str:
    """A run's teacher as published.yaml names one: its zoo name, timm's weights, kdrun's own
    cached teacher, or the file it was given."""
    source = results.get("meta/teacher_source")
    if source is None:
        return "none"
    if source.startswith(("zoo:", "timm")):
        return source
    path = Path(source)
    return "kdrun-trained" if path.name == "teacher.pt" and path.parent.parent.name == \
        "teachers" else f"file {path.name}"


def protocol_label(entry: dict) -> str:
    """How the entry's figure was selected, in words ('unstated' for what the paper does not
    say; a row then takes its last epoch)."""
    parts = [SELECTIONS[entry["selection"]] + (" (last taken)" if entry["selection"] ==
                                               "unstated" else "")]
    if entry["statistic"] == "single":
        parts.append("one run")
    elif entry["runs"] or entry["statistic"] != "unstated":
        parts.append(f"{entry['statistic']} of {entry['runs'] or 'unstated runs'}")
    if entry["epochs"]:
        parts.append(f"{entry['epochs']} ep")
    return ", ".join(parts)


def summarise(runs: list[Run], metrics: list[str], entries: list[dict],
              paper: str | None = None) -> tuple[list[str], list[Row]]:
    keys = swept_keys(runs)
    rows: dict[tuple[str, ...], Row] = {}
    for run in runs:
        settings = tuple(run.settings.get(k, "") for k in keys)
        rows.setdefault(settings, Row(settings, [])).runs.append(run)
    for row in rows.values():
        done = [r.results for r in row.runs if r.results is not None]
        for metric in metrics:
            values = [float(res[metric]) for res in done if metric in res]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else None
                row.stats[metric] = (statistics.fmean(values), std, len(values))
        row.published = matching_entry(row, metrics[0], entries, paper)
        if row.published is not None:
            compare_with_published(row, metrics[0])
    return keys, list(rows.values())


def _cell(stat: tuple[float, float | None, int] | None) -> str:
    if stat is None:
        return "—"
    mean, std, _ = stat
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def table_rows(keys: list[str], rows: list[Row], metrics: list[str],
               sources: list[str]) -> list[list[str]]:
    """Header and body as text cells; `sources` collects the cited sources in order. Rows
    with a published figure get its protocol, the row's figure by that protocol, their
    difference (with its 95 % CI from 2 runs on, for means) and what still differs."""
    protocols = any(row.published is not None for row in rows)
    head = ["paper", "protocol", "kdrun, same protocol", "Δ", "differs"] if protocols \
        else ["paper", "Δ"]
    body = [[*keys, *map(metric_label, metrics), "n", *head]]
    for row in rows:
        n = max((s[2] for s in row.stats.values()), default=0)
        cells = ["—"] * len(head)
        if row.published is not None:
            entry = row.published
            source = f"{entry['paper']}, {entry['source']}" + (
                f" (copied from {entry['copied_from']})" if entry["copied_from"] else "")
            if source not in sources:
                sources.append(source)
            paper = f"{entry['value']:.2f}" + (f" ± {entry['std']:.2f}" if entry["std"] else "")
            cells = [f"{paper} [{sources.index(source) + 1}]", protocol_label(entry),
                     _cell(row.as_published), "—", "; ".join(row.gaps) or "—"]
            if row.as_published is not None:
                cells[3] = f"{row.as_published[0] - entry['value']:+.2f}" + (
                    f" [{row.interval[0]:+.2f}, {row.interval[1]:+.2f}]" if row.interval else "")
        body.append([*row.settings, *(_cell(row.stats.get(m)) for m in metrics), str(n),
                     *cells])
    return body


def metric_label(metric: str) -> str:
    if metric.endswith(TEST_SELECTED):
        return f"{metric} (test-selected)"
    return evaluation.label(metric)


def notes(metrics: list[str]) -> list[str]:
    return [TEST_SELECTED_NOTE] if any(m.endswith(TEST_SELECTED) for m in metrics) else []


def left_out(rows: list[Row], root: Path) -> list[str]:
    lines = []
    for row in rows:
        for run in row.runs:
            if run.status == "ok":
                continue
            settings = " ".join(f"{k}={v}" for k, v in run.settings.items())
            reason = f": {run.error.splitlines()[0]}" if run.error else " (no results.json)"
            lines.append(f"{run.status}: {run.path.relative_to(root)} [{settings}]{reason}")
    return lines


def latex_escape(text: str) -> str:
    for plain, latex in (("_", r"\_"), ("%", r"\%"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"),
                         ("—", "--")):
        text = text.replace(plain, latex)
    return text


def render(fmt: str, keys: list[str], rows: list[Row], metrics: list[str], root: Path) -> str:
    sources: list[str] = []
    cells = table_rows(keys, rows, metrics, sources)
    missing = left_out(rows, root)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*cells[0], "source"])
        for row, line in zip(rows, cells[1:]):
            published = row.published
            writer.writerow([*line, f"{published['paper']}, {published['source']}"
                             if published else ""])
        for line in missing:
            print(line, file=sys.stderr)
        return out.getvalue()
    if fmt == "latex":
        lines = [r"\begin{tabular}{" + "l" * len(keys) + "r" * (len(cells[0]) - len(keys)) + "}",
                 r"\hline", " & ".join(latex_escape(c) for c in cells[0]) + r" \\", r"\hline"]
        lines += [" & ".join(latex_escape(c) for c in line) + r" \\" for line in cells[1:]]
        lines += [r"\hline", r"\end{tabular}"]
        lines += [f"% [{i + 1}] {s}" for i, s in enumerate(sources)]
        lines += [f"% {note}" for note in notes(metrics)]
        lines += [f"% {line}" for line in missing]
        return "\n".join(lines) + "\n"
    lines = ["| " + " | ".join(line) + " |" for line in cells]
    lines.insert(1, "|" + "|".join("---" if i < len(keys) else "---:"
                                   for i in range(len(cells[0]))) + "|")
    if notes(metrics):
        lines += ["", *notes(metrics)]
    if sources:
        lines += ["", "Published figures:"] + [f"[{i + 1}] {s}" for i, s in enumerate(sources)]
    if missing:
        lines += ["", "Not in the table:"] + [f"- {line}" for line in missing]
    return "\n".join(lines) + "\n"


def plot_curves(keys: list[str], rows: list[Row], metric: str, out_dir: Path) -> list[Path]:
    """Accuracy against each swept noise setting, robust accuracy against the PGD budget, and
    accuracy per Noisy Student round: one line per combination of the other settings (named
    key=value), the mean over a row's runs with their standard deviation as error bars,
    titled, on a 0-100 % axis, as PNG and PDF."""
    import matplotlib.pyplot as plt

    from kdrun.evaluation.plots import save_figure  # matplotlib only when curves are drawn

    written = []

    def draw(curves: dict[str, list[tuple[float, float, float]]], xlabel: str, ylabel: str,
             title: str, name: str) -> None:
        fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
        for label, points in curves.items():
            xs, ys, errors = zip(*sorted(points))
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label)
        ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(0, 100), title=title)
        ax.grid(alpha=0.3)
        if len(curves) > 1 or next(iter(curves)) != "all runs":
            ax.legend(fontsize="small")
        written.append(save_figure(fig, out_dir / f"{name}.png"))

    def named(settings: tuple[str, ...], skip: int | None = None) -> str:
        return ", ".join(f"{k}={v}" for i, (k, v) in enumerate(zip(keys, settings))
                         if i != skip) or "all runs"

    runs_per_row = max((len(row.runs) for row in rows), default=1)
    spread = f" (mean ± std over {runs_per_row} runs)" if runs_per_row > 1 else ""
    for key, label in PLOTTED_SETTINGS.items():
        if key not in keys:
            continue
        at = keys.index(key)
        curves: dict[str, list[tuple[float, float, float]]] = {}
        for row in rows:
            if metric in row.stats:
                mean, std, _ = row.stats[metric]
                curves.setdefault(named(row.settings, at), []).append(
                    (float(row.settings[at]), mean, std or 0.0))
        if curves:
            draw(curves, label, f"{metric} (%)", f"{metric} against {key}{spread}",
                 f"{metric.replace('/', '_')}_vs_{key.replace('.', '_')}")

    labels: dict[str, tuple[str, str]] = {}
    series: dict[str, dict[str, dict[float, list[float]]]] = {}  # curve -> row -> x -> values
    for row in rows:
        for results in (r.results for r in row.runs if r.results is not None):
            for name, (xlabel, title, points) in run_curves(results).items():
                labels[name] = (xlabel, title)
                line = series.setdefault(name, {}).setdefault(named(row.settings), {})
                for x, value in points.items():
                    line.setdefault(x, []).append(value)
    for name, lines in series.items():
        curves = {label: [(x, statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                          for x, v in line.items()] for label, line in lines.items()}
        draw(curves, labels[name][0], "accuracy (%)", labels[name][1] + spread, name)
    return written


def run_curves(results: dict[str, Any]) -> dict[str, tuple[str, str, dict[float, float]]]:
    """One run's curves: each evaluation's, and the test accuracy per Noisy Student round."""
    rounds = {float(m.group(1)): value for key, value in results.items()
              if (m := re.fullmatch(r"round(\d+)/test/acc", key))}
    found = evaluation.curves(results)
    if rounds:
        found["acc_per_round"] = ("Noisy Student round", "test accuracy per round", rounds)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="kdrun-report", description="The table of a sweep's runs, beside the papers' "
        "published figures; runs that failed or did not finish are listed.")
    parser.add_argument("dir", type=Path, help="a multirun directory, or a parent of run dirs")
    parser.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    parser.add_argument("--out", type=Path, help="write the table here (default: stdout)")
    parser.add_argument("--metric", action="append", dest="metrics",
                        help=f"a results.json key to tabulate (repeatable; default: those "
                        f"of {', '.join(DEFAULT_METRICS)} the runs have); the first one is "
                        "compared")
    parser.add_argument("--published", type=Path, default=PUBLISHED,
                        help="the YAML of published figures")
    parser.add_argument("--paper", help="compare with this paper's table as printed, its "
                        "copied baselines included (a part of its name, e.g. DKD); default: "
                        "each row's figure from the paper that measured it")
    parser.add_argument("--plots", type=Path,
                        help="folder for the PNG curves (default: DIR/report)")
    args = parser.parse_args(argv)
    try:
        text, plots = report(args.dir, args.format, args.metrics, args.published,
                             args.plots or args.dir / "report", args.paper)
    except KdrunError as err:
        print(f"kdrun-report: {err}", file=sys.stderr)
        sys.exit(1)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    for path in plots:
        print(f"plot: {path}", file=sys.stderr)


def report(root: Path, fmt: str, metrics: list[str] | None, published: Path,
           plots_dir: Path, paper: str | None = None) -> tuple[str, list[Path]]:
    """The table (and curves) of the runs under `root`; `metrics` None: the default ones."""
    if not root.is_dir():
        raise KdrunError(f"{root} is not a directory: give a multirun directory "
                         "(e.g. outputs/multirun/<date>/<time>) or a parent of run directories")
    runs = find_runs(root)
    if not runs:
        raise KdrunError(f"no run directories under {root} (none holds .hydra/ or "
                         "results.json): give the directory a sweep wrote")
    present = {key for run in runs for key in (run.results or {})}
    if not metrics:
        metrics = ([m for m in DEFAULT_METRICS if m in present] or DEFAULT_METRICS[:1]) + \
            evaluation.report_metrics(sorted(present))
    missing = [m for m in metrics if m not in present and present]
    if missing:
        known = ", ".join(sorted(k for k in present if not k.startswith("meta/"))[:12])
        raise KdrunError(f"--metric {missing[0]}: no run under {root} has it; its runs have "
                         f"{known}, ...")
    entries = load_published(published)
    if paper is not None:
        papers = sorted({e["paper"] for e in entries})
        named = [p for p in papers if paper.lower() in p.lower()]
        if len(named) != 1:
            raise KdrunError(f"--paper {paper} names {len(named)} of the papers in {published}: "
                             f"give a part of one name only ({'; '.join(named or papers)})")
    keys, rows = summarise(runs, metrics, entries, paper)
    return render(fmt, keys, rows, metrics, root), plot_curves(keys, rows, metrics[0], plots_dir)


if __name__ == "__main__":
    main()
