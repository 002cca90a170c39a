"""Packed sweeps (hydra/launcher=packed): a sweep's jobs that share their data and teacher
trained together, each still its own run and computing what it would alone."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
import torch

from kdrun.jobs import PackedJob, train, train_pack
from kdrun.launchers.packed import plan_packs

from conftest import TINY, compose_config, read_results
from test_cli import kdrun
from test_failures import INTERRUPT_AFTER_FIRST_CHECKPOINT, default_sigint, error_lines

FP32 = ("trainer.precision=fp32", "trainer.channels_last=false")
# three jobs that differ in what only the loss and the student's input noise see
MEMBERS = [("alpha=0.5", "T=2", "sigma=0"), ("alpha=0.9", "T=4", "sigma=0.1"),
           ("alpha=0.7", "T=8", "sigma=0.3")]
TIMING = ("train/img_s", "train/time_s", "meta/packed", "meta/pack_id")


def test_a_pack_of_three_computes_what_its_jobs_compute_alone(tmp_path):
    """Issue 27, item 3: fp32 on the CPU, each member's random stream seeded as its lone run's
    - identical metrics, curves and weights."""
    configs = [compose_config("method=soft_randomization", "epochs=2", *FP32, *member)
               for member in MEMBERS]
    alone = [train(cfg, tmp_path / f"alone{i}") for i, cfg in enumerate(configs)]
    packed = train_pack([PackedJob(compose_config("method=soft_randomization", "epochs=2",
                                                  *FP32, *member), tmp_path / f"pack{i}")
                         for i, member in enumerate(MEMBERS)], pack_id="0,1,2")
    for i, (lone, member) in enumerate(zip(alone, packed)):
        assert {k: v for k, v in member.items() if k not in TIMING} == {
            k: v for k, v in lone.items() if k not in TIMING}, i
        assert member["meta/packed"] == 3 and member["meta/pack_id"] == "0,1,2"
        rows = [[json.loads(line) for line in (tmp_path / f"{where}{i}" / "metrics.jsonl").open()]
                for where in ("alone", "pack")]  # the first lone run also trained the teacher
        curves = [[{k: v for k, v in row.items() if "img_s" not in k and "time" not in k}
                   for row in run if not any(k.startswith("teacher/") for k in row)]
                  for run in rows]
        assert curves[0] == curves[1] and len(curves[0]) > 2
        weights = [torch.load(tmp_path / f"{where}{i}" / "checkpoints" / "student.pt")["state_dict"]
                   for where in ("alone", "pack")]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # the members differ from each other: the test would not pass by training one network
    assert len({round(m["train/loss"], 6) for m in packed}) == 3


def test_every_packable_method_packs_with_the_others_and_computes_what_it_does_alone(tmp_path):
    from kdrun.methods import METHODS

    jobs = [(f"method={name}",) for name in METHODS.names() if METHODS.get(name).packable]
    assert len(jobs) >= 8  # vanilla, gaussian_aug, kd, logit_mse, the noise methods, dkd, dist
    packed = train_pack([PackedJob(compose_config(*FP32, *job), tmp_path / f"pack{i}")
                         for i, job in enumerate(jobs)], pack_id="all")
    for i, job in enumerate(jobs):
        alone = train(compose_config(*FP32, *job), tmp_path / f"alone{i}")
        for key in ("test/acc", "test/loss", "train/loss", "train/acc"):
            assert packed[i][key] == alone[key], (job, key)


def test_each_member_keeps_its_own_failure_when_one_is_left_to_train(tmp_path):
    """A job refused at the start leaves one member to train; that member's divergence is
    still its own outcome, and nobody's error lands in another's directory."""
    from kdrun.errors import ConfigError, TrainingDiverged

    jobs = [("method=kd", "alpha=1.5"), ("method=soft_randomization", "sigma=1e38"),
            ("method=kd", "alpha=0.5")]
    outcomes = train_pack([PackedJob(compose_config(*FP32, *job), tmp_path / str(i))
                           for i, job in enumerate(jobs)], pack_id="0,1,2")
    assert isinstance(outcomes[0], ConfigError) and "alpha=1.5" in str(outcomes[0])
    assert isinstance(outcomes[1], TrainingDiverged)
    assert outcomes[2]["meta/packed"] == 3 and 0 <= outcomes[2]["test/acc"] <= 100
    one_left = train_pack([PackedJob(compose_config(*FP32, *job), tmp_path / f"b{i}")
                           for i, job in enumerate(jobs[:2])], pack_id="0,1")
    assert isinstance(one_left[0], ConfigError) and isinstance(one_left[1], TrainingDiverged)


def test_jobs_pack_by_what_they_share_and_the_rest_train_alone_saying_why():
    def configs(*axes):
        return [compose_config(*job) for job in axes]

    jobs = configs(("method=kd", "alpha=0.5"), ("method=logit_mse", "alpha=0.9"),
                   ("method=messy_collaboration", "T=2"), ("method=fickle_teacher",),
                   ("method=soft_randomization", "sigma=0.3"), ("method=kd", "epochs=2"),
                   ("method=dkd",))
    plan, notes = plan_packs(jobs, size=3)
    assert plan == [[0, 1], [2, 4, 6], [3], [5]]  # five jobs in two packs of 2 and 3
    assert notes[0].startswith("job 3 trains alone: method fickle_teacher cannot share")
    assert "differ in epochs, " in notes[1] and "2 groups" in notes[1]
    assert plan_packs(jobs[:3], size=1)[0] == [[0], [1], [2]]


QUICK = ["experiment=quickstart", "epochs=2", "teacher.epochs=2", "eval=clean", "logger=none",
         "trainer.progress=false", *FP32]


@pytest.mark.slow
def test_a_packed_quickstart_sweep_leaves_the_runs_and_table_an_unpacked_one_leaves(tmp_path,
                                                                                   cli_env):
    """Issue 27's done-when: four ordinary run directories and the same kdrun-report table."""
    sweep = ["-m", *QUICK, "alpha=0.5,0.9", "sigma=0,0.1"]
    proc = kdrun(*sweep, "hydra/launcher=packed", f"hydra.sweep.dir={tmp_path}/packed",
                 env=cli_env, cwd=tmp_path)
    log = proc.stderr + proc.stdout
    assert "Launching 4 jobs in 1 pack of at most 8" in log
    assert "#0,1,2,3: alpha=0.5 sigma=0; alpha=0.5 sigma=0.1; alpha=0.9 sigma=0; " in log
    kdrun(*sweep, f"hydra.sweep.dir={tmp_path}/alone", env=cli_env, cwd=tmp_path)
    for job in range(4):
        packed, alone = tmp_path / "packed" / str(job), tmp_path / "alone" / str(job)
        for name in ("results.json", "metrics.jsonl", "config.yaml", ".hydra/overrides.yaml",
                     "checkpoints/student.pt", "checkpoints/last.pt"):
            assert (packed / name).is_file(), (job, name)
        [log] = [path.name for path in alone.glob("*.log")]  # named after the job's entry point
        assert "epoch 2/2" in (packed / log).read_text()
        assert (packed / ".hydra/overrides.yaml").read_text() == (
            alone / ".hydra/overrides.yaml").read_text()
        results = read_results(packed)
        assert results["meta/packed"] == 4 and results["meta/pack_id"] == "0,1,2,3"
        assert results["test/acc"] == read_results(alone)["test/acc"]
    summary = json.loads((tmp_path / "packed" / "summary.json").read_text())
    assert [job["status"] for job in summary] == ["ok"] * 4
    tables = [subprocess.run(["kdrun-report", str(tmp_path / where), "--plots",
                              str(tmp_path / f"plots-{where}")], env=cli_env, capture_output=True,
                             text=True, timeout=120, check=True).stdout
              for where in ("packed", "alone")]
    assert tables[0] == tables[1] and tables[0].count("\n") >= 6


