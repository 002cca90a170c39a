"""kdrun-report on a sweep written here in kdrun's on-disk layout (with a failed and an
unfinished job), and the repository's YAML of published figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdrun.methods import METHODS
from kdrun.report import PUBLISHED, TEST_SELECTED_NOTE, load_published, main

from conftest import compose_config

PUBLISHED_TEST = [
    {"paper": "Paper A", "source": "Table 1, row 2", "metric": "test/acc", "value": 76.55,
     "match": {"method.name": "vanilla", "dataset.name": "cifar100"}},
    {"paper": "Paper B", "source": "Table 3", "metric": "test/acc", "value": 78.5,
     "match": {"method.name": "ddgsd", "dataset.name": "cifar100"}},
    {"paper": "Paper B", "source": "Table 4", "metric": "test/acc", "value": 99.0,
     "match": {"method.name": "ddgsd", "dataset.name": "cifar10"}},  # another data set
]


def write_job(sweep: Path, job: int, overrides: list[str], results: dict | None = None,
              error: str | None = None, sigma: float = 0.0, epochs: int = 200,
              test_curve: list[float] = ()) -> None:
    run = sweep / str(job)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    method = next(o for o in overrides if o.startswith("method=")).split("=")[1]
    config = {"method": {"name": method}, "dataset": {"name": "cifar100"}, "sigma": sigma,
              "epochs": epochs}
    with open(run / "metrics.jsonl", "w") as f:  # as the trainer logs: steps, then epochs
        for epoch, acc in enumerate(test_curve, 1):
            f.write(json.dumps({"step": 10 * epoch - 5, "train/batch_loss": 1.0}) + "\n")
            f.write(json.dumps({"step": 10 * epoch, "epoch": epoch, "test/acc": acc,
                                "teacher/test/acc": 99.0}) + "\n")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if results is not None:
        (run / "results.json").write_text(json.dumps(results))
    if error is not None:
        (run / "error.txt").write_text(error + "\n")


@pytest.fixture
def sweep(tmp_path) -> Path:
    sweep = tmp_path / "multirun"
    write_job(sweep, 0, ["method=vanilla", "seed=0"], {"test/acc": 70.0, "test/best_acc": 71.0})
    write_job(sweep, 1, ["method=vanilla", "seed=1"], {"test/acc": 72.0, "test/best_acc": 72.5})
    write_job(sweep, 2, ["method=ddgsd", "seed=0"], {"test/acc": 75.0, "test/best_acc": 75.5})
    write_job(sweep, 3, ["method=ddgsd", "seed=1"], error="CIFAR-100 not found in /data")
    write_job(sweep, 4, ["method=kd", "seed=0"])  # started, never finished
    write_job(sweep, 10, ["method=kd", "seed=1"], {"test/acc": 60.0})
    (tmp_path / "published.yaml").write_text(yaml.safe_dump(PUBLISHED_TEST))
    return sweep


def run_report(tmp_path: Path, sweep: Path, *args: str) -> str:
    out = tmp_path / "table.txt"
    main([str(sweep), "--published", str(tmp_path / "published.yaml"), "--out", str(out),
          *args])
    return out.read_text()


UNSTATED = "epoch unstated (last taken)"
PROTOCOL_HEAD = "paper | protocol | kdrun, same protocol | Δ | differs"
CI = "-5.55 [-18.26, +7.16]"  # t(0.975, 1 df) x 1.41 / sqrt(2) = 12.71 around -5.55


def test_the_markdown_table_groups_seeds_and_lists_what_is_missing(tmp_path, sweep):
    assert run_report(tmp_path, sweep) == f"""\
| method | test/acc | test/best_acc (test-selected) | n | {PROTOCOL_HEAD} |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
| vanilla | 71.00 ± 1.41 | 71.75 ± 1.06 | 2 | 76.55 [1] | {UNSTATED} | 71.00 ± 1.41 | {CI} | — |
| ddgsd | 75.00 | 75.50 | 1 | 78.50 [2] | {UNSTATED} | 75.00 | -3.50 | — |
| kd | 60.00 | — | 1 | — | — | — | — | — |

{TEST_SELECTED_NOTE}

Published figures:
[1] Paper A, Table 1, row 2
[2] Paper B, Table 3

