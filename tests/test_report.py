"""kdrun-report on a sweep written here in kdrun's on-disk layout (with a failed and an
unfinished job), and the repository's YAML of published figures."""

from __future__ import annotations

import json
from pathlib import Path

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
              error: str | None = None, sigma: float = 0.0) -> None:
    run = sweep / str(job)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    method = next(o for o in overrides if o.startswith("method=")).split("=")[1]
    config = {"method": {"name": method}, "dataset": {"name": "cifar100"}, "sigma": sigma}
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


def test_the_markdown_table_groups_seeds_and_lists_what_is_missing(tmp_path, sweep):
    assert run_report(tmp_path, sweep) == f"""\
| method | test/acc | test/best_acc (test-selected) | n | paper | Δ |
|---|---:|---:|---:|---:|---:|
| vanilla | 71.00 ± 1.41 | 71.75 ± 1.06 | 2 | 76.55 [1] | -5.55 |
| ddgsd | 75.00 | 75.50 | 1 | 78.50 [2] | -3.50 |
| kd | 60.00 | — | 1 | — | — |

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
        "method,test/acc,test/best_acc (test-selected),n,paper,Δ,source",
        "vanilla,71.00 ± 1.41,71.75 ± 1.06,2,76.55 [1],-5.55,\"Paper A, Table 1, row 2\"",
        "ddgsd,75.00,75.50,1,78.50 [2],-3.50,\"Paper B, Table 3\""]
    assert "failed: 3 [method=ddgsd seed=1]" in capsys.readouterr().err
    latex = run_report(tmp_path, sweep, "--format", "latex", "--metric", "test/acc")
    assert r"vanilla & 71.00 $\pm$ 1.41 & 2 & 76.55 [1] & -5.55 \\" in latex
    assert latex.startswith(r"\begin{tabular}{lrrrr}")
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


def test_every_published_figure_names_its_source_and_matches_real_settings():
    entries = load_published(PUBLISHED)
    assert entries
    cfg = compose_config(tiny=False)
    for entry in entries:
        assert entry["source"].strip() and entry["paper"].strip()
        assert 0 < entry["value"] <= 100
        for key in entry["match"]:
            assert key in ("method.name", "dataset.name", "teacher.arch", "student.arch") or \
                   key in cfg, key
        METHODS.get(entry["match"]["method.name"])  # a method kdrun has


def test_an_unknown_metric_is_one_line_listing_the_known_keys(tmp_path, sweep, capsys):
    """Issue 18, item 5: not a column of dashes."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--metric", "no/such/key"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdrun-report: --metric no/such/key: no run under")
    assert "its runs have test/acc, test/best_acc" in err and "\n" not in err
