"""Noisy Student: pseudo-labels from the un-noised teacher, balancing, noise on the student
only, stochastic depth, and rounds through the real CLI."""

from __future__ import annotations

import contextlib
import subprocess

import pytest
import torch

from kdrun.data import BatchMix, ImageData, TensorSplit, make_loader
from kdrun.data.device_loader import batch_indices
from kdrun.data.randaugment import RandAugment
from kdrun.methods.pseudo_labels import predict, select
from kdrun.models import build_model

from conftest import TINY, compose_config, make_run, read_results
from test_data import write_image_folder
from test_methods import make_method

CPU = torch.device("cpu")


def eval_loader(split, batch_size):
    return make_loader(split, batch_size, make_run("dataset.num_workers=0"), train=False)


def test_pseudo_labels_come_from_the_teacher_in_eval_mode():
    torch.manual_seed(0)
    teacher = build_model("resnet8", 4, [0.5] * 3, [0.25] * 3, drop_rate=0.5).train()
    split = TensorSplit(torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8),
                        torch.zeros(12, dtype=torch.long))
    first = predict(teacher, eval_loader(split, 5), contextlib.nullcontext)
    second = predict(teacher, eval_loader(split, 5), contextlib.nullcontext)
    assert not teacher.training
    assert first.shape == (12, 4) and torch.equal(first, second)
    assert torch.allclose(first.float().sum(dim=1), torch.ones(12), atol=1e-2)


def test_balancing_keeps_the_most_confident_and_repeats_rare_classes():
    predicted = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2])
    confidence = torch.tensor([0.9, 0.5, 0.8, 0.2, 0.7, 0.6, 0.95, 0.4])
    index = select(predicted, confidence, 3, threshold=0.3, balance=True, per_class=2)
    assert torch.bincount(predicted[index], minlength=3).tolist() == [2, 2, 2]
    assert set(index[predicted[index] == 0].tolist()) == {0, 2}  # the two most confident
    assert index[predicted[index] == 1].tolist() == [4, 4]  # the only one, repeated
    assert 3 not in index.tolist()  # below the threshold
    kept = select(predicted, confidence, 3, threshold=0.3, balance=False, per_class=None)
    assert sorted(kept.tolist()) == [0, 1, 2, 4, 5, 6, 7]  # only 0.2 is below the threshold
    default = select(predicted, confidence, 3, threshold=0.3, balance=True, per_class=None)
    assert torch.bincount(predicted[default], minlength=3).tolist() == [2, 2, 2]  # 7 kept / 3


def tiny_split(n: int = 32) -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    return TensorSplit(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
                       torch.arange(n) % 4)


def test_the_first_teacher_is_noised_unless_told_otherwise():
    """Issue 19, item 5: the paper's first teacher is its noised baseline."""
    train = tiny_split()
    data = ImageData(train, train, ["a", "b", "c", "d"])
    run = make_run("dataset.num_workers=0")
    noised = make_method("noisy_student", threshold=0.0)
    next(noised.stages(data, 1, run))
    assert noised.noisy and noised.student.net.drop.p == 0.2
    assert noised.student.net.stages[-1][-1].drop_path.drop_prob == pytest.approx(0.2)
    plain = make_method("noisy_student", threshold=0.0, noise_first_teacher=False)
    next(plain.stages(data, 1, run))
    assert not plain.noisy and plain.student.net.drop.p == 0.0


def test_labels_are_smoothed_and_soft_pseudo_labels_are_not():
    method = make_method("noisy_student", threshold=0.0, noise_first_teacher=False)
    train = tiny_split()
    stages = method.stages(ImageData(train, train, ["a", "b", "c", "d"]), 1,
                           make_run("dataset.num_workers=0"))
    round0 = next(stages)
    method.eval()
    torch.manual_seed(0)
    images, labels = round0.data.train.images[:8].float() / 255, round0.data.train.labels[:8]
    out = method.training_step(images, labels)
    assert out["loss"].item() == pytest.approx(torch.nn.functional.cross_entropy(
        out["logits"].float(), labels, label_smoothing=0.1).item(), rel=1e-5)
    round1 = next(stages)
    method.eval()
    pseudo = round1.data.train.labels[round1.data.train.labels >= 4][:4]
    torch.manual_seed(0)
    out = method.training_step(round1.data.train.images[:4].float() / 255, pseudo)
    targets = method.pseudo_targets[pseudo - 4]
    expected = -(targets * out["logits"].float().log_softmax(dim=1)).sum(dim=1).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_batch_is_a_labelled_batch_plus_unlabel_ratio_times_as_many_pseudo_labelled():
    """Issue 30, item 4: as the official code, trainer.batch_size labelled images and
    unlabel_ratio x that many pseudo-labelled ones in every batch, and an epoch is a pass over
    the labelled images (40 labelled, batches of 8: 5 batches, whatever the pseudo count)."""
    labelled, pseudo = 40, 160
    split = TensorSplit(torch.zeros(labelled + pseudo, 3, 4, 4, dtype=torch.uint8),
                        torch.cat([torch.zeros(labelled), torch.ones(pseudo)]).long())
    run = make_run()
    for ratio, per_batch in ((1.0, 8), (3.0, 24)):
        loader = make_loader(split, 8, run, train=True, mix=BatchMix(labelled, ratio))
        batches = [labels for _, labels in loader]
        assert len(batches) == len(loader) == 5
        assert all(len(b) == 8 + per_batch and int(b.sum()) == per_batch for b in batches)
    plain = [labels for _, labels in make_loader(split, 8, run, train=True)]
    assert len(plain) == 25  # without a mix: one pass over both sets, by their sizes
    assert sum(int(b.sum()) for b in plain) / (8 * len(plain)) == pytest.approx(0.8)


