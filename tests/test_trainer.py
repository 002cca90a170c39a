"""The training loop through `kdrun.jobs.train` (the real path, minus Hydra's main): schedules,
max_steps, checkpoints, resume equivalence and the teacher cache."""

from __future__ import annotations

import math
import time

import pytest
import torch
from omegaconf import OmegaConf

from kdrun.data import load_dataset
from kdrun.data.device_loader import num_batches
from kdrun.jobs import git_commit, train
from kdrun.models.prepare import prepare
from kdrun.runtime.device import resolve_compile
from kdrun.training.schedule import lr_factor
from kdrun.training.teachers import cache_entry, resolve_teacher

from conftest import compose_config, make_run, read_results
from test_methods import make_method


def sched(name, **kw):
    base = {"name": name, "milestones": [0.5, 0.75], "gamma": 0.1, "warmup_epochs": 0,
            "min_lr": 0.0}
    return OmegaConf.create({**base, **kw})


def test_multistep_decays_at_fractions_of_the_run():
    s = sched("multistep")
    assert [lr_factor(step, s, 100, 0, 0.0) for step in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_with_warmup_rises_then_decays_to_min_lr():
    s = sched("cosine")
    factors = [lr_factor(step, s, 110, 10, 0.1) for step in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.55)
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_a_run_writes_results_metrics_and_checkpoints(tmp_path):
    results = train(compose_config("epochs=2"), tmp_path)
    assert read_results(tmp_path)["test/acc"] == results["test/acc"]
    for key in ("test/acc", "test/top5", "test/loss", "test/best_acc", "teacher/test/acc",
                "test/agreement", "train/img_s", "train/loss", "train/kd", "train/ce"):
        assert math.isfinite(results[key]), key
    assert results["test/best_acc"] >= results["test/acc"]
    assert results["train/steps"] == 2 * 6  # 205 training images, batches of 32
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert any('"epoch": 2' in line and '"test/acc"' in line for line in lines)
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"last.pt", "student.pt"}
    resolved = OmegaConf.load(tmp_path / "config.yaml")
    assert resolved.method.alpha == 0.9 and "${" not in (tmp_path / "config.yaml").read_text()
    assert results["meta/git_commit"] == git_commit()


def test_git_commit_is_this_checkouts_head():
    import subprocess
    from pathlib import Path

    import kdrun

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(kdrun.__file__).parent,
                          capture_output=True, text=True).stdout.strip()
    assert head and git_commit().removesuffix("-dirty") == head


def test_the_attack_suite_runs_after_training_and_lands_in_results(tmp_path):
    train(compose_config("method=vanilla", "eval=standard", "eval.subset=16",
                         "eval.attacks.pgd_linf.steps=2", "eval.attacks.pgd_l2.steps=2"),
          tmp_path)
    for key in ("pgd/linf/eps2/acc", "pgd/linf/eps4/acc", "pgd/linf/eps8/acc",
                "pgd/l2/eps0.25/acc", "pgd/l2/eps0.5/acc", "fgsm/eps2/acc", "fgsm/eps8/acc",
                "calib/ece", "corrupt/gaussian_noise/s1/acc", "corrupt/pixelate/s5/acc",
                "corrupt/motion_blur/s3/acc", "corrupt/mean_acc"):
        assert 0 <= read_results(tmp_path)[key] <= 100, key
    plots = tmp_path / "plots"
    for plot in ("reliability", "robustness"):
        assert (plots / f"{plot}.png").read_bytes()[:4] == b"\x89PNG", plot
        assert (plots / f"{plot}.pdf").read_bytes()[:4] == b"%PDF", plot  # vector, for a paper


def test_the_figures_draw_the_numbers_in_results_json(tmp_path):
    """Issue 18, items 5 and 7: the reliability diagram's ECE is calib/ece (it was drawn from a
    second pass in other batches and differed); the robustness curves start from the clean
    accuracy and carry L2 too."""
    import json

    cfg = compose_config("method=vanilla", "eval=standard", "eval.subset=16",
                         "eval.attacks.pgd_linf.steps=2", "eval.attacks.pgd_l2.steps=2",
                         "eval.corruptions=null", "eval.batch_size=7")
    results = train(cfg, tmp_path)
    bins = json.loads((tmp_path / "plots" / "reliability.json").read_text())
    assert bins["ece"] == results["calib/ece"]
    test_images = len(load_dataset(cfg.dataset, cfg.cache_dir).test.labels)
    assert sum(bins["count"]) == test_images  # every test image, counted per bin
    curves = json.loads((tmp_path / "plots" / "robustness.json").read_text())
    assert curves["clean_acc"] == results["test/acc"]
    assert [eps for eps, _ in curves["l2"]] == [0.25, 0.5]
    assert dict(curves["linf"])[8.0] == results["pgd/linf/eps8/acc"]