Not in the table:
- failed: 3 [method=ddgsd seed=1]: CIFAR-100 not found in /data
- incomplete: 4 [method=kd seed=0] (no results.json)
"""


def test_csv_and_latex_carry_the_same_rows(tmp_path, sweep, capsys):
    csv_text = run_report(tmp_path, sweep, "--format", "csv")
    assert csv_text.splitlines()[:3] == [
        "method,test/acc,test/best_acc (test-selected),n,paper,protocol,\"kdrun, same protocol\","
        "Δ,differs,source",
        f"vanilla,71.00 ± 1.41,71.75 ± 1.06,2,76.55 [1],{UNSTATED},71.00 ± 1.41,"
        "\"-5.55 [-18.26, +7.16]\",—,\"Paper A, Table 1, row 2\"",
        f"ddgsd,75.00,75.50,1,78.50 [2],{UNSTATED},75.00,-3.50,—,\"Paper B, Table 3\""]
    assert "failed: 3 [method=ddgsd seed=1]" in capsys.readouterr().err
    latex = run_report(tmp_path, sweep, "--format", "latex", "--metric", "test/acc")
    assert (r"vanilla & 71.00 $\pm$ 1.41 & 2 & 76.55 [1] & " + UNSTATED +
            r" & 71.00 $\pm$ 1.41 & -5.55 [-18.26, +7.16] & -- \\") in latex
    assert latex.startswith(r"\begin{tabular}{lrrrrrrr}")
    assert "% incomplete: 4 [method=kd seed=0] (no results.json)" in latex


def test_curves_are_drawn_for_a_sigma_sweep_and_pgd_budgets(tmp_path):
    sweep = tmp_path / "sigma"
    for job, (method, sigma) in enumerate([(m, s) for m in ("gaussian_aug", "soft_randomization")
                                          for s in (0.1, 0.2)]):
        results = {"test/acc": 70 - 10 * sigma, "pgd/linf/eps2/acc": 30.0,
                   "pgd/linf/eps8/acc": 2.0}
        write_job(sweep, job, [f"method={method}", f"sigma={sigma}"], results, sigma=sigma)
    (tmp_path / "published.yaml").write_text("[]")
    table = run_report(tmp_path, sweep, "--plots", str(tmp_path / "plots"))
    # the evaluations' keys are columns by default, headed by the evaluation that owns them
    assert "| method | sigma | test/acc | PGD L-inf 2/255 | PGD L-inf 8/255 | n |" in table
    assert "| soft_randomization | 0.2 | 68.00 | 30.00 | 2.00 | 1 | — | — |" in table
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["robust_acc_vs_eps.pdf", "robust_acc_vs_eps.png", "test_acc_vs_sigma.pdf",
                     "test_acc_vs_sigma.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:4] in (b"\x89PNG", b"%PDF") for p in plots)


def test_no_runs_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        f"kdrun-report: no run directories under {tmp_path} (none holds .hydra/ or "
        "results.json): give the directory a sweep wrote\n")


def test_every_published_figure_names_its_source_protocol_and_real_settings():
    """Each figure says how it was selected, and matches keys a run of its method has (or
    says that kdrun lacks the method)."""
    from omegaconf import OmegaConf

    raw = yaml.safe_load(PUBLISHED.read_text())
    entries = load_published(PUBLISHED)
    assert len(entries) >= 70
    configs = {}
    for given, entry in zip(raw, entries):
        assert entry["source"].strip() and entry["paper"].strip()
        assert 0 < entry["value"] <= 100
        assert {"selection", "statistic", "runs", "epochs"} <= given.keys(), entry["source"]
        method = entry["match"]["method.name"]
        if method not in METHODS.names():
            assert "kdrun has no" in entry.get("note", ""), method
            continue
        if method not in configs:
            configs[method] = compose_config(f"method={method}", tiny=False)
        for key in entry["match"]:
            assert OmegaConf.select(configs[method], key, default="<absent>") != "<absent>", key
        if entry["teacher"] and entry["teacher"].startswith("zoo:"):
            from kdrun.weights import lookup

            teacher = lookup(entry["teacher"], "teacher")
            assert teacher.arch == entry["match"]["teacher.arch"]


def test_an_unknown_metric_is_one_line_listing_the_known_keys(tmp_path, sweep, capsys):
    """Issue 18, item 5: not a column of dashes."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--metric", "no/such/key"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdrun-report: --metric no/such/key: no run under")
    assert "its runs have test/acc, test/best_acc" in err and "\n" not in err


CRD_KD = {"paper": "Tian et al., CRD", "source": "RepDistiller README", "metric": "test/acc",
          "value": 70.66, "match": {"method.name": "kd", "dataset.name": "cifar100"},
          "selection": "last", "epochs": 240, "teacher": "zoo:mdistiller/resnet56"}