def test_a_mixed_pass_reaches_every_labelled_image_once_and_repeats_no_pseudo_label():
    g = torch.Generator().manual_seed(0)
    batches = list(batch_indices(40, 4, True, g, BatchMix(first=16, ratio=1.0)))
    assert len(batches) == 4
    labelled = torch.cat([b[b < 16] for b in batches])
    assert torch.bincount(labelled).tolist() == [1] * 16
    pseudo = torch.cat([b[b >= 16] for b in batches])
    assert len(set(pseudo.tolist())) == 16  # 16 draws from 24 images, none repeated


def test_the_loss_is_the_labelled_mean_plus_unlabel_ratio_times_the_pseudo_labelled_mean():
    """Issue 30, item 4: the official data loss, lab_loss + unlabel_ratio x unl_loss."""
    method = make_method("noisy_student", threshold=0.0, noise_first_teacher=False,
                         unlabel_ratio=3.0)
    train = tiny_split()
    stages = method.stages(ImageData(train, train, ["a", "b", "c", "d"]), 1,
                           make_run("dataset.num_workers=0"))
    next(stages)
    round1 = next(stages)
    method.eval()
    split = round1.data.train
    labels = torch.cat([split.labels[:2], split.labels[split.labels >= 4][:6]])
    images = torch.cat([split.images[:2], split.images[split.labels >= 4][:6]]).float() / 255
    targets = method.pseudo_targets[labels[2:] - 4]

    def parts(logits):  # the labelled mean and the pseudo-labelled mean
        lab = torch.nn.functional.cross_entropy(logits[:2], labels[:2], label_smoothing=0.1)
        return lab, -(targets * logits[2:].log_softmax(dim=1)).sum(dim=1).mean()

    out = method.training_step(images, labels)
    lab, unl = parts(out["logits"].float())
    assert out["loss"].item() == pytest.approx((lab + 3.0 * unl).item(), rel=1e-5)
    method.settings.unlabel_ratio = None  # mixed by the sets' sizes: the batch mean
    out = method.training_step(images, labels)
    lab, unl = parts(out["logits"].float())
    assert out["loss"].item() == pytest.approx(((2 * lab + 6 * unl) / 8).item(), rel=1e-5)


def test_noise_is_on_for_the_student_and_off_for_the_teacher():
    method = make_method("noisy_student", threshold=0.0, noise_first_teacher=False)
    train = tiny_split()
    data = ImageData(train, train, ["a", "b", "c", "d"])
    stages = method.stages(data, 1, make_run("dataset.num_workers=0"))
    round0 = next(stages)
    assert len(round0.data.train) == 8 and not method.noisy  # 25 % labelled
    assert not round0.augment  # in-memory data: the method crops, flips and noises it
    assert method.student.net.drop.p == 0.0 and round0.mix is None
    round1 = next(stages)
    kept = round1.metrics["round1/pseudo_labelled"]
    assert method.noisy and kept > 0
    assert len(round1.data.train) == 8 + kept
    assert round1.mix == BatchMix(first=8, ratio=1.0)
    assert (round1.data.train.labels[8:] >= 4).all()  # pseudo-labels, marked
    assert len(method.pseudo_targets) == kept
    assert not method.teacher.training and method.student.net.drop.p == 0.2
    assert all(not p.requires_grad for p in method.teacher.parameters())
    method.train()
    images = train.images[:8].float() / 255
    assert method.student.training and not method.teacher.training
    with torch.no_grad():
        assert torch.equal(method.teacher(images), method.teacher(images))
        assert not torch.equal(method.student(images), method.student(images))  # dropout, SD
    torch.manual_seed(1)
    assert not torch.equal(RandAugment(2, 9)(images), images)
    out = method.training_step(images, round1.data.train.labels[:8])
    assert torch.isfinite(out["loss"]) and out["labels"].max() < 4


