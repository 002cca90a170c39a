"""Deep Mutual Learning, the online baseline: peers taught by each other, no fixed teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.errors import require
from kdrun.methods.base import METHODS, Method
from kdrun.methods.losses import distillation_kl


@METHODS.register("dml")
class DML(Method):
    """Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu; arXiv 1706.00384): K peers (the
    student plus `peers`) trained together from scratch; each minimises its cross-entropy plus
    the mean KL from the other peers' predictions to its own. All peers step together on one
    batch (the paper updates them one after another)."""

    def __init__(self, student, make_model, peers: list[str], T: float, kl_weight: float,
                 student_peer: int):
        super().__init__(student)
        self.networks = nn.ModuleList([student, *(make_model(arch) for arch in peers)])
        self.T = T
        self.kl_weight = kl_weight
        self.student_peer = student_peer  # which network is the run's "student"

    @classmethod
    def check_settings(cls, settings) -> None:
        from kdrun.models import check_arch

        require(len(settings.peers) >= 1, "method.peers", list(settings.peers),
                "list at least one architecture to train beside the student")
        for arch in settings.peers:
            check_arch(arch, key="method.peers")
        require(0 <= settings.student_peer <= len(settings.peers), "method.student_peer",
                settings.student_peer, f"it indexes the networks: student= is 0, "
                f"method.peers are 1..{len(settings.peers)}")
        require(settings.T > 0, "method.T", settings.T, "the temperature must be > 0")
        require(settings.kl_weight >= 0, "method.kl_weight", settings.kl_weight, "use >= 0")

    def sources(self, k: int) -> list[int]:
        """The networks that network k learns from: all the others."""
        return [j for j in range(len(self.networks)) if j != k]

    def eval_model(self) -> nn.Module:
        return self.networks[self.student_peer]

    def peer_models(self) -> dict[str, nn.Module]:
        return {f"peer{k}": net for k, net in enumerate(self.networks) if k != self.student_peer}

    def logit_losses(self, logits: list[torch.Tensor],
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed over the networks: their cross-entropies, and each one's mean KL to its
        sources' (fixed) predictions."""
        ce = sum(F.cross_entropy(z.float(), labels) for z in logits)
        kl = sum(
            sum(distillation_kl(logits[k], logits[j].detach(), self.T) for j in sources)
            / len(sources)
            for k, sources in ((k, self.sources(k)) for k in range(len(logits))))
        return ce, kl

    def training_step(self, images, labels):
        logits = [net(images) for net in self.networks]
        ce, kl = self.logit_losses(logits, labels)
        return {"loss": ce + self.kl_weight * kl, "logits": logits[self.student_peer],
                "ce": ce, "kl": kl}
