"""Plain supervised training: the no-distillation baseline, and the recipe teachers train with."""

from __future__ import annotations

import torch.nn.functional as F

from kdrun.methods.base import Method


class Vanilla(Method):
    """Cross-entropy on the labels; no teacher."""

    packable = True

    def training_step(self, images, labels):
        logits = self.student(self.student_input(images))
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "logits": logits}
