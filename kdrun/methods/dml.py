"""Deep Mutual Learning, the online baseline: peers taught by each other, no fixed teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from kdrun.checks import require
from kdrun.methods.base import Method, MethodSettings, Networks
from kdrun.methods.losses import distillation_kl
from kdrun.models import check_arch


@dataclass
class DMLSettings(MethodSettings):
    peers: list[str] = MISSING  # architectures trained beside the student
    T: float = MISSING  # KL temperature
    kl_weight: float = MISSING
    student_peer: int = MISSING  # which network test/acc reports (0: student=)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.peers) >= 1, "method.peers", self.peers,
                "list at least one architecture to train beside the student")
        for arch in self.peers:
            check_arch(arch, key="method.peers")
        require(0 <= self.student_peer <= len(self.peers), "method.student_peer",
                self.student_peer, f"it indexes the networks: student= is 0, "
                f"method.peers are 1..{len(self.peers)}")
        require(self.T > 0, "method.T", self.T, "the temperature must be > 0")
        require(self.kl_weight >= 0, "method.kl_weight", self.kl_weight, "use >= 0")


class DML(Method):
    """Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu; arXiv 1706.00384): K peers (the
    student plus `peers`) trained together from scratch; each minimises its cross-entropy plus
    the mean KL from the other peers' predictions to its own. All peers step together on one
    batch (the paper updates them one after another)."""

    Settings = DMLSettings

    def __init__(self, settings: DMLSettings, networks: Networks):
        super().__init__(settings, networks)
        self.networks = nn.ModuleList([networks.student,
                                       *(networks.make_model(arch) for arch in settings.peers)])

    def sources(self, k: int) -> list[int]:
        """The networks that network k learns from: all the others."""
        return [j for j in range(len(self.networks)) if j != k]

    def eval_model(self) -> nn.Module:
        return self.networks[self.settings.student_peer]

    def peer_models(self) -> dict[str, nn.Module]:
        return {f"peer{k}": net for k, net in enumerate(self.networks)
                if k != self.settings.student_peer}

    def logit_losses(self, logits: list[torch.Tensor],
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed over the networks: their cross-entropies, and each one's mean KL to its
        sources' (fixed) predictions."""
        ce = sum(F.cross_entropy(z.float(), labels) for z in logits)
        kl = sum(
            sum(distillation_kl(logits[k], logits[j].detach(), self.settings.T) for j in sources)
            / len(sources)
            for k, sources in ((k, self.sources(k)) for k in range(len(logits))))
        return ce, kl

    def training_step(self, images, labels):
        logits = [net(images) for net in self.networks]
        ce, kl = self.logit_losses(logits, labels)
        return {"loss": ce + self.settings.kl_weight * kl,
                "logits": logits[self.settings.student_peer],
                "ce": ce, "kl": kl}