def test_mode_eval_measures_a_saved_model_like_the_run_that_made_it(tmp_path):
    from kdrun.jobs import evaluate_checkpoint

    # fp32: what must agree is the preparation of the model, not how one CPU's bf16 kernels
    # round (two preparations may pick different kernels: 1e-5 apart in bf16 on some CPUs)
    fp32 = "trainer.precision=fp32"
    trained = train(compose_config("method=vanilla", "student=resnet14", fp32), tmp_path / "run")
    student = tmp_path / "run" / "checkpoints" / "student.pt"
    # the architecture comes from the file, whatever student= says
    again = evaluate_checkpoint(compose_config("mode=eval", f"checkpoint={student}", fp32),
                                tmp_path / "eval")
    assert again["test/acc"] == trained["test/acc"] and again["test/top5"] == trained["test/top5"]
    for key in ("test/loss", "calib/ece"):
        assert again[key] == pytest.approx(trained[key], rel=1e-5), key
    assert read_results(tmp_path / "eval")["test/acc"] == again["test/acc"]
    assert "train/steps" not in again


def test_epochs_without_evaluation_log_no_test_metrics(tmp_path):
    import json

    train(compose_config("method=vanilla", "epochs=3", "trainer.eval_every=2"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = {row["epoch"]: row for row in rows if "train/acc" in row}
    assert ["test/acc" in epochs[e] for e in (1, 2, 3)] == [False, True, True]


def test_every_epoch_but_the_last_logs_the_time_left(tmp_path, caplog):
    import logging

    from kdrun.training.trainer import duration

    assert [duration(s) for s in (7.4, 725, 11220)] == ["7s", "12m05s", "3h07m"]
    with caplog.at_level(logging.INFO, logger="kdrun.training.trainer"):
        train(compose_config("method=vanilla", "epochs=3"), tmp_path)
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert ["  eta " in line for line in epochs] == [True, True, False]
    assert not any("run ~" in line for line in epochs)  # one stage: its time left is the run's


def test_the_time_left_leaves_out_the_first_epochs_compilation():
    from kdrun.training.trainer import Pace

    pace = Pace(100.0, 5)  # a fit resumed after 5 epochs
    assert pace.per_epoch(130.0, 6) == 30.0  # only the first epoch, compilation and all
    assert pace.per_epoch(132.0, 7) == 2.0
    assert pace.per_epoch(136.0, 9) == 2.0


def test_a_multi_stage_run_also_logs_the_runs_time_left(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="kdrun.training.trainer"):
        train(compose_config("method=noisy_student", "method.rounds=1", "epochs=2"), tmp_path)
    lines = {r.getMessage().split("  loss")[0]: r.getMessage() for r in caplog.records
             if "epoch " in r.getMessage()}
    assert ", run ~" in lines["round0 epoch 1/2"]  # round 1 still to come
    assert "eta" in lines["round1 epoch 1/2"] and "run ~" not in lines["round1 epoch 1/2"]


def test_max_steps_stops_early(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="kdrun.training.trainer"):
        results = train(compose_config("method=vanilla", "epochs=5", "trainer.max_steps=3"),
                        tmp_path)
    assert "epoch 1/5 (stopped at trainer.max_steps)" in caplog.text  # not "epoch 0/5"
    assert "epoch 0/" not in caplog.text
    assert results["train/steps"] == 3
    assert not (tmp_path / "checkpoints" / "last.pt").exists()  # no epoch boundary was reached


def test_resume_after_interruption_gives_the_same_final_metrics(tmp_path):
    whole = train(compose_config("epochs=3"), tmp_path / "whole")
    teacher = cache_entry(compose_config("epochs=3")) / "teacher.pt"
    cfg = compose_config("epochs=3", f"teacher.checkpoint={teacher}")
    data = load_dataset(cfg.dataset, cfg.cache_dir)
    steps_per_epoch = num_batches(len(data.train), cfg.trainer.batch_size, train=True)
    interrupted = compose_config("epochs=3", f"teacher.checkpoint={teacher}",
                                 f"trainer.max_steps={steps_per_epoch}")
    train(interrupted, tmp_path / "split")
    resumed = train(compose_config("epochs=3", f"teacher.checkpoint={teacher}",
                                   "trainer.resume=true"), tmp_path / "split")
    for key in ("test/acc", "test/loss", "test/best_acc", "teacher/test/acc", "train/loss"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9), key
    assert resumed["train/steps"] == whole["train/steps"]


def test_teacher_is_trained_once_then_read_from_the_cache(tmp_path):
    first, second = make_run(f"cache_dir={tmp_path}"), make_run(f"cache_dir={tmp_path}")
    cfg = first.cfg
    data = load_dataset(cfg.dataset, cfg.cache_dir)
    a, a_provenance = resolve_teacher(first, data)
    b, b_provenance = resolve_teacher(second, data)
    assert any("teacher/train/loss" in row for row in first.sink.rows)
    assert second.sink.rows == []
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert (cache_entry(cfg) / "teacher.pt").is_file()
    assert not (cache_entry(cfg) / "checkpoints").exists()  # the resume state went with it
    # issue 17, item 8: the environment that trained it travels with it into every run
    assert a_provenance == b_provenance
    assert b_provenance["meta/teacher_threads"] == torch.get_num_threads()
    assert b_provenance["meta/teacher_torch"] == torch.__version__
    assert b_provenance["meta/teacher_device"] == "cpu"
    assert b_provenance["meta/teacher_precision"] == "fp32"
    assert b_provenance["meta/teacher_source"] == str(cache_entry(cfg) / "teacher.pt")
    import hashlib  # issue 29, item 2: the exact weights, by their file's SHA-256

    file = (cache_entry(cfg) / "teacher.pt").read_bytes()
    assert b_provenance["meta/teacher_sha256"] == hashlib.sha256(file).hexdigest()


def test_a_job_waiting_for_another_to_train_the_teacher_says_so(tmp_path, caplog):
    import logging
    import threading

    from filelock import FileLock

    from kdrun.training.teachers import _held

    lock_path = str(tmp_path / "entry.lock")
    other = FileLock(lock_path)
    other.acquire()  # another job is training the teacher
    entered = threading.Event()

    def wait_for_it():
        with _held(FileLock(lock_path), tmp_path / "entry"):
            entered.set()

    with caplog.at_level(logging.INFO, logger="kdrun.training.teachers"):
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        deadline = time.time() + 10
        while "waiting for it to finish" not in caplog.text and time.time() < deadline:
            time.sleep(0.05)
        assert "another job is training this teacher" in caplog.text
        assert not entered.is_set()
        other.release()
        waiter.join(timeout=10)
    assert entered.is_set()


def damage_file(path, how: str) -> None:
    """What a full disk or a killed copy leaves (truncated), or a flipped byte in the weights,
    which torch.load reads without complaint (corrupted)."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(data)


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_a_damaged_cached_teacher_is_said_in_one_line_and_trained_again(tmp_path, caplog, how):
    import logging

    from kdrun.runtime.checkpoint import digest_path, sha256

    cfg = compose_config(f"cache_dir={tmp_path}")
    data = load_dataset(cfg.dataset, cfg.cache_dir)
    good, _ = resolve_teacher(make_run(f"cache_dir={tmp_path}"), data)
    path = cache_entry(cfg) / "teacher.pt"
    assert digest_path(path).read_text() == f"{sha256(path)}  teacher.pt\n"
    damage_file(path, how)
    again = make_run(f"cache_dir={tmp_path}")
    with caplog.at_level(logging.WARNING, logger="kdrun.training.teachers"):
        healed, _ = resolve_teacher(again, data)
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 1 and str(path) in damaged[0] and "training it again" in damaged[0]
    assert "\n" not in damaged[0]
    assert any("teacher/train/loss" in row for row in again.sink.rows)  # trained again
    assert digest_path(path).read_text().split()[0] == sha256(path)
    assert all(torch.equal(x, y) for x, y in  # the same seeded recipe, the same teacher
               zip(good.state_dict().values(), healed.state_dict().values()))


def test_a_cached_teacher_from_before_digests_is_checked_once_and_kept(tmp_path):
    from kdrun.runtime.checkpoint import digest_path

    cfg = compose_config(f"cache_dir={tmp_path}")
    data = load_dataset(cfg.dataset, cfg.cache_dir)
    resolve_teacher(make_run(f"cache_dir={tmp_path}"), data)
    record = digest_path(cache_entry(cfg) / "teacher.pt")
    written = record.read_text()
    record.unlink()  # an entry cached by an older kdrun
    later = make_run(f"cache_dir={tmp_path}")
    resolve_teacher(later, data)
    assert later.sink.rows == [] and record.read_text() == written


def test_the_quickstart_teacher_has_one_cache_key_from_any_working_directory(tmp_path,
                                                                             monkeypatch):
    keys = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        keys.append(cache_entry(compose_config("dataset=digits", tiny=False)))
    assert keys[0] == keys[1]


def test_cache_key_follows_the_teacher_recipe_not_the_student_settings():
    base = cache_entry(compose_config())
    assert cache_entry(compose_config("alpha=0.1", "optim.lr=0.01", "seed=7", "epochs=9")) == base
    for change in ("teacher.epochs=3", "teacher.seed=1", "teacher.optim.lr=0.2",
                   "teacher=resnet14", "dataset.train_subset=10", "trainer.max_steps=5",
                   "teacher.label_noise=0.2", "dataset.val_size=20"):
        assert cache_entry(compose_config(change)) != base, change
    assert cache_entry(compose_config("teacher.output_shuffle=0.5")) == base  # not a recipe


def test_a_revised_architecture_keys_its_cached_teachers_apart(monkeypatch):
    """VGG's layers changed (revision 2): a teacher cached with the first form is not it."""
    from kdrun.models import MODELS

    cfg = compose_config("teacher=vgg8")
    revised = cache_entry(cfg)
    monkeypatch.setattr(MODELS.get("vgg8"), "revision", 1)
    assert cache_entry(cfg) != revised
    monkeypatch.delattr(MODELS.get("vgg8"), "revision")
    assert cache_entry(cfg) != revised  # the key a teacher of the first form was cached under


def test_a_corrupted_teacher_learns_from_a_fixed_seeded_flip_of_its_training_labels(tmp_path):
    from kdrun.training.teachers import with_label_noise

    run = make_run(f"cache_dir={tmp_path}", "teacher.label_noise=0.5")
    data = load_dataset(run.cfg.dataset, run.cfg.cache_dir)
    noisy = with_label_noise(data, run.cfg)
    changed = noisy.train.labels != data.train.labels
    assert changed.float().mean().item() == pytest.approx(0.5, abs=0.1)  # 192 images
    assert torch.equal(noisy.train.images, data.train.images) and noisy.test is data.test
    assert torch.equal(with_label_noise(data, run.cfg).train.labels, noisy.train.labels)  # fixed
    teacher, _ = resolve_teacher(run, data)
    clean, _ = resolve_teacher(make_run(f"cache_dir={tmp_path}"), data)
    assert not all(torch.equal(x, y) for x, y in
                   zip(teacher.state_dict().values(), clean.state_dict().values()))
    stored = torch.load(cache_entry(run.cfg) / "teacher.pt", weights_only=True)
    assert stored["meta"]["recipe"]["label_noise"] == 0.5


def test_a_teacher_checkpoint_of_another_architecture_is_refused(tmp_path):
    from kdrun.errors import ConfigError

    cfg = compose_config()
    train(cfg, tmp_path)  # trains and caches a resnet8 teacher
    wrong = compose_config("teacher=resnet14",
                           f"teacher.checkpoint={cache_entry(cfg) / 'teacher.pt'}")
    with pytest.raises(ConfigError, match="holds a resnet8, not a resnet14"):
        train(wrong, tmp_path / "wrong")


def test_shift_and_ood_sets_are_evaluated_after_training(tmp_path):
    # the synthetic set as its own "shift" set: same images, same labels -> the test accuracy
    results = train(compose_config("method=vanilla", "+eval.shift.sets.synthetic=null",
                                   "+eval.ood.far.digits=null"), tmp_path)
    assert results["shift/synthetic/acc"] == pytest.approx(results["test/acc"])
    for score in ("msp", "maxlogit", "energy"):
        for metric in ("auroc", "fpr95", "aupr_in", "aupr_out"):
            assert 0 <= results[f"ood/digits/{score}/{metric}"] <= 100, (score, metric)
            # one far set: the far mean is its figure
            assert results[f"ood/far/{score}/{metric}"] == results[f"ood/digits/{score}/{metric}"]
    assert not any(k.startswith("ood/near/") for k in results)


def test_a_missing_evaluation_set_fails_before_training(tmp_path):
    from kdrun.errors import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="CINIC-10 not found in /nonexistent"):
        train(compose_config("+eval.shift.sets.cinic10=/nonexistent"), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing trained, no record opened


def test_a_checkpoint_with_another_class_count_is_refused(tmp_path):
    from kdrun.errors import ConfigError
    from kdrun.models.files import load_classifier

    train(compose_config("method=vanilla"), tmp_path)  # synthetic: 4 classes
    with pytest.raises(ConfigError, match="does not fit resnet8 \\(different class count"):
        load_classifier(tmp_path / "checkpoints" / "student.pt", 10, [0.5] * 3, [0.25] * 3)


def test_compile_is_off_on_cpu_by_default_and_compiles_every_network_in_place():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not resolve_compile(None, cpu) and resolve_compile(True, cpu)
    assert resolve_compile(None, cuda)
    method = make_method("dml")
    keys = list(method.state_dict())
    run = make_run().replace(compile=True)
    prepare(method, run)
    compiled = [net.net._compiled_call_impl for net in method.networks]
    assert all(c is not None for c in compiled)
    prepare(method, run)  # a later stage: nothing is compiled twice
    assert [net.net._compiled_call_impl for net in method.networks] == compiled
    assert list(method.state_dict()) == keys  # checkpoints stay loadable uncompiled
