"""Scaling out through the real CLI: torchrun (gloo DDP on CPU), and sweeps on Hydra's joblib
and submitit launchers and its Optuna sweeper, with a failing job in a sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY, read_results

pytestmark = pytest.mark.slow

# No BatchNorm (ConvNeXt normalises each image by itself), so two ranks holding half of each
# global batch compute exactly the single-process step: only float summation order differs.
NO_BATCHNORM = ["dataset=synthetic", "dataset.samples=256", "dataset.image_size=32",
                "student.arch=timm/convnext_atto", "method=vanilla", "epochs=2",
                "trainer.batch_size=32", "trainer.device=cpu", "trainer.precision=fp32",
                "trainer.channels_last=false", "trainer.progress=false", "eval=clean",
                "logger=none"]
STEPS_PER_EPOCH = 6  # 205 training images (256 less the 20 % test share) in batches of 32


def run(command: list[str], env: dict, cwd: Path, check: bool = True):
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{command[:6]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def torchrun(*args: str, env: dict, cwd: Path):
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "kdrun", *args], env, cwd)


def kdrun(*args: str, env: dict, cwd: Path, check: bool = True):
    return run(["kdrun", *args], env, cwd, check)


def epoch_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "epoch" in row]


def test_two_ddp_processes_train_as_one_process_does_and_resume(tmp_path, cli_env):
    kdrun(*NO_BATCHNORM, f"hydra.run.dir={tmp_path}/single", env=cli_env, cwd=tmp_path)
    # the DDP run is stopped after its first epoch, then resumed for the second
    torchrun(*NO_BATCHNORM, f"trainer.max_steps={STEPS_PER_EPOCH}",
             f"hydra.run.dir={tmp_path}/ddp", env=cli_env, cwd=tmp_path)
    torchrun(*NO_BATCHNORM, "trainer.resume=true", f"hydra.run.dir={tmp_path}/ddp",
             env=cli_env, cwd=tmp_path)
    single, ddp = read_results(tmp_path / "single"), read_results(tmp_path / "ddp")
    for key in ("test/loss", "train/loss", "calib/ece"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-4), key
    assert ddp["test/acc"] == single["test/acc"] and ddp["train/acc"] == single["train/acc"]
    assert ddp["train/steps"] == single["train/steps"] == 2 * STEPS_PER_EPOCH
    # the totals cover the whole run, both epochs (the resumed one kept the first's count),
    # counted over both ranks
    images = {name: r["train/img_s"] * r["train/time_s"] for name, r in
              (("single", single), ("ddp", ddp))}
    assert images["ddp"] == pytest.approx(images["single"])
    # rank 0 alone writes: one row per epoch, no second record, nothing outside the run dir
    assert [row["epoch"] for row in epoch_rows(tmp_path / "ddp")] == [1, 2]
    assert "resumed from" in (tmp_path / "ddp" / "cli.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]
    assert not list((tmp_path / "ddp").glob("error*"))


@pytest.mark.parametrize(("method", "keys"), [
    ("kd", ["teacher/test/acc", "test/agreement"]),  # the teacher trained under DDP, cached
    ("afd", ["peer1/test/acc", "train/loss/disc"]),  # two optimisers, a discriminator
    ("crd", ["train/crd"]),  # each batch's indices, a memory bank moved by the global batch
])
def test_methods_with_a_teacher_or_several_optimisers_run_under_ddp(tmp_path, cli_env, method,
                                                                     keys):
    settings = ["method.negatives=16"] if method == "crd" else []
    torchrun(*TINY, f"method={method}", *settings, f"hydra.run.dir={tmp_path}/run",
             env=cli_env, cwd=tmp_path)
    results = read_results(tmp_path / "run")
    for key in ["test/acc", *keys]:
        assert 0 <= results[key] <= 100 or key.startswith("train/"), key
    assert (tmp_path / "run" / "checkpoints" / "student.pt").is_file()
    assert [row["epoch"] for row in epoch_rows(tmp_path / "run")] == [1]
    if method == "kd":
        assert len(list((tmp_path / "cache" / "teachers").glob("*/teacher.pt"))) == 1


def test_joblib_jobs_run_in_parallel_and_share_one_teacher_training(tmp_path, cli_env):
    kdrun("-m", *TINY, "method=kd", "alpha=0.5,0.9", "hydra/launcher=joblib",
          "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}/sweep", env=cli_env,
          cwd=tmp_path)
    jobs = [tmp_path / "sweep" / str(i) for i in range(2)]
    trained_here = ["teacher/train/loss" in (job / "metrics.jsonl").read_text() for job in jobs]
    assert sorted(trained_here) == [False, True]
    assert len({read_results(job)["teacher/test/acc"] for job in jobs}) == 1
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [(job["dir"], job["status"]) for job in summary] == [("0", "ok"), ("1", "ok")]


def test_a_submitit_job_with_two_tasks_trains_as_one_ddp_run(tmp_path, cli_env):
    # what a SLURM job with one task per GPU does, on this machine
    kdrun("-m", *TINY, "method=vanilla", "hydra/launcher=submitit_local",
          "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=5",
          f"hydra.sweep.dir={tmp_path}/sweep", env=cli_env, cwd=tmp_path)
    results = read_results(tmp_path / "sweep" / "0")
    assert 0 <= results["test/acc"] <= 100 and results["meta/processes"] == 2
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))) == 2
    assert [row["epoch"] for row in epoch_rows(tmp_path / "sweep" / "0")] == [1]


def test_optuna_searches_alpha_and_reports_the_best_objective(tmp_path, cli_env):
    proc = kdrun("-m", *TINY, "method=kd", "objective=test/loss", "hydra/sweeper=optuna",
                 "hydra.sweeper.direction=minimize", "hydra.sweeper.n_trials=2",
                 "hydra.sweeper.sampler.seed=0", "alpha=interval(0.1,0.9)",
                 f"hydra.sweep.dir={tmp_path}/sweep", env=cli_env, cwd=tmp_path)
    assert "the sweeper tunes on test/loss, the test set" in proc.stdout + proc.stderr
    trials = [read_results(tmp_path / "sweep" / str(i)) for i in range(2)]
    alphas = [yaml.safe_load((tmp_path / "sweep" / str(i) / ".hydra" / "config.yaml").read_text())
              ["alpha"] for i in range(2)]
    assert alphas[0] != alphas[1] and all(0.1 <= a <= 0.9 for a in alphas)
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(t["test/loss"] for t in trials))


def test_a_failing_job_is_recorded_and_the_sweep_keeps_the_other_results(tmp_path, cli_env):
    # ConvNeXt cannot take 16-pixel images: a crash deep inside the run, not a config error
    proc = kdrun("-m", *TINY, "method=vanilla", "student.arch=timm/convnext_atto,resnet8",
                 f"hydra.sweep.dir={tmp_path}/sweep", env=cli_env, cwd=tmp_path, check=False)
    assert proc.returncode == 1
    sweep = tmp_path / "sweep"
    assert "Kernel size can't be greater" in (sweep / "0" / "error.txt").read_text()
    assert 0 <= read_results(sweep / "1")["test/acc"] <= 100  # ran after the failure
    summary = json.loads((sweep / "summary.json").read_text())
    assert [job["status"] for job in summary] == ["failed", "ok"]
    assert summary[1]["objective"] == "test/acc" and summary[1]["value"] is not None
    assert "1 failed" in proc.stderr + proc.stdout


def test_ddp_ranks_share_the_synthesis_and_make_the_one_process_pool(tmp_path, cli_env):
    synthesis = ["method=deepinversion", "synthesis.pool_size=16", "synthesis.batch_size=4",
                 "synthesis.iterations=2"]
    kdrun(*TINY, *synthesis, f"hydra.run.dir={tmp_path}/single", env=cli_env, cwd=tmp_path)
    torchrun(*TINY, *synthesis, f"hydra.run.dir={tmp_path}/ddp", env=cli_env, cwd=tmp_path)
    single, ddp = (torch.load(tmp_path / run / "synthetic" / "pool.pt")
                   for run in ("single", "ddp"))
    assert torch.equal(single["labels"], ddp["labels"])
    # each rank made two of the four batches; threads change float rounding only
    difference = (single["images"].float() - ddp["images"].float()).abs()
    assert difference.mean() < 1 and difference.shape == (16, 3, 16, 16)