@pytest.mark.slow
def test_a_diverging_member_stops_alone_and_an_unpackable_job_trains_alone(tmp_path, cli_env):
    """sigma=1e38 overflows one member's noisy inputs (fp32), so its loss turns NaN;
    fickle_teacher samples its teacher's dropout, so its jobs cannot share a teacher."""
    proc = kdrun("-m", *TINY, *FP32, "hydra/launcher=packed", "method=soft_randomization",
                 "sigma=0.1,1e38,0", f"hydra.sweep.dir={tmp_path}/sweep", env=cli_env,
                 cwd=tmp_path, check=False)
    assert proc.returncode == 1  # a sweep with a failed job
    errors = error_lines(proc)
    assert any("training diverged in epoch 1" in line for line in errors), errors
    assert "training diverged" in (tmp_path / "sweep" / "1" / "error.txt").read_text()
    assert not (tmp_path / "sweep" / "1" / "checkpoints" / "last.pt").exists()
    for job in (0, 2):
        assert read_results(tmp_path / "sweep" / str(job))["meta/packed"] == 3
    alone = kdrun("-m", *TINY, "hydra/launcher=packed", "method=kd,fickle_teacher",
                  f"hydra.sweep.dir={tmp_path}/mixed", env=cli_env, cwd=tmp_path)
    log = alone.stdout + alone.stderr
    assert "job 1 trains alone: method fickle_teacher cannot share" in log
    assert "meta/packed" not in read_results(tmp_path / "mixed" / "1")


