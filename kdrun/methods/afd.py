"""Online distillation of feature maps through discriminators, on top of mutual learning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from kdrun.checks import check_optim, require
from kdrun.methods.base import Networks, OptimizerGroup
from kdrun.methods.dml import DML, DMLSettings

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


@dataclass
class AFDSettings(DMLSettings):
    pairing: str = MISSING  # cyclic | mutual
    feature_loss: str = MISSING  # adversarial | l1
    feature_weight: float = MISSING
    disc_optim: dict[str, Any] = MISSING  # the discriminators' partial optimiser config
    disc_every: int = MISSING  # discriminator update every N steps

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.pairing in PAIRINGS, "method.pairing", self.pairing,
                f"choose from {', '.join(PAIRINGS)}")
        require(self.feature_loss in FEATURE_LOSSES, "method.feature_loss", self.feature_loss,
                f"choose from {', '.join(FEATURE_LOSSES)}")
        require(self.feature_weight >= 0, "method.feature_weight", self.feature_weight,
                "use >= 0")
        require(self.disc_every >= 1, "method.disc_every", self.disc_every,
                "update the discriminators every N >= 1 steps")
        check_optim(self.disc_optim, "method.disc_optim")


class AFD(DML):
    """Feature-map-level Online Adversarial Knowledge Distillation (Chung, Park, Kim, Kwak;
    arXiv 2002.01775): mutual learning on the logits, plus, for every pair (k learns from j), a
    discriminator that tells network j's last feature map (real) from network k's (fake, through
    a transfer layer that matches channels); network k learns to fool it. Least-squares GAN
    losses. `pairing=cyclic` (k learns from k-1, 1->2->...->K->1) needs K discriminators;
    `mutual` K(K-1). `feature_loss=l1` aligns the maps directly instead (the paper's
    comparison)."""

    Settings = AFDSettings

    def __init__(self, settings: AFDSettings, networks: Networks):
        super().__init__(settings, networks)
        self.pairs = [(k, j) for k in range(len(self.networks)) for j in self.sources(k)]
        channels = [net.feature_info[-1]["num_chs"] for net in self.networks]
        self.transfers = nn.ModuleList(transfer_layer(channels[k], channels[j])
                                       for k, j in self.pairs)
        self.adversarial = settings.feature_loss == "adversarial"
        self.discriminators = nn.ModuleList(
            discriminator(channels[j]) for k, j in self.pairs if self.adversarial)
        self.steps = 0  # training steps taken, for disc_every (kept in checkpoints)

    def sources(self, k: int) -> list[int]:
        if self.settings.pairing == "cyclic":
            return [(k - 1) % len(self.networks)]
        return super().sources(k)

    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        if not self.adversarial:
            return {}
        return {"disc": OptimizerGroup(list(self.discriminators.parameters()),
                                       self.settings.disc_optim)}

    def updates_discriminators(self) -> bool:
        """Whether the next step updates the discriminators (every `disc_every`-th step)."""
        return self.adversarial and self.steps % self.settings.disc_every == 0

    def step_variant(self) -> str | None:
        return "with the discriminators' update" if self.updates_discriminators() else None

    def step_taken(self) -> None:
        self.steps += 1

    def get_extra_state(self) -> dict[str, int]:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.steps = state["steps"]

    def training_step(self, images, labels):
        outputs = [net.forward_intermediates(images, indices=1) for net in self.networks]
        logits = [out[0] for out in outputs]
        features = [out[1][-1] for out in outputs]
        ce, kl = self.logit_losses(logits, labels)
        update_disc = self.updates_discriminators()
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
        s = self.settings
        loss = ce + s.kl_weight * kl + s.feature_weight * feature_loss
        out = {"loss": loss, "logits": logits[s.student_peer], "ce": ce, "kl": kl,
               "feature": feature_loss}
        if update_disc:
            out["loss/disc"] = disc_loss
        return out
