"""The real `kdrun` console script, end to end, in subprocesses."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import TINY, read_results
from wandb_log import logged

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def kdrun(*args: str, env: dict, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["kdrun", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"kdrun failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def test_a_run_writes_results_and_an_offline_wandb_run_with_the_same_values(tmp_path, cli_env):
    overrides = [o for o in TINY if not o.startswith("logger=")]
    proc = kdrun(*overrides, "logger=wandb", "epochs=2", f"hydra.run.dir={tmp_path}/run",
                 env=cli_env, cwd=tmp_path)
    run_dir = tmp_path / "run"
    upload = (proc.stdout + proc.stderr).split("upload it with: wandb sync ", 1)[1].split()[0]
    assert list(Path(upload).glob("run-*.wandb"))  # the folder `wandb sync` takes
    results = read_results(run_dir)
    assert results["test/acc"] >= 0 and "teacher/test/acc" in results
    wandb = logged(run_dir)
    assert wandb["summary"]["test/acc"] == pytest.approx(results["test/acc"])
    assert wandb["summary"]["teacher/test/acc"] == pytest.approx(results["teacher/test/acc"])
    epochs = [row for row in wandb["history"] if "epoch" in row and "test/acc" in row]
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert any("teacher/train/loss" in row for row in wandb["history"])  # teacher trained here
    assert wandb["config"]["alpha"] == 0.9
    assert wandb["config"]["method"]["name"] == "kd"
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    image_types = [row["plots/reliability/_type"] for row in wandb["history"]
                   if "plots/reliability/_type" in row]  # an image's fields are logged nested
    assert image_types == ["image-file"]
    assert (run_dir / "plots" / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_multirun_gives_each_job_its_own_run_directory(tmp_path, cli_env):
    kdrun("-m", *TINY, "method=kd", "alpha=0.5,0.9", f"hydra.sweep.dir={tmp_path}/sweep",
          env=cli_env, cwd=tmp_path)
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"]
    for job, alpha in zip(jobs, ("0.5", "0.9")):
        assert f"alpha={alpha}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert "test/acc" in read_results(job)


def test_every_noise_method_runs_on_the_offline_quickstart(tmp_path, cli_env):
    methods = ["gaussian_aug", "soft_randomization", "fickle_teacher", "messy_collaboration"]
    kdrun("-m", "experiment=quickstart", f"method={','.join(methods)}", "sigma=0.1", "epochs=1",
          "teacher.epochs=1", "dataset.train_subset=256", "eval=clean", "logger=none",
          "trainer.progress=false",
          f"hydra.sweep.dir={tmp_path}/sweep", env=cli_env, cwd=tmp_path)
    for job, method in enumerate(methods):
        results = read_results(tmp_path / "sweep" / str(job))
        assert 0 <= results["test/acc"] <= 100, method
        assert ("teacher/test/acc" in results) == (method != "gaussian_aug"), method


def test_the_feature_baselines_run_on_the_offline_quickstart(tmp_path, cli_env):
    """FitNet, AT and ReviewKD in one sweep; CRD with its memory bank over the quickstart's
    training split (a subset here, so fewer negatives than its quickstart's 512)."""
    quick = ["experiment=quickstart", "epochs=1", "teacher.epochs=1", "dataset.train_subset=256",
             "eval=clean", "logger=none", "trainer.progress=false"]
    kdrun("-m", *quick, "method=fitnet,at,reviewkd", f"hydra.sweep.dir={tmp_path}/sweep",
          env=cli_env, cwd=tmp_path)
    kdrun(*quick, "method=crd", "method.negatives=128", f"hydra.run.dir={tmp_path}/crd",
          env=cli_env, cwd=tmp_path)
    runs = {"fitnet": "sweep/0", "at": "sweep/1", "reviewkd": "sweep/2", "crd": "crd"}
    for method, run in runs.items():
        results = read_results(tmp_path / run)
        assert results["method/name"] == method
        assert 0 <= results["test/acc"] <= 100 and "teacher/test/acc" in results, method
    assert read_results(tmp_path / "crd")["method/negatives"] == 128


def test_online_and_self_distillation_methods_run_through_the_cli(tmp_path, cli_env):
    methods = ["dml", "ddgsd", "afd"]
    kdrun("-m", *TINY, f"method={','.join(methods)}", f"hydra.sweep.dir={tmp_path}/sweep",
          env=cli_env, cwd=tmp_path)
    for job, method in enumerate(methods):
        run = tmp_path / "sweep" / str(job)
        results = read_results(run)
        assert 0 <= results["test/acc"] <= 100 and "teacher/test/acc" not in results, method
        assert ("peer1/test/acc" in results) == (method != "ddgsd"), method
        assert ("train/loss/disc" in results) == (method == "afd"), method
        assert (run / "checkpoints" / "student.pt").is_file()
    assert not (tmp_path / "cache" / "teachers").exists()  # no teacher was trained


def test_the_whole_eval_group_runs_through_the_cli_on_a_saved_model(tmp_path, cli_env):
    kdrun(*TINY, "method=vanilla", f"hydra.run.dir={tmp_path}/train", env=cli_env, cwd=tmp_path)
    student = tmp_path / "train" / "checkpoints" / "student.pt"
    proc = kdrun(*TINY, "mode=eval", f"checkpoint={student}", "eval=standard", "eval.subset=16",
                 "eval.attacks.pgd_linf.steps=2", "eval.attacks.pgd_l2.steps=2",
                 "eval.corruptions.severities=[1,5]", "+eval.ood.far.digits=null",
                 "+eval.ood.scores=[msp,maxlogit,energy,odin,mahalanobis,knn,vim]",
                 "+eval.shift.sets.synthetic=null", f"hydra.run.dir={tmp_path}/eval",
                 env=cli_env, cwd=tmp_path)
    results = read_results(tmp_path / "eval")
    for key in ("test/acc", "calib/ece", "pgd/linf/eps8/acc", "pgd/l2/eps0.5/acc", "fgsm/eps8/acc",
                "corrupt/jpeg_compression/s5/acc", "corrupt/mean_acc", "ood/digits/msp/auroc",
                "ood/digits/energy/fpr95", "ood/digits/vim/aupr_in", "ood/far/knn/aupr_out",
                "ood/far/odin/auroc", "ood/far/mahalanobis/auroc", "shift/synthetic/acc"):
        assert 0 <= results[key] <= 100, key
    assert results["test/acc"] == read_results(tmp_path / "train")["test/acc"]
    assert {p.name for p in (tmp_path / "eval" / "plots").iterdir()} == {
        f"{plot}.{kind}" for plot in ("reliability", "robustness")
        for kind in ("png", "pdf", "json")}
    said = proc.stderr + proc.stdout
    assert "OOD far mean  AUROC / FPR95: MSP" in said and "KNN" in said and "ViM" in said
    assert "shift synthetic  acc" in said
    # config.yaml records every setting each evaluation ran with, its YAML's defaults included
    recorded = yaml.safe_load((tmp_path / "eval" / "config.yaml").read_text())["eval"]
    assert recorded["ood"]["settings"]["knn"] == {"k": 50}
    assert recorded["shift"]["sets"] == {"synthetic": None}


@pytest.mark.parametrize(("override", "message"), [
    ("alpha=1.5", "alpha=1.5 is not allowed: it must lie in [0, 1]"),
    ("dataset=cifar10", "CIFAR-10 not found in {home}/nowhere (looked for"),
    ("+trainer.batchsize=4", "trainer.batchsize is not a kdrun setting, so it would be ignored: "
                             "did you mean trainer.batch_size?"),
])
def test_bad_input_is_one_clear_line_and_exit_code_1(tmp_path, cli_env, override, message):
    cli_env["HOME"] = str(tmp_path)
    message = message.format(home=tmp_path)
    proc = kdrun(*[o for o in TINY if not o.startswith("dataset=")], override,
                 "dataset.root=~/nowhere", f"hydra.run.dir={tmp_path}/run", env=cli_env,
                 cwd=tmp_path, check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines()
              if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in proc.stderr


def test_cfg_job_prints_the_composed_config(tmp_path, cli_env):
    proc = kdrun("--cfg", "job", "alpha=0.3", env=cli_env, cwd=tmp_path)
    assert "alpha: 0.3" in proc.stdout and "arch: wrn_16_2" in proc.stdout


def test_python_dash_m_kdrun_is_the_console_script(tmp_path, cli_env):
    proc = subprocess.run([sys.executable, "-m", "kdrun", "--cfg", "job", "T=2"], env=cli_env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "T: 2" in proc.stdout


def test_concurrent_jobs_share_one_teacher_training(tmp_path, cli_env):
    procs = [subprocess.Popen(["kdrun", *TINY, f"hydra.run.dir={tmp_path}/job{i}"], env=cli_env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    trained_here = ["teacher/train/loss" in (tmp_path / f"job{i}" / "metrics.jsonl").read_text()
                    for i in range(2)]
    assert sorted(trained_here) == [False, True]
    assert read_results(tmp_path / "job0")["teacher/test/acc"] == \
        read_results(tmp_path / "job1")["teacher/test/acc"]


def test_an_installed_wheel_finds_its_config_tree(tmp_path, cli_env):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path)], check=True, timeout=300)
    [wheel] = tmp_path.glob("kdrun-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("kdrun/conf/__init__.py", "kdrun/conf/config.yaml", "kdrun/conf/method/kd.yaml",
                 "kdrun/conf/dataset/digits.yaml", "kdrun/conf/experiment/quickstart.yaml",
                 "hydra_plugins/kdrun_launchers/packed.py"):
        assert path in names, path
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    # The installed copy (not this checkout) runs: its console entry point composes its config.
    cli_env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", "import sys, kdrun.cli; print(kdrun.cli.__file__);"
                           " sys.argv = ['kdrun', '--cfg', 'job', 'method=soft_randomization'];"
                           " kdrun.cli.main()"], env=cli_env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(str(site)) and "name: soft_randomization" in proc.stdout
    # Hydra's own plugin scan finds the installed packed launcher, with no help from kdrun
    found = subprocess.run([sys.executable, "-c", "from hydra.core.plugins import Plugins; "
                            "from hydra.plugins.launcher import Launcher; import sys; print(["
                            "sys.modules[c.__module__].__file__ for c in Plugins.instance()"
                            ".discover(Launcher) if c.__name__ == 'PackedLauncher'])"],
                           env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert found.stdout.strip() == str([str(site / "hydra_plugins/kdrun_launchers/packed.py")])


def test_the_summary_names_the_settings_and_every_round(tmp_path):
    """Issue 18, item 2: the settings that define the run, and each Noisy Student round."""
    from kdrun.summary import summary

    from conftest import compose_config

    cfg = compose_config("method=noisy_student", "epochs=3")
    results = {"meta/student_arch": "resnet8", "method/rounds": 2, "test/acc": 40.0,
               "test/best_acc": 41.0, "calib/ece": 3.0, "round0/test/acc": 30.0,
               "round1/test/acc": 35.0, "round1/pseudo_labelled": 120,
               "round2/test/acc": 40.0, "round2/pseudo_labelled": 130,
               "train/img_s": 49738.0, "train/captured": True}
    lines = summary(cfg, results, tmp_path).splitlines()
    assert lines[0] == "noisy_student: resnet8 on synthetic, 3 epochs, rounds 2"
    assert "  training speed  49738 img/s (as a CUDA graph)" in lines
    assert "  round0 test acc   30.00 %" in lines
    assert "  round2 test acc   40.00 %  (130 pseudo-labelled images)" in lines
    kd = summary(compose_config("method=kd"), {**results, "method/alpha": 0.9, "method/T": 4.0,
                                                "train/captured": False}, tmp_path).splitlines()
    assert kd[0].startswith("kd: resnet8 on synthetic, 1 epochs, alpha 0.9, T 4.0")
    assert "  training speed  49738 img/s" in kd


def test_the_summary_gives_units_peers_and_a_note_on_ood_scores_below_chance(tmp_path):
    """Issue 18, items 2 and 5: attack budgets with their units, each peer's architecture, and
    OOD scores that rank the OOD set above the test set called out."""
    from kdrun.summary import summary

    from conftest import compose_config

    cfg = compose_config("method=dml", "student=resnet8", "method.peers=[resnet14]")
    results = {"meta/student_arch": "resnet8", "test/acc": 60.0, "calib/ece": 2.0,
               "peer1/test/acc": 58.0, "pgd/linf/eps8/acc": 3.0, "pgd/linf/eps2/acc": 30.0,
               "pgd/l2/eps0.5/acc": 20.0, "fgsm/eps8/acc": 10.0,
               "ood/svhn/msp/auroc": 9.6, "ood/svhn/msp/fpr95": 100.0,
               "ood/svhn/maxlogit/auroc": 70.0, "ood/svhn/maxlogit/fpr95": 80.0,
               "ood/svhn/energy/auroc": 72.5, "ood/svhn/energy/fpr95": 78.0,
               "ood/far/energy/auroc": 72.5, "ood/far/energy/fpr95": 78.0,
               "shift/cinic10/acc": 50.0, "teacher/pgd/linf/eps8/acc": 5.0,
               "vs_teacher/pgd/linf/eps8/acc": -2.0}
    lines = summary(cfg, results, tmp_path).splitlines()
    assert "  peer1 (resnet14) test acc   58.00 %" in lines
    assert ("  robust acc  FGSM 8/255 10.0 %, PGD L2 0.5 20.0 %, PGD L-inf 2/255 30.0 %, "
            "PGD L-inf 8/255 3.0 %") in lines
    assert "  shift cinic10  acc 50.00 %" in lines
    assert ("  OOD svhn  AUROC / FPR95: MSP 9.6 / 100.0 %, max-logit 70.0 / 80.0 %, "
            "energy 72.5 / 78.0 %") in lines
    assert ("    note: MSP below 50 %: the model scores svhn as more in-distribution than its "
            "own test set") in lines
    assert "  OOD far mean  AUROC / FPR95: energy 72.5 / 78.0 %" in lines
    teacher = lines.index("  teacher, through the same evaluations:")
    assert lines[teacher + 1] == "    robust acc  PGD L-inf 8/255 5.0 %"


@pytest.mark.slow
def test_mode_eval_defaults_to_the_data_set_the_checkpoint_was_trained_on(tmp_path, cli_env):
    """Issue 18, item 8: not CIFAR-10, which is not there."""
    kdrun(*TINY, "method=vanilla", f"hydra.run.dir={tmp_path}/train", env=cli_env, cwd=tmp_path)
    student = tmp_path / "train" / "checkpoints" / "student.pt"
    no_dataset = [o for o in TINY if not o.startswith("dataset=")]
    kdrun(*no_dataset, "mode=eval", f"checkpoint={student}", f"hydra.run.dir={tmp_path}/eval",
          env=cli_env, cwd=tmp_path)
    evaluated = yaml.safe_load((tmp_path / "eval" / "config.yaml").read_text())
    assert evaluated["dataset"]["name"] == "synthetic"
    trained = read_results(tmp_path / "train")
    assert read_results(tmp_path / "eval")["test/acc"] == trained["test/acc"]


def test_dry_run_lists_a_sweeps_jobs_without_running_any(tmp_path, cli_env):
    """Issue 18, item 6: a sweep's size before launching it; -m with --cfg is one line."""
    proc = kdrun("-m", "experiment=arani_sigma", "seed=0", "--dry-run", env=cli_env, cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0] == "kdrun --dry-run: 12 jobs"  # the preset's 36, one seed of its three
    assert lines[1] == "  0: method=gaussian_aug sigma=0.05 experiment=arani_sigma seed=0"
    assert lines[-1] == "  11: method=soft_randomization sigma=0.5 experiment=arani_sigma seed=0"
    assert not (tmp_path / "outputs").exists()
    single = kdrun("alpha=0.1,0.5", "--dry-run", env=cli_env, cwd=tmp_path, check=False)
    assert single.returncode == 1 and "2 jobs, which only a sweep runs: add -m" in single.stdout
    shown = kdrun("-m", "alpha=0.1,0.5", "--cfg", "job", env=cli_env, cwd=tmp_path, check=False)
    assert shown.returncode == 1
    assert shown.stderr.strip().splitlines() == [
        "kdrun: --cfg shows one job, not a sweep: list the sweep's jobs with --dry-run, or drop "
        "-m and give each key one value to see that job"]


def test_the_crd_table_preset_lists_its_pairs_by_the_fields_methods(tmp_path, cli_env):
    proc = kdrun("-m", "experiment=crd_cifar100", "--dry-run", env=cli_env, cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0] == "kdrun --dry-run: 104 jobs"  # 13 pairs x 8 methods
    assert lines[1] == "  0: crd_pair=wrn_40_2-wrn_16_2 method=vanilla experiment=crd_cifar100"
    assert lines[-1] == "  103: crd_pair=wrn_40_2-shufflenetv1 method=dist experiment=crd_cifar100"


def test_help_says_what_each_method_is_and_what_a_methods_keys_mean(tmp_path, cli_env):
    """Issue 18, item 6: method names with a word each; a method's keys with their comments."""
    general = kdrun("--help", env=cli_env, cwd=tmp_path).stdout
    assert "  kd                      Hinton KD (arXiv 1503.02531): (1 - alpha) * CE" in general
    assert "  deepdream               DeepDream, the baseline of Yin et al. (arXiv" in general
    assert ("  zoo:mdistiller/resnet110: resnet110 on cifar100, reported 74.31 % (RepDistiller "
            "README, teacher row (RepDistiller issue 29 measured 70.27))") in general
    afd = kdrun("method=afd", "--help", env=cli_env, cwd=tmp_path).stdout
    assert "== method=afd (conf/method/afd.yaml; set any key as method.KEY=VALUE) ==" in afd
    assert "disc_every: 1         # discriminator update every N steps" in afd