# SIGKILL - nothing cleans up - once the third checkpoint is written: the first member's
# epoch 2, while the second has saved epoch 1 only
KILL_AT_THIRD_CHECKPOINT = """
import os, signal, sys
from kdrun.cli import main
from kdrun.training.trainer import Trainer

save, saved = Trainer._save, []

def save_then_kill(self, *args):
    save(self, *args)
    saved.append(1)
    if len(saved) == 3:
        os.kill(os.getpid(), signal.SIGKILL)

Trainer._save = save_then_kill
sys.argv = ["kdrun", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_pack_stopped_by_ctrl_c_or_killed_resumes_every_member_from_its_checkpoint(tmp_path,
                                                                                     cli_env):
    """Ctrl-C once the first member's epoch-1 checkpoint is written: the other has none yet,
    so the resumed pack trains it through epoch 1 while the first waits; a kill leaves the
    members an epoch apart too. Every member ends where an uninterrupted pack ends."""
    sweep = ["-m", *TINY, *FP32, "hydra/launcher=packed", "method=soft_randomization",
             "epochs=3", "alpha=0.5,0.9"]
    # uninterrupted pack first: the teacher it trains is cached, so the first checkpoint
    # written below is a member's
    kdrun(*sweep, f"hydra.sweep.dir={tmp_path}/whole", env=cli_env, cwd=tmp_path)
    stopped = subprocess.run([sys.executable, "-c", INTERRUPT_AFTER_FIRST_CHECKPOINT, *sweep,
                              f"hydra.sweep.dir={tmp_path}/split"], env=cli_env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300,
                             preexec_fn=default_sigint)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    for job in (0, 1):
        assert "interrupted" in (tmp_path / "split" / str(job) / "error.txt").read_text()
    assert (tmp_path / "split" / "0" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "split" / "1" / "checkpoints" / "last.pt").exists()
    said = [line for line in error_lines(stopped) if "resume with: " in line]
    assert len(said) == 2 and "training of a pack of 2 interrupted" in said[0]
    command = said[0].split("resume with: ", 1)[1]  # the sweep's, for every member
    assert said[1].endswith(command) and command.startswith("kdrun -m ")
    assert f"hydra.sweep.dir={tmp_path}/split" in command
    resumed = subprocess.run(shlex.split(command), env=cli_env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = resumed.stdout + resumed.stderr
    assert "resumed from" in log and "at epoch 1" in log  # the first member
    assert "trainer.resume: no checkpoint at" in log  # the second, from its start
    killed = subprocess.run([sys.executable, "-c", KILL_AT_THIRD_CHECKPOINT, *sweep,
                             f"hydra.sweep.dir={tmp_path}/killed"], env=cli_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    kdrun(*sweep, "trainer.resume=true", f"hydra.sweep.dir={tmp_path}/killed", env=cli_env,
          cwd=tmp_path)
    for job in (0, 1):
        results = [read_results(tmp_path / where / str(job))
                   for where in ("split", "killed", "whole")]
        for key in ("test/acc", "test/loss", "train/loss", "train/steps"):
            assert results[0][key] == results[2][key] == results[1][key], (job, key)


def test_a_dry_run_shows_the_packs_a_sweep_would_train_in(tmp_path, cli_env):
    proc = kdrun("-m", "experiment=arani_sigma", "hydra/launcher=packed", "--dry-run",
                 env=cli_env, cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0] == "kdrun --dry-run: 36 jobs"
    assert lines[-2] == ("trained in 6 packs of at most 8 (hydra/launcher=packed): "
                         "0,3,6,9,12,15 | 1,4,7,10,13,16 | 2,5,8,11,14,17 | 18,21,24,27,30,33 | "
                         "19,22,25,28,31,34 | 20,23,26,29,32,35")
    assert lines[-1].startswith("the sweep's jobs differ in seed, which the members of a pack "
                                "share: they train in 3 groups")


def test_a_pack_size_below_one_is_one_line(tmp_path, cli_env):
    proc = kdrun("-m", *TINY, "hydra/launcher=packed", "hydra.launcher.pack=0", "alpha=0.5,0.9",
                 f"hydra.sweep.dir={tmp_path}/sweep", env=cli_env, cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("kdrun: hydra.launcher.pack=0 is not allowed: it is the most "
                                   "jobs trained together, an integer >= 1 (1 trains each job "
                                   "alone)")
    assert not list((tmp_path / "sweep").glob("*/results.json"))
