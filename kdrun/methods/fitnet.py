"""FitNets: Hints for Thin Deep Nets (Romero et al., ICLR 2015, arXiv 1412.6550). A regressor
maps the student's guided layer onto the teacher's hint layer (Sec. 2.2, Eq. 3), trained with
the mean squared error between the two maps, in one of two forms:

- `two_stage`, the paper's (Sec. 2.2, Fig. 1): stage `hint` trains the student up to its
  guided layer and the regressor on the hint loss alone, for `hint_epochs`; stage `train` then
  trains the whole student by KD, (1 - alpha) CE + alpha T^2 KL. The paper anneals its KD
  weight from 4 to 1 over the second stage; kdrun's KD weighting, fixed, is ours.
- `one_stage`, the CRD benchmark's (Tian et al., ICLR 2020; HobbitLong/RepDistiller,
  distiller_zoo/FitNet.py HintLoss): ce_weight * CE + hint_weight * MSE in one training.

The MSE is averaged over the map's elements as the references do (the paper's 1/2 ||.||^2 is
a sum); the regressor is theirs (HintRegressor)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from kdrun.checks import require
from kdrun.errors import ConfigError
from kdrun.methods.base import Method, MethodSettings, Stage
from kdrun.methods.features import check_stages, feature_shapes
from kdrun.methods.losses import distillation_kl

FORMS = ("one_stage", "two_stage")


class HintRegressor(nn.Module):
    """FitNet's regressor (Romero et al., Sec. 2.2) as the CRD benchmark writes it
    (HobbitLong/RepDistiller, models/util.py ConvReg): conv-BN-ReLU from the student's hint map
    to the teacher's. Spatial sizes decide the conv: half the student's -> 3x3 stride 2, twice
    -> 4x4 transposed conv stride 2, smaller -> the paper's kernel of 1 + s - t; a student map
    smaller in any other way cannot be connected."""

    def __init__(self, student: torch.Size, teacher: torch.Size, key: str):
        super().__init__()
        (s_c, s_h, s_w), (t_c, t_h, t_w) = student, teacher
        if s_h == 2 * t_h and s_w == 2 * t_w:
            self.conv = nn.Conv2d(s_c, t_c, 3, stride=2, padding=1)
        elif 2 * s_h == t_h and 2 * s_w == t_w:
            self.conv = nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ConfigError(f"{key}: a regressor cannot connect the student's {s_h}x{s_w} "
                              f"feature map to the teacher's {t_h}x{t_w} (it maps a map to one "
                              "at most as large, or twice as large): choose stages whose "
                              "sizes fit")
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


@dataclass
class FitNetSettings(MethodSettings):
    form: str = MISSING  # one_stage | two_stage
    guided_stage: int = MISSING  # the student's stage (index into its feature_info)
    hint_stage: int = MISSING  # the teacher's stage
    pre_activation: bool = MISSING  # distil the stages' outputs before their last ReLU
    hint_weight: float = MISSING  # one_stage: the hint term's weight
    ce_weight: float = MISSING  # one_stage: the cross-entropy's weight
    hint_epochs: int = MISSING  # two_stage: epochs of the hint stage
    alpha: float = MISSING  # two_stage: the KD stage's weight of the distillation term
    T: float = MISSING  # two_stage: the KD stage's temperature

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.form in FORMS, "method.form", self.form, f"choose from {', '.join(FORMS)}")
        for key in ("hint_weight", "ce_weight"):
            require(getattr(self, key) >= 0, f"method.{key}", getattr(self, key), "use >= 0")
        require(self.hint_epochs >= 1, "method.hint_epochs", self.hint_epochs,
                "the hint stage trains for >= 1 epoch")
        require(0 <= self.alpha <= 1, "method.alpha", self.alpha, "it must lie in [0, 1]")
        require(self.T > 0, "method.T", self.T, "the temperature must be > 0")


class FitNet(Method):
    Settings = FitNetSettings
    needs_teacher = True
    reads_features = True

    def __init__(self, settings: FitNetSettings, networks):
        super().__init__(settings, networks)
        s = settings
        self.guided = check_stages([s.guided_stage], self.student, "method.guided_stage")
        self.hint = check_stages([s.hint_stage], self.teacher, "method.hint_stage")
        student, _ = feature_shapes(self.student, self.image_size, s.pre_activation)
        teacher, _ = feature_shapes(self.teacher, self.image_size, s.pre_activation)
        self.regressor = HintRegressor(student[self.guided[0]], teacher[self.hint[0]],
                                       "method.guided_stage/hint_stage")
        self.hint_only = False  # the two-stage form's first stage

    def stages(self, data, epochs, run):
        if self.settings.form == "one_stage":
            yield from super().stages(data, epochs, run)
            return
        self.hint_only = True
        yield Stage("hint", data, self.settings.hint_epochs, later_epochs=epochs)
        self.hint_only = False
        yield Stage("train", data, epochs)

    def training_step(self, images, labels):
        s = self.settings
        if not self.hint_only and s.form == "two_stage":
            logits = self.student(images)
            ce = F.cross_entropy(logits.float(), labels)
            kd = distillation_kl(logits, self.teacher_logits(images), s.T)
            return {"loss": (1 - s.alpha) * ce + s.alpha * kd, "logits": logits, "ce": ce,
                    "kd": kd}
        logits, (guided,) = self.student.forward_intermediates(images, self.guided,
                                                               s.pre_activation)
        _, (hint,) = self.teacher_features(images, self.hint, s.pre_activation)
        hint_loss = F.mse_loss(self.regressor(guided).float(), hint.float())
        if self.hint_only:  # the layers past the guided one get no gradient
            return {"loss": hint_loss, "logits": logits, "hint": hint_loss}
        ce = F.cross_entropy(logits.float(), labels)
        return {"loss": s.ce_weight * ce + s.hint_weight * hint_loss, "logits": logits,
                "ce": ce, "hint": hint_loss}
