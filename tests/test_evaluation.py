"""Evaluation metrics against cases whose answer is known by construction, and the attacks
against their definition and a maintained library."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from kdrun.evaluation.attacks import robust_accuracy
from kdrun.evaluation.calibration import calibration_bins
from kdrun.evaluation.corruption_ops import SEVERITY, corrupt
from kdrun.evaluation.robustness import fgsm, pgd
from kdrun.models import build_model


def test_ece_is_zero_for_a_perfect_classifier_and_the_gap_for_an_overconfident_one():
    right = torch.ones(100, dtype=torch.bool)
    assert calibration_bins(torch.ones(100), right)["ece"] == pytest.approx(0)
    half = torch.arange(100) < 50
    assert calibration_bins(torch.ones(100), half)["ece"] == pytest.approx(50)
    bins = calibration_bins(torch.full((100,), 0.9), torch.arange(100) < 90)
    assert bins["ece"] == pytest.approx(0, abs=1e-3)  # 90 % confident, 90 % right (float32)
    assert sum(bins["count"]) == 100 and bins["accuracy"][13] == pytest.approx(0.9)


def test_ece_matches_torchmetrics():
    metrics = pytest.importorskip("torchmetrics.classification",
                                  reason="the cross-check library (pip install torchmetrics)")
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(2000, 10, generator=g), dim=1)
    labels = torch.randint(0, 10, (2000,), generator=g)
    top = probs.max(dim=1)
    ours = calibration_bins(top.values, top.indices == labels, 15)["ece"]
    theirs = metrics.MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(probs, labels)
    assert ours == pytest.approx(100 * theirs.item(), abs=1e-4)


def trained_tiny_model() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A resnet8 fitted to a separable batch, so attacks have accuracy to take away."""
    torch.manual_seed(0)
    model = build_model("resnet8", 4, [0.5] * 3, [0.25] * 3)
    labels = torch.arange(64) % 4
    images = (torch.rand(64, 3, 16, 16) * 0.3 + 0.2 * labels.view(-1, 1, 1, 1)).clamp(0, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(40):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval(), images, labels


@pytest.mark.parametrize(("norm", "eps"), [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_stays_in_the_eps_ball_and_the_image_range(norm, eps):
    model, images, labels = trained_tiny_model()
    adversarial = pgd(model, images, labels, eps, eps / 4, steps=5, norm=norm)
    delta = (adversarial - images).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert size.max().item() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_attacks_lower_the_accuracy_of_a_trained_model():
    model, images, labels = trained_tiny_model()
    clean = (model(images).argmax(1) == labels).float().mean().item()
    attacked = pgd(model, images, labels, 16 / 255, 4 / 255, steps=10)
    robust = (model(attacked).argmax(1) == labels).float().mean().item()
    one_step = (model(fgsm(model, images, labels, 16 / 255)).argmax(1) == labels).float().mean()
    assert clean == 1.0 and robust < clean
    assert robust <= one_step.item()  # more steps are no weaker than one


def test_pgd_matches_torchattacks():
    torchattacks = pytest.importorskip(
        "torchattacks", reason="the cross-check library (pip install --no-deps torchattacks)")
    model, images, labels = trained_tiny_model()
    ours = pgd(model, images, labels, 8 / 255, 2 / 255, steps=10, random_start=False)
    attack = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)
    theirs = attack(images, labels)
    assert (ours - theirs).abs().max().item() < 1e-5


def test_attack_list_names_follow_the_results_keys():
    from kdrun.evaluation import build_evaluations

    cfg = OmegaConf.create({
        "calibration_bins": 15, "subset": None, "batch_size": 8, "plots": False,
        "teacher": False, "attacks": {
            "pgd_linf": {"eps": [2, 8], "step_size": 2, "steps": 3, "random_start": True},
            "pgd_l2": {"eps": [0.5], "step_size": 0.1, "steps": 3, "random_start": True},
            "fgsm": {"eps": [8]}}})
    attacks, = build_evaluations(cfg)
    listed = dict(attacks.attack_list())
    assert list(listed) == ["pgd/linf/eps2/acc", "pgd/linf/eps8/acc", "pgd/l2/eps0.5/acc",
                            "fgsm/eps8/acc"]
    assert listed["pgd/linf/eps8/acc"]["eps"] == pytest.approx(8 / 255)
    assert all(attacks.owns(key) for key in listed)
    model, images, labels = trained_tiny_model()
    results = robust_accuracy(model, [(images, labels)], attacks.attack_list())
    assert all(0 <= v <= 100 for v in results.values())
    assert results["pgd/linf/eps8/acc"] <= results["pgd/linf/eps2/acc"]


def test_shift_labels_map_by_class_name():
    from kdrun.errors import ConfigError
    from kdrun.evaluation.shift import class_mapping

    assert class_mapping(["cat", "dog"], ["dog", "bird", "cat"], "s").tolist() == [2, 0]
    with pytest.raises(ConfigError, match="are not training classes"):
        class_mapping(["cat", "fish"], ["cat", "dog"], "s")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(n: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32,
                                        mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(n, 3, 32, 32, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("name", list(SEVERITY))
def test_corruptions_are_seeded_in_range_and_grow_with_severity(name):
    x = smooth_images()
    change = [(corrupt(x, name, s, seeded(1)) - x).abs().mean().item() for s in (1, 3, 5)]
    assert change[0] < change[1] < change[2], change
    a, b = corrupt(x, name, 3, seeded(7)), corrupt(x, name, 3, seeded(7))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1


def test_corruption_parameters_behave_as_defined():
    x = torch.full((64, 3, 32, 32), 0.5)
    noise = corrupt(x, "gaussian_noise", 5, seeded(0)) - x  # std 0.10 at severity 5
    assert noise.std().item() == pytest.approx(0.10, rel=0.03)
    assert corrupt(x, "contrast", 2, seeded(0)).allclose(x)  # a flat image has no contrast to lose
    bright = corrupt(x, "brightness", 5, seeded(0))  # V + 0.3 with hue and saturation kept
    assert bright.max().item() == pytest.approx(0.8, abs=1e-6)
    hit = (corrupt(x, "impulse_noise", 5, seeded(0)) != x).float().mean().item()
    assert hit == pytest.approx(0.07, abs=0.01)


def test_released_corruption_files_are_read_severity_by_severity(tmp_path):
    """CIFAR-10-C's on-disk form: <name>.npy (5 x N images, NHWC uint8, severity 1 first)
    and labels.npy. Here each severity holds the test images themselves (severity 5 with its
    labels shifted by one), so severities 1-4 score the clean accuracy and 5 its complement."""
    import numpy as np

    from kdrun.data import load_dataset
    from kdrun.jobs import train

    from conftest import compose_config

    cfg = compose_config("method=vanilla", "eval.subset=null", "trainer.precision=fp32",
                         f"eval.corruptions={{names:[],released_root:'{tmp_path}/CIFAR-10-C',"
                         "released:[fog,snow]}")
    test = load_dataset(cfg.dataset, cfg.cache_dir).test
    images = test.images.permute(0, 2, 3, 1).numpy()
    labels = test.labels.numpy()
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.concatenate([labels] * 4 + [(labels + 1) % 4]))
    for name in ("fog", "snow"):
        np.save(folder / f"{name}.npy", np.concatenate([images] * 5))
    results = train(cfg, tmp_path / "run")
    for name in ("fog", "snow"):
        for severity in (1, 4):
            key = f"corrupt/released/{name}/s{severity}/acc"
            assert results[key] == pytest.approx(results["test/acc"]), key
    assert "corrupt/mean_acc" not in results  # nothing generated
    assert results["corrupt/released/mean_acc"] == pytest.approx(
        sum(results[f"corrupt/released/fog/s{s}/acc"] for s in range(1, 6)) / 5)


def test_a_released_corruption_file_that_is_missing_or_misshapen_stops_the_run_at_once(
        tmp_path):
    import numpy as np

    from kdrun.errors import DataNotFoundError
    from kdrun.jobs import train

    from conftest import compose_config

    folder = tmp_path / "C"
    folder.mkdir()
    np.save(folder / "labels.npy", np.arange(10) % 4)
    cfg = compose_config("method=vanilla",
                         f"eval.corruptions={{released_root:'{folder}',released:[fog]}}")
    with pytest.raises(DataNotFoundError, match=f"fog.npy not found in {folder}: unpack "
                                                "CIFAR-10-C.tar"):
        train(cfg, tmp_path / "a")
    np.save(folder / "fog.npy", np.zeros((10, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataNotFoundError, match=r"holds images of shape \(10, 8, 8, 3\), not "
                                                r"\(10, 16, 16, 3\)"):
        train(cfg, tmp_path / "b")
    assert not (tmp_path / "b" / "metrics.jsonl").exists()
    np.save(folder / "labels.npy", np.arange(10))  # CIFAR-100-C's labels for a 4-class set
    with pytest.raises(DataNotFoundError, match="holds 10 classes and synthetic has 4: give the "
                                                "folder of the released files for this data"):
        train(cfg, tmp_path / "c")
