"""Methods behind the protocol: stored loss values, one step lowers the loss, the teacher is
frozen and in the mode its method asks for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import kdrun
from kdrun.data import ImageData, TensorSplit
from kdrun.methods import METHODS, Networks, build_method
from kdrun.methods.base import Schedule
from kdrun.methods.losses import distillation_kl
from kdrun.models import build_model
from kdrun.training.optimizers import Optimizers

from conftest import compose_config

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


# Test-size values for the keys that set a method's cost (its YAML's are the papers'); every
# other setting comes from conf/method/<name>.yaml, so a new method is tested as it ships.
TEST_SIZE = {"pool_size": 8, "batch_size": 4, "iterations": 2, "rounds": 2, "peers": ["resnet8"],
             "negatives": 6}


def yaml_settings(name: str) -> dict:
    """conf/method/<name>.yaml as the tiny test config composes it, at test size."""
    settings = OmegaConf.to_container(compose_config(f"method={name}").method, resolve=True)
    return {**settings, **{k: v for k, v in TEST_SIZE.items() if k in settings}}


def make_method(name: str, **settings):
    """The method built from its YAML's settings, with `settings` changed."""
    torch.manual_seed(0)
    student = make_model("resnet8")
    teacher = make_model("resnet8")  # dropped by methods without one
    cfg = OmegaConf.create({**yaml_settings(name), **settings})
    return build_method(cfg, Networks(student, teacher, make_model))


def make_optimizers(method, lr: float = 0.05) -> Optimizers:
    """The trainer's optimisers (every parameter group of the method), constant lr."""
    optim = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": lr})
    sched = OmegaConf.create({"name": "constant", "milestones": [], "gamma": 1.0,
                              "warmup_epochs": 0, "min_lr": 0.0})
    return Optimizers(method, optim, sched, Schedule(steps=10, steps_per_epoch=10))


def test_every_method_has_its_yaml_named_like_it():
    conf = [p.stem for p in (Path(kdrun.__file__).parent.parent / "conf" / "method").glob("*.yaml")]
    assert sorted(conf) == METHODS.names()
    assert all(yaml_settings(name)["name"] == name for name in METHODS.names())


@pytest.mark.parametrize("name", METHODS.names())
def test_one_step_lowers_the_loss_on_a_fixed_batch(name):
    method = make_method(name).train()
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(16, 3, 16, 16, generator=g), torch.arange(16) % 4
    batch = (images, labels)
    if method.needs_indices:  # the batch is a whole training split, indexed
        split = TensorSplit((images * 255).to(torch.uint8), labels)
        next(method.stages(ImageData(split, split, list("abcd")), 1, run=None))
        batch = (images, labels, torch.arange(16))
    optimizers = make_optimizers(method)
    torch.manual_seed(2)  # methods that draw noise or distortions draw the same before and after
    before = method.training_step(*batch)
    assert torch.isfinite(before["loss"]) and before["logits"].shape == (16, 4)
    for _ in range(3):
        optimizers.step(method.training_step(*batch))
    torch.manual_seed(2)
    assert method.training_step(*batch)["loss"] < before["loss"]


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
