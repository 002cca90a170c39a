"""Model selection without the test set (issue 19, item 7): a seeded validation split held out
of the training images, validation metrics every evaluation, the test accuracy at the best
validation epoch, the default objective, and kdrun-report's label on test-selected figures."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from kdrun.data import load_dataset
from kdrun.errors import ConfigError
from kdrun.jobs import train
from kdrun.outcome import objective
from kdrun.report import report

from conftest import TINY, compose_config, read_results


def image_keys(split) -> set[bytes]:
    return {image.numpy().tobytes() for image in split.images}


def test_the_validation_split_is_held_out_of_the_training_images_seeded():
    cfg = compose_config("dataset.val_size=40")
    full = load_dataset(compose_config().dataset, cfg.cache_dir)
    data = load_dataset(cfg.dataset, cfg.cache_dir)
    assert len(data.val) == 40 and len(data.train) == len(full.train) - 40
    assert not image_keys(data.val) & image_keys(data.train)
    assert image_keys(data.val) | image_keys(data.train) == image_keys(full.train)
    assert torch.equal(load_dataset(cfg.dataset, cfg.cache_dir).val.labels, data.val.labels)
    other = load_dataset(compose_config("dataset.val_size=40", "dataset.split_seed=1").dataset,
                         cfg.cache_dir)
    assert image_keys(other.val) != image_keys(data.val)
    assert full.val is None


def test_a_validation_split_as_large_as_the_training_set_is_one_clear_error():
    cfg = compose_config("dataset.val_size=100000")
    with pytest.raises(ConfigError, match="dataset.val_size=100000 leaves no training images"):
        load_dataset(cfg.dataset, cfg.cache_dir)


def test_a_run_reports_the_test_accuracy_at_its_best_validation_epoch(tmp_path):
    cfg = compose_config("method=vanilla", "epochs=4", "dataset.val_size=48")
    results = train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row for row in rows if "val/acc" in row]
    assert [row["epoch"] for row in evaluated] == [1, 2, 3, 4]
    best = max(evaluated, key=lambda row: row["val/acc"])  # the first of equals, as the run
    assert results["val/best_epoch"] == best["epoch"]
    assert results["val/best_acc"] == best["val/acc"]
    assert results["test/acc_at_best_val"] == best["test/acc"]
    assert results["val/acc"] == evaluated[-1]["val/acc"] and "val/loss" in results
    assert objective(cfg, results) == results["val/acc"]  # the default objective with a split


def test_without_a_validation_split_the_objective_stays_test_acc_and_nothing_is_made_up(
        tmp_path):
    cfg = compose_config("method=vanilla")
    results = train(cfg, tmp_path)
    assert objective(cfg, results) == results["test/acc"]
    assert not any(key.startswith("val/") or key == "test/acc_at_best_val" for key in results)
    chosen = compose_config("method=vanilla", "dataset.val_size=48", "objective=test/loss")
    assert objective(chosen, {**results, "val/acc": 1.0}) == results["test/loss"]


def write_run(path, results: dict, overrides: list[str]) -> None:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (path / "results.json").write_text(json.dumps(results))


def test_kdrun_report_labels_test_selected_figures(tmp_path):
    write_run(tmp_path / "0", {"test/acc": 70.0, "test/best_acc": 72.0,
                               "test/acc_at_best_val": 71.0}, ["seed=0"])
    (tmp_path / "published.yaml").write_text("[]")
    text, _ = report(tmp_path, "md", None, tmp_path / "published.yaml", tmp_path / "plots")
    header = text.splitlines()[0]
    assert "test/best_acc (test-selected)" in header
    assert "test/acc_at_best_val |" in header and "test/acc |" in header
    assert "test-selected: the best of the epochs' test accuracies" in text


@pytest.mark.slow
def test_a_sweep_without_a_metric_choice_tables_the_validation_pick(tmp_path, cli_env):
    proc = subprocess.run(["kdrun", "-m", *TINY, "method=vanilla", "seed=0,1",
                           "dataset.val_size=48", f"hydra.sweep.dir={tmp_path}/sweep"],
                          env=cli_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [job["objective"] for job in summary] == ["val/acc", "val/acc"]
    assert summary[0]["value"] == read_results(tmp_path / "sweep" / "0")["val/acc"]
    table = subprocess.run(["kdrun-report", str(tmp_path / "sweep")], env=cli_env,
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "test/acc_at_best_val" in table.stdout.splitlines()[0]
