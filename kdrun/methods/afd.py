"""Online distillation of feature maps through discriminators, on top of mutual learning."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.config import check_optim
from kdrun.errors import require
from kdrun.methods.base import METHODS, OptimizerGroup
from kdrun.methods.dml import DML

PAIRINGS = ("cyclic", "mutual")
FEATURE_LOSSES = ("adversarial", "l1")


def transfer_layer(in_channels: int, out_channels: int) -> nn.Module:
    """Maps one network's feature map onto a peer's channel count (identity when they match)."""
    if in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def discriminator(channels: int) -> nn.Module:
    """Scores a feature map as the peer's (real, 1) or the own network's (fake, 0)."""
    hidden = max(channels // 2, 16)

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]

    return nn.Sequential(*block(channels, hidden, 2), *block(hidden, hidden, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, 1))


def match_size(features: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if features.shape[-2:] == like.shape[-2:]:
        return features
    return F.adaptive_avg_pool2d(features, like.shape[-2:])


@METHODS.register("afd")
class AFD(DML):
    """Feature-map-level Online Adversarial Knowledge Distillation (Chung, Park, Kim, Kwak;
    arXiv 2002.01775): mutual learning on the logits, plus, for every pair (k learns from j), a
    discriminator that tells network j's last feature map (real) from network k's (fake, through
    a transfer layer that matches channels); network k learns to fool it. Least-squares GAN
    losses. `pairing=cyclic` (k learns from k-1, 1->2->...->K->1) needs K discriminators;
    `mutual` K(K-1). `feature_loss=l1` aligns the maps directly instead (the paper's
    comparison)."""

    def __init__(self, student, make_model, peers: list[str], T: float, kl_weight: float,
                 student_peer: int, pairing: str, feature_loss: str, feature_weight: float,
                 disc_optim: Any, disc_every: int):
        super().__init__(student, make_model, peers, T, kl_weight, student_peer)
        self.pairing = pairing
        self.pairs = [(k, j) for k in range(len(self.networks)) for j in self.sources(k)]
        channels = [net.feature_info[-1]["num_chs"] for net in self.networks]
        self.transfers = nn.ModuleList(transfer_layer(channels[k], channels[j])
                                       for k, j in self.pairs)
        self.adversarial = feature_loss == "adversarial"
        self.discriminators = nn.ModuleList(
            discriminator(channels[j]) for k, j in self.pairs if self.adversarial)
        self.feature_weight = feature_weight
        self.disc_optim = disc_optim
        self.disc_every = disc_every
        self.steps = 0  # training steps taken, for disc_every (kept in checkpoints)

    @classmethod
    def check_settings(cls, settings) -> None:
        super().check_settings(settings)
        require(settings.pairing in PAIRINGS, "method.pairing", settings.pairing,
                f"choose from {', '.join(PAIRINGS)}")
        require(settings.feature_loss in FEATURE_LOSSES, "method.feature_loss",
                settings.feature_loss, f"choose from {', '.join(FEATURE_LOSSES)}")
        require(settings.feature_weight >= 0, "method.feature_weight", settings.feature_weight,
                "use >= 0")
        require(settings.disc_every >= 1, "method.disc_every", settings.disc_every,
                "update the discriminators every N >= 1 steps")
        check_optim(settings.disc_optim, "method.disc_optim")

    def sources(self, k: int) -> list[int]:
        if self.pairing == "cyclic":
            return [(k - 1) % len(self.networks)]
        return super().sources(k)

    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        if not self.adversarial:
            return {}
        return {"disc": OptimizerGroup(list(self.discriminators.parameters()), self.disc_optim)}

    def get_extra_state(self) -> dict[str, int]:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.steps = state["steps"]

    def training_step(self, images, labels):
        outputs = [net.forward_intermediates(images, indices=1) for net in self.networks]
        logits = [out[0] for out in outputs]
        features = [out[1][-1] for out in outputs]
        ce, kl = self.logit_losses(logits, labels)
        update_disc = self.adversarial and self.steps % self.disc_every == 0
        if self.training:
            self.steps += 1
        feature_loss, disc_loss = 0, 0
        for i, (k, j) in enumerate(self.pairs):
            fake = match_size(self.transfers[i](features[k]), features[j])
            real = features[j].detach()
            if not self.adversarial:
                feature_loss += (fake.float() - real.float()).abs().mean()
                continue
            judge = self.discriminators[i]
            feature_loss += (judge(fake).float() - 1).pow(2).mean()
            if update_disc:
                disc_loss += ((judge(real).float() - 1).pow(2).mean()
                              + judge(fake.detach()).float().pow(2).mean())
        loss = ce + self.kl_weight * kl + self.feature_weight * feature_loss
        out = {"loss": loss, "logits": logits[self.student_peer], "ce": ce, "kl": kl,
               "feature": feature_loss}
        if update_disc:
            out["loss/disc"] = disc_loss
        return out
