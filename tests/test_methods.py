"""Methods behind the protocol: stored loss values, one step lowers the loss, the teacher is
frozen and in the mode its method asks for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kdrun.engine.optimizers import Optimizers
from kdrun.methods import METHODS, build_method
from kdrun.methods.losses import distillation_kl
from kdrun.models import build_model

MEAN, STD = [0.5] * 3, [0.25] * 3
STUDENT_LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
TEACHER_LOGITS = torch.tensor([[3.0, 1.0, -2.0], [-1.0, 0.0, 2.0]])


def test_distillation_kl_matches_its_definition_and_a_stored_value():
    T = 4.0
    p_t = F.softmax(TEACHER_LOGITS / T, dim=1)
    log_p_s = F.log_softmax(STUDENT_LOGITS / T, dim=1)
    by_hand = (p_t * (p_t.log() - log_p_s)).sum(dim=1).mean() * T * T
    value = distillation_kl(STUDENT_LOGITS, TEACHER_LOGITS, T)
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert value.item() == pytest.approx(0.48311094, rel=1e-5)  # numpy, by hand
    assert distillation_kl(TEACHER_LOGITS, TEACHER_LOGITS, T).item() == pytest.approx(0, abs=1e-7)


def make_model(arch: str, **noise):
    return build_model(arch, 4, MEAN, STD, **noise)


def make_method(name: str, **settings):
    torch.manual_seed(0)
    student = make_model("resnet8")
    teacher = make_model("resnet8")
    cfg = OmegaConf.create({"name": name, **settings})
    return build_method(cfg, student, teacher if METHODS.get(name).needs_teacher else None,
                        make_model=make_model)


def make_optimizers(method, lr: float = 0.05) -> Optimizers:
    """The trainer's optimisers (every parameter group of the method), constant lr."""
    optim = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": lr})
    sched = OmegaConf.create({"name": "constant", "milestones": [], "gamma": 1.0,
                              "warmup_epochs": 0, "min_lr": 0.0})
    return Optimizers(method, optim, sched, steps_per_epoch=10, epochs=1)


KD_SETTINGS = {"alpha": 0.9, "T": 4.0}
DML_SETTINGS = {"peers": ["resnet8"], "T": 1.0, "kl_weight": 1.0, "student_peer": 0}
DI_SETTINGS = {**KD_SETTINGS, "pool_size": 8, "batch_size": 4, "iterations": 2, "lr": 0.05,
               "bn_weight": 10.0, "first_bn_weight": 1.0, "tv_weight": 2.5e-5, "l2_weight": 0.0,
               "jitter": 2, "flip": False, "multi_resolution": False}
NS_SETTINGS = {"rounds": 2, "archs": [], "labelled_fraction": 0.25, "unlabelled": None,
               "unlabelled_root": None, "split_seed": 0, "soft": True, "threshold": 0.0,
               "balance": True, "per_class": None, "randaugment_ops": 2,
               "randaugment_magnitude": 9, "dropout": 0.2, "survival": 0.8, "crop_padding": 2,
               "hflip": True}
AFD_SETTINGS = {**DML_SETTINGS, "pairing": "cyclic", "feature_loss": "adversarial",
                "feature_weight": 1.0, "disc_every": 1,
                "disc_optim": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-4}}
SETTINGS = {
    "vanilla": {},
    "kd": KD_SETTINGS,
    "gaussian_aug": {"sigma": 0.1, "noise_space": "pixel"},
    "soft_randomization": {**KD_SETTINGS, "sigma": 0.1, "noise_space": "pixel"},
    "fickle_teacher": {**KD_SETTINGS, "dropout": 0.4, "placement": "classifier"},
    "messy_collaboration": {**KD_SETTINGS, "label_noise": 0.2},
    "dml": DML_SETTINGS,
    "ddgsd": {"kl_weight": 1.0, "mmd_weight": 5e-4, "crop_padding": 2, "hflip": True,
              "brightness": 0.4, "contrast": 0.4, "saturation": 0.4},
    "afd": AFD_SETTINGS,
    "deepinversion": DI_SETTINGS,
    "adaptive_deepinversion": {**DI_SETTINGS, "competition_weight": 1.0, "competition_T": 3.0,
                               "rounds": 2},
    "deepdream": {k: v for k, v in DI_SETTINGS.items() if "bn_weight" not in k},
    "noisy_student": NS_SETTINGS,
}


def test_every_registered_method_has_test_settings():
    assert sorted(SETTINGS) == METHODS.names()


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_one_step_lowers_the_loss_on_a_fixed_batch(name):
    method = make_method(name, **SETTINGS[name]).train()
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(16, 3, 16, 16, generator=g), torch.arange(16) % 4
    optimizers = make_optimizers(method)
    torch.manual_seed(2)  # methods that draw noise or distortions draw the same before and after
    before = method.training_step(images, labels)
    assert torch.isfinite(before["loss"]) and before["logits"].shape == (16, 4)
    for _ in range(3):
        optimizers.step(method.training_step(images, labels))
    torch.manual_seed(2)
    assert method.training_step(images, labels)["loss"] < before["loss"]


def test_kd_loss_is_the_weighted_sum_of_its_terms():
    method = make_method("kd", alpha=0.7, T=2.0).train()
    out = method.training_step(torch.rand(8, 3, 16, 16), torch.arange(8) % 4)
    assert out["loss"].item() == pytest.approx(0.3 * out["ce"].item() + 0.7 * out["kd"].item(),
                                               rel=1e-5)


def test_the_teacher_is_frozen_and_stays_in_eval_mode():
    method = make_method("kd", alpha=0.9, T=4.0)
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    method.train()
    assert method.student.training and not method.teacher.training
    optimizer.zero_grad()
    method.training_step(torch.rand(8, 3, 16, 16), torch.arange(8) % 4)["loss"].backward()
    optimizer.step()
    after = method.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert all(p.grad is None for p in method.teacher.parameters())