def test_stochastic_depth_drops_residual_branches_in_training_only():
    torch.manual_seed(0)
    model = build_model("resnet8", 4, [0.5] * 3, [0.25] * 3, drop_path_rate=0.5)
    plain = build_model("resnet8", 4, [0.5] * 3, [0.25] * 3)
    plain.load_state_dict(model.state_dict())
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for stage in model.net.stages for b in stage]
    assert rates == [0.0, 0.25, 0.5]  # linear decay to the last block
    x = torch.rand(8, 3, 16, 16)
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))
    model.train()
    for module in model.modules():  # keep BatchNorm out of it: only the branches may differ
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    torch.manual_seed(1)
    assert not torch.equal(model(x), plain(x))


@pytest.mark.slow
def test_two_rounds_run_through_the_cli_and_log_each_round(tmp_path, cli_env):
    proc = subprocess.run(["kdrun", *TINY, "method=noisy_student", "method.rounds=2",
                           "method.labelled_fraction=0.3", "method.threshold=0", "epochs=2",
                           f"hydra.run.dir={tmp_path}/run"], env=cli_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(tmp_path / "run")
    for r in range(3):
        assert 0 <= results[f"round{r}/test/acc"] <= 100
        assert (tmp_path / "run" / "checkpoints" / f"round{r}.pt").is_file()
    assert results["test/acc"] == results["round2/test/acc"]
    assert results["round1/pseudo_labelled"] > 0 and "teacher/test/acc" in results


def test_large_images_are_noised_per_image_in_the_dataloader_workers(tmp_path):
    from torchvision.datasets import ImageFolder

    from kdrun.data.augment import center_crop_transform, resized_crop_transform

    write_image_folder(tmp_path / "train", ["a", "b", "c", "d"], 4, size=24)
    train = ImageFolder(str(tmp_path / "train"), transform=resized_crop_transform(16, True))
    test = ImageFolder(str(tmp_path / "train"), transform=center_crop_transform(16))
    method = make_method("noisy_student", threshold=0.0, balance=False)
    stages = method.stages(ImageData(train, test, train.classes), 1,
                           make_run("dataset.num_workers=0", "dataset.image_size=16"))
    def has_randaugment(dataset):
        return any(isinstance(t, RandAugment) for t in dataset.transform.transforms)

    round0 = next(stages)
    assert round0.augment and len(round0.data.train) == 4  # 25 % of 16; the loader noises
    round1 = next(stages)
    assert round1.metrics["round1/pseudo_labelled"] == 12  # every unlabelled image, kept
    labelled, pseudo = round1.data.train.datasets
    for part in (labelled, pseudo):
        folder = part.dataset.dataset if hasattr(part.dataset, "dataset") else part.dataset
        assert has_randaugment(folder)
    image, label = pseudo[0]
    assert image.shape == (3, 16, 16) and label >= 4  # marked as a pseudo-label
    assert has_randaugment(round0.data.train.dataset)  # the first teacher is noised too
    assert not has_randaugment(train)  # the original is untouched
    batch = torch.stack([pseudo[i][0] for i in range(4)])
    out = method.training_step(batch, torch.tensor([pseudo[i][1] for i in range(4)]))
    assert torch.isfinite(out["loss"]) and out["labels"].max() < 4


@pytest.mark.slow
def test_imagenet_layout_with_an_unlabelled_folder_runs_through_the_cli(tmp_path, cli_env):
    write_image_folder(tmp_path / "imagenet" / "train", ["n01", "n02"], 6, size=40)
    write_image_folder(tmp_path / "imagenet" / "val", ["n01", "n02"], 2, size=40)
    write_image_folder(tmp_path / "extra", ["any", "nesting"], 3, size=40)
    overrides = [o for o in TINY if not o.startswith(("dataset=", "trainer.batch_size"))]
    proc = subprocess.run(["kdrun", *overrides, "dataset=imagenet",
                           f"dataset.root={tmp_path}/imagenet", "dataset.num_classes=2",
                           "dataset.image_size=32", "dataset.num_workers=0",
                           "trainer.batch_size=4", "method=noisy_student", "method.rounds=1",
                           "method.labelled_fraction=1", "method.unlabelled=folder",
                           f"method.unlabelled_root={tmp_path}/extra", "method.threshold=0",
                           "method.balance=false", f"hydra.run.dir={tmp_path}/run"],
                          env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(tmp_path / "run")
    assert results["round1/pseudo_labelled"] == 6
    # round 1: a pass over the 12 labelled images, 4 of them and 4 pseudo-labelled per batch
    assert results["train/steps"] == 12 // 4
    assert 0 <= results["round0/test/acc"] <= 100 and 0 <= results["round1/test/acc"] <= 100


def test_each_round_trains_with_its_own_noise_and_ratio_as_the_official_scripts_per_model():
    """Issue 30, item 5: the ImageNet preset's per-model settings, and a round's own values
    reaching its student, its RandAugment and its batches."""
    from kdrun.methods import method_settings

    preset = method_settings(compose_config("experiment=noisy_student_imagenet",
                                            tiny=False).method)
    b0, b0_student, b2 = (preset.for_round(r) for r in range(3))
    assert (b0.randaugment_ops, b0.dropout) == (0, 0.2)
    assert (b0_student.randaugment_ops, b0_student.unlabel_ratio, b0_student.dropout) == \
        (0, 1, 0.2)
    assert (b2.randaugment_ops, b2.randaugment_magnitude, b2.unlabel_ratio, b2.dropout) == \
        (2, 6, 3, 0.3)
    method = make_method("noisy_student", threshold=0.0, rounds=1, per_round=[
        {"randaugment_ops": 0}, {"dropout": 0.4, "unlabel_ratio": 3.0}])
    train = tiny_split()
    stages = method.stages(ImageData(train, train, ["a", "b", "c", "d"]), 1,
                           make_run("dataset.num_workers=0"))
    next(stages)
    assert method.rand_augment is None and method.student.net.drop.p == 0.2
    round1 = next(stages)
    assert method.student.net.drop.p == 0.4 and round1.mix.ratio == 3.0
    assert method.rand_augment.arguments["Cutout"] == int(0.5 * (16 // 8))  # M 5, 16 px
    with pytest.raises(Exception, match="method.per_round=1 is not allowed: give rounds \\+ 1"):
        make_method("noisy_student", rounds=1, per_round=[{}])


def test_the_weight_average_follows_tensorflows_moving_average_with_num_updates():
    """Issue 30, item 5: decay min(d, (1 + n) / (10 + n)) after update n, on fixed tensors;
    BatchNorm's running statistics averaged too, its counter copied."""
    from kdrun.methods.weight_average import WeightAverage

    source = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.BatchNorm1d(1))
    average = WeightAverage(torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False),
                                                torch.nn.BatchNorm1d(1)), source, decay=0.5)
    with torch.no_grad():
        source[0].weight.fill_(0.0)
    expected = average.network[0].weight.detach().clone()
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
        with torch.no_grad():
            source[0].weight.fill_(value)
            source[1].running_mean.fill_(value)
        source[1].num_batches_tracked.fill_(7 * n)
        average.update(source)
        decay = min(0.5, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * value
        torch.testing.assert_close(average.network[0].weight, expected)
    assert average.network[1].num_batches_tracked.item() == 28
    assert not any(p.requires_grad for p in average.network.parameters())


def test_the_average_evaluates_and_pseudo_labels_the_next_round():
    method = make_method("noisy_student", threshold=0.0, rounds=1, weight_average=0.9999)
    train = tiny_split()
    run = make_run("dataset.num_workers=0")
    stages = method.stages(ImageData(train, train, ["a", "b", "c", "d"]), 1, run)
    round0 = next(stages)
    assert method.eval_model() is method.average.network
    from test_methods import make_optimizers

    optimizers = make_optimizers(method.train(), lr=0.5)
    from kdrun.training.step import train_step

    before = method.average.network.net.fc.weight.clone()
    train_step(method, optimizers, round0.data.train.images[:8].float() / 255,
               round0.data.train.labels[:8], run)
    student = method.student.net.fc.weight
    # one update: the average moves 9/11 of the way to the stepped weights (decay 2/11)
    torch.testing.assert_close(method.average.network.net.fc.weight,
                               2 / 11 * before + 9 / 11 * student)
    average = method.average.network
    next(stages)
    assert method.teacher is average  # pseudo-labelled by the average
    assert "average.network.net.fc.weight" in method.state_dict()  # checkpointed with the run
    plain = make_method("noisy_student", threshold=0.0, weight_average=None)
    next(plain.stages(ImageData(train, train, ["a", "b", "c", "d"]), 1, run))
    assert plain.eval_model() is plain.student and plain.average is None