PROTOCOLS = [
    {"paper": "Zhao et al., DKD", "source": "mdistiller README", "metric": "test/acc",
     "value": 71.97, "match": {"method.name": "dkd", "dataset.name": "cifar100"},
     "selection": "best", "runs": 5, "statistic": "mean", "epochs": 240,
     "teacher": "zoo:mdistiller/resnet56"},
    {**CRD_KD, "paper": "Zhao et al., DKD", "source": "mdistiller README, KD row",
     "selection": "best", "runs": 5, "statistic": "mean", "copied_from": "Tian et al., CRD"},
    CRD_KD,
]


def test_each_row_is_computed_by_its_figures_protocol_and_what_differs_is_marked(tmp_path):
    """DKD's figure is the best test epoch, mean of 5: the row takes each run's best epoch
    from metrics.jsonl (not its last), and says it has 2 runs, not 5; the KD row is set
    beside CRD's own last-epoch figure (not DKD's copy of it), whose epochs and teacher the
    runs do not share; --paper DKD shows DKD's table as printed, the copy marked."""
    sweep = tmp_path / "multirun"
    zoo = {"meta/teacher_source": "zoo:mdistiller/resnet56"}
    write_job(sweep, 0, ["method=dkd", "seed=0"], {"test/acc": 71.0, **zoo}, epochs=240,
              test_curve=[60.0, 72.5, 71.0])
    write_job(sweep, 1, ["method=dkd", "seed=1"], {"test/acc": 72.0, **zoo}, epochs=240,
              test_curve=[61.0, 71.5, 72.0])
    write_job(sweep, 2, ["method=kd", "seed=0"],
              {"test/acc": 70.0, "meta/teacher_source": "/cache/teachers/x/teacher.pt"},
              epochs=20, test_curve=[65.0, 70.0])
    (tmp_path / "published.yaml").write_text(yaml.safe_dump(PROTOCOLS))
    table = run_report(tmp_path, sweep, "--metric", "test/acc")
    # the paper's 5 runs taken to spread as these 2: t(0.975, 1) * 0.354 * sqrt(1/2 + 1/5)
    assert ("| dkd | 71.50 ± 0.71 | 2 | 71.97 [1] | best test epoch, mean of 5, 240 ep | "
            "72.25 ± 0.35 | +0.28 [-3.48, +4.04] | 2 runs vs 5 |") in table
    assert ("| kd | 70.00 | 1 | 70.66 [2] | last epoch, 240 ep | 70.00 | -0.66 | "
            "20 epochs vs 240; teacher kdrun-trained vs zoo:mdistiller/resnet56 |") in table
    assert "[2] Tian et al., CRD, RepDistiller README" in table

    as_printed = run_report(tmp_path, sweep, "--metric", "test/acc", "--paper", "DKD")
    assert ("| kd | 70.00 | 1 | 70.66 [2] | best test epoch, mean of 5, 240 ep | 70.00 | "
            "-0.66 | 1 run vs 5; 20 epochs vs 240; teacher kdrun-trained vs "
            "zoo:mdistiller/resnet56 |") in as_printed
    assert "[2] Zhao et al., DKD, mdistiller README, KD row (copied from Tian et al., CRD)" \
        in as_printed
    with pytest.raises(SystemExit):  # "et al" names both papers: which table is meant?
        main([str(sweep), "--published", str(tmp_path / "published.yaml"), "--paper", "et al"])


def test_the_interval_uses_the_papers_own_spread_when_it_gives_one(tmp_path):
    """DIST prints mean ± std: the difference's CI is then Welch's over both sets of runs."""
    from scipy import stats

    sweep = tmp_path / "multirun"
    for seed, acc in enumerate([74.0, 74.6, 74.3]):
        write_job(sweep, seed, ["method=dist", f"seed={seed}"], {"test/acc": acc})
    entry = {"paper": "Huang et al., DIST", "source": "README", "metric": "test/acc",
             "value": 74.43, "std": 0.24, "runs": 5, "statistic": "mean", "selection": "last",
             "match": {"method.name": "dist"}}
    (tmp_path / "published.yaml").write_text(yaml.safe_dump([entry]))
    table = run_report(tmp_path, sweep)
    z = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])  # five runs with DIST's mean and std
    theirs = 74.43 + 0.24 * z / z.std(ddof=1)
    welch = stats.ttest_ind([74.0, 74.6, 74.3], theirs, equal_var=False)
    low, high = welch.confidence_interval(0.95)
    assert f"| 74.43 ± 0.24 [1] | last epoch, mean of 5 | 74.30 ± 0.30 | -0.13 " \
           f"[{low:+.2f}, {high:+.2f}] | 3 runs vs 5 |" in table
